"""LOSSES: what training minimizes, by --loss. The model always outputs probabilities.

  softmax            cross-entropy with --label_smoothing (the default)
  focal              focal loss (Lin et al. 2017), --focal_gamma: down-weights the
                     easy examples, which in a long tail are mostly the big classes
  arcface            additive angular margin (Deng et al. 2019) on a cosine
                     classifier, --arcface_scale s and --arcface_margin m
  subcenter_arcface  the same with --subcenters weights per class (Deng et al. 2020)

Every head ends in a float32 softmax named "probabilities", so predict, evaluate
and the SavedModel never depend on the loss. The losses read the logits back
from that softmax (logits_of), as Keras' own cross-entropy does: numerically
sound, and for ArcFace the logits are s·cos θ, from which the margin is applied.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import keras
from keras import ops
from keras.src.backend.common.symbolic_scope import in_symbolic_scope

from lmrec.config import ExperimentConfig, ModelConfig
from lmrec.errors import UserError
from lmrec.registry import Registry


def logits_of(probabilities):
    """The logits a softmax output was computed from (TensorFlow backend).

    keras.activations.softmax keeps them on its output as `_keras_logits`
    (eager and graph), and in a traced graph the output is a Softmax op whose
    input they are: the two ways keras.src.backend.tensorflow.nn._get_logits
    uses. Under a tf.distribute strategy, fit first traces the loss on
    placeholders to build its state (keras.SymbolicScope): only shapes matter
    there, so the probabilities stand in.

    Raises:
      ValueError: `probabilities` is not a softmax output, e.g. a copy or a cast of it.
    """
    logits = getattr(probabilities, "_keras_logits", None)
    if logits is not None:
        return logits
    op = getattr(probabilities, "op", None)  # EagerTensor.op raises AttributeError
    if op is not None and op.type == "Softmax":
        return op.inputs[0]
    if in_symbolic_scope():
        return probabilities
    raise ValueError(
        "This loss needs the logits behind the model's probabilities: pass it the head's "
        "softmax output directly (Keras on the TensorFlow backend), not a copy or cast of it."
    )


@keras.saving.register_keras_serializable(package="lmrec")
class FocalLoss(keras.losses.Loss):
    """Σ_j -y_j (1 - p_j)^γ log p_j, from the logits; γ = 0 is the cross-entropy.

    Computed with log_softmax instead of Keras' CategoricalFocalCrossentropy,
    which clips probabilities at 1e-7: a confidently wrong example (the rare
    class the loss is for) would get no gradient there. No α: class weighting
    is --balance=class_weights.
    """

    def __init__(self, gamma: float = 2.0, label_smoothing: float = 0.0, name="focal", **kwargs):
        super().__init__(name=name, **kwargs)
        self.gamma = float(gamma)
        self.label_smoothing = float(label_smoothing)

    def call(self, y_true, y_pred):
        log_p = ops.log_softmax(ops.cast(logits_of(y_pred), "float32"), axis=-1)
        y = _smoothed(ops.cast(y_true, "float32"), self.label_smoothing)
        return -ops.sum(y * ops.power(1.0 - ops.exp(log_p), self.gamma) * log_p, axis=-1)

    def get_config(self):
        config = super().get_config()
        config.update(gamma=self.gamma, label_smoothing=self.label_smoothing)
        return config


@keras.saving.register_keras_serializable(package="lmrec")
class ArcFaceLoss(keras.losses.Loss):
    """Softmax cross-entropy with the target logit s·cos θ replaced by s·cos(θ + m).

    The model's logits are s·cos θ (lmrec.models.cosine.CosineClassifier), so
    cos θ = logits / s. Where θ + m would pass π, cos(θ + m) would rise again;
    there, as in InsightFace, the target gets cos θ - m·sin m instead. A soft
    label (MixUp, CutMix) gets the margin in proportion, s·(cos θ + y·(φ - cos θ)),
    which is ArcFace for one-hot labels. m = 0 is the cross-entropy of the
    cosine logits. Label smoothing applies to the cross-entropy only.

    Args:
      scale: s, the CosineClassifier's scale.
      margin: m in radians, in [0, π/2).
      label_smoothing: of the cross-entropy's targets.
    """

    def __init__(
        self,
        scale: float = 30.0,
        margin: float = 0.5,
        label_smoothing: float = 0.0,
        name="arcface",
        **kwargs,
    ):
        super().__init__(name=name, **kwargs)
        self.scale = float(scale)
        self.margin = float(margin)
        self.label_smoothing = float(label_smoothing)

    def call(self, y_true, y_pred):
        logits = ops.cast(logits_of(y_pred), "float32")
        y = ops.cast(y_true, "float32")
        # Off ±1, where the derivative of sin θ = sqrt(1 - cos²θ) is infinite.
        eps = 1e-6
        cos = ops.clip(logits / self.scale, -1.0 + eps, 1.0 - eps)
        sin = ops.sqrt(1.0 - ops.square(cos))
        m = self.margin
        phi = cos * math.cos(m) - sin * math.sin(m)  # cos(θ + m)
        phi = ops.where(cos > math.cos(math.pi - m), phi, cos - m * math.sin(m))
        logits = logits + self.scale * y * (phi - cos)
        return keras.losses.categorical_crossentropy(
            y, logits, from_logits=True, label_smoothing=self.label_smoothing
        )

    def get_config(self):
        config = super().get_config()
        config.update(scale=self.scale, margin=self.margin, label_smoothing=self.label_smoothing)
        return config


def _smoothed(y, label_smoothing: float):
    if not label_smoothing:
        return y
    num_classes = ops.cast(ops.shape(y)[-1], y.dtype)
    return y * (1.0 - label_smoothing) + label_smoothing / num_classes


@dataclass(frozen=True)
class LossSpec:
    """A loss and what it needs from the head's last layer.

    build: the config -> the keras.losses.Loss that training compiles.
    cosine: the head ends in a CosineClassifier (scale --arcface_scale) instead of Dense.
    subcenters: that classifier has --subcenters weights per class (else 1).
    """

    build: Callable[[ExperimentConfig], keras.losses.Loss]
    cosine: bool = False
    subcenters: bool = False


def _softmax(config: ExperimentConfig) -> keras.losses.Loss:
    return keras.losses.CategoricalCrossentropy(label_smoothing=config.train.label_smoothing)


def _focal(config: ExperimentConfig) -> keras.losses.Loss:
    return FocalLoss(config.train.focal_gamma, config.train.label_smoothing)


def _arcface(config: ExperimentConfig) -> keras.losses.Loss:
    return ArcFaceLoss(
        config.model.arcface_scale, config.train.arcface_margin, config.train.label_smoothing
    )


LOSSES: Registry[LossSpec] = Registry(
    "loss",
    {
        "softmax": LossSpec(_softmax),
        "focal": LossSpec(_focal),
        "arcface": LossSpec(_arcface, cosine=True),
        "subcenter_arcface": LossSpec(_arcface, cosine=True, subcenters=True),
    },
)


def subcenters(config: ModelConfig) -> int:
    """Weights per class of the head's CosineClassifier for config.loss."""
    return config.subcenters if LOSSES.get(config.loss).subcenters else 1


def check_model(config: ModelConfig) -> None:
    """Raises UserError for an unknown --loss or a bad --arcface_scale or --subcenters."""
    LOSSES.get(config.loss)
    if not config.arcface_scale > 0:
        raise UserError(f"--arcface_scale must be positive, got {config.arcface_scale}")
    if config.subcenters < 1:
        raise UserError(f"--subcenters must be at least 1, got {config.subcenters}")


def check(config: ExperimentConfig) -> None:
    """Raises UserError, naming the flag, for any loss setting out of range."""
    check_model(config.model)
    train = config.train
    if not 0.0 <= train.arcface_margin < math.pi / 2:
        raise UserError(f"--arcface_margin must be in [0, π/2) radians, got {train.arcface_margin}")
    if not train.focal_gamma >= 0:
        raise UserError(f"--focal_gamma must be >= 0, got {train.focal_gamma}")
    if not 0.0 <= train.label_smoothing < 1.0:
        raise UserError(f"--label_smoothing must be in [0, 1), got {train.label_smoothing}")


def build(config: ExperimentConfig) -> keras.losses.Loss:
    """The loss for config.model.loss, after checking its settings."""
    check(config)
    return LOSSES.get(config.model.loss).build(config)
