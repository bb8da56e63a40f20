"""OPTIMIZERS and LR_SCHEDULES: what updates the weights in each training phase, by name.

Each phase compiles a fresh optimizer built here from the phase's learning rate
and length, so phase 2 never inherits phase 1's moment estimates, and every
schedule starts again at the phase's peak. Schedule lengths given in epochs
(--lr_step_epochs, --restart_epochs, --warmup_epochs) become steps with the
phase's steps per epoch.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import keras
from keras import ops

from lmrec.config import TrainConfig
from lmrec.errors import UserError
from lmrec.registry import Registry


def _adam(train: TrainConfig, learning_rate, **ema):
    return keras.optimizers.Adam(learning_rate, **ema)


def _adamw(train: TrainConfig, learning_rate, **ema):
    return keras.optimizers.AdamW(learning_rate, weight_decay=train.weight_decay, **ema)


def _rmsprop(train: TrainConfig, learning_rate, **ema):
    # Keras' transfer-learning tutorial's optimizer: Keras defaults, rho 0.9.
    return keras.optimizers.RMSprop(learning_rate, weight_decay=train.weight_decay or None, **ema)


def _sgd(train: TrainConfig, learning_rate, **ema):
    # Nesterov momentum (0.9 by default): the classic fine-tuning optimizer of the
    # ResNet/EfficientNet papers.
    return keras.optimizers.SGD(
        learning_rate,
        momentum=train.momentum,
        nesterov=True,
        weight_decay=train.weight_decay or None,
        **ema,
    )


OPTIMIZERS: Registry[Callable[..., keras.optimizers.Optimizer]] = Registry(
    "optimizer",
    {
        "adam": _adam,
        "adamw": _adamw,
        "rmsprop": _rmsprop,
        "sgd": _sgd,
    },
)


def epochs_to_steps(epochs: float, steps_per_epoch: int) -> int:
    """A length in (possibly fractional) epochs as a whole number of steps, at least 1."""
    return max(1, round(epochs * steps_per_epoch))


def _constant(learning_rate: float, steps: int, steps_per_epoch: int, train: TrainConfig):
    return learning_rate


def _step(learning_rate: float, steps: int, steps_per_epoch: int, train: TrainConfig):
    every = (
        epochs_to_steps(train.lr_step_epochs, steps_per_epoch)
        if train.lr_step_epochs
        else max(1, math.ceil(steps / 3))
    )
    return keras.optimizers.schedules.ExponentialDecay(
        learning_rate, decay_steps=every, decay_rate=train.lr_decay_factor, staircase=True
    )


def _cosine(learning_rate: float, steps: int, steps_per_epoch: int, train: TrainConfig):
    return keras.optimizers.schedules.CosineDecay(learning_rate, decay_steps=max(1, steps))


def _cosine_restarts(learning_rate: float, steps: int, steps_per_epoch: int, train: TrainConfig):
    return keras.optimizers.schedules.CosineDecayRestarts(
        learning_rate,
        first_decay_steps=epochs_to_steps(train.restart_epochs, steps_per_epoch),
        t_mul=train.restart_multiplier,
    )


# Each builder gets (peak learning rate, steps after any warm-up, steps per epoch, TrainConfig).
LR_SCHEDULES: Registry[Callable[[float, int, int, TrainConfig], object]] = Registry(
    "learning-rate schedule",
    {
        "constant": _constant,
        "step": _step,  # x lr_decay_factor every lr_step_epochs (0: at 1/3 and 2/3 of the phase)
        "cosine": _cosine,  # decays to 0 by the phase's last step
        "cosine_restarts": _cosine_restarts,  # SGDR: back to the peak every cycle, cycles x t_mul
    },
    flag="lr_schedule",
)


@keras.saving.register_keras_serializable(package="lmrec")
class WarmUp(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up from 0 to a schedule's peak, then the schedule from its own step 0.

    Step s < warmup_steps gets peak * s / warmup_steps (as Keras' CosineDecay warm-up
    does); step s >= warmup_steps gets schedule(s - warmup_steps). One wrapper for
    every schedule, so warm-up means the same thing whichever is chosen.

    Args:
      schedule: a LearningRateSchedule, or a float for a constant rate.
      warmup_steps: steps of the linear ramp, >= 1.
    """

    def __init__(self, schedule, warmup_steps: int, name: str = "WarmUp"):
        super().__init__()
        self.schedule = schedule
        self.warmup_steps = int(warmup_steps)
        self.name = name

    def _after(self, step):
        if isinstance(self.schedule, keras.optimizers.schedules.LearningRateSchedule):
            return ops.cast(self.schedule(step), "float32")
        return ops.cast(self.schedule, "float32")

    def __call__(self, step):
        step = ops.cast(step, "float32")
        warmup = ops.cast(self.warmup_steps, "float32")
        ramp = self._after(0.0) * step / warmup
        return ops.where(step < warmup, ramp, self._after(ops.maximum(step - warmup, 0.0)))

    def get_config(self):
        schedule = self.schedule
        if isinstance(schedule, keras.optimizers.schedules.LearningRateSchedule):
            schedule = keras.optimizers.schedules.serialize(schedule)
        return {"schedule": schedule, "warmup_steps": self.warmup_steps, "name": self.name}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if isinstance(config["schedule"], dict):
            config["schedule"] = keras.optimizers.schedules.deserialize(config["schedule"])
        return cls(**config)


def schedule(
    train: TrainConfig,
    learning_rate: float,
    total_steps: int,
    steps_per_epoch: int,
    warmup_epochs: float = 0.0,
):
    """One phase's learning rate: a float (constant) or a LearningRateSchedule.

    Args:
      train: --lr_schedule and its settings.
      learning_rate: the phase's peak learning rate.
      total_steps: steps in the phase, warm-up included.
      steps_per_epoch: turns the schedule's epoch lengths into steps.
      warmup_epochs: linear warm-up at the start of the phase; 0 for none.
    """
    warmup = epochs_to_steps(warmup_epochs, steps_per_epoch) if warmup_epochs > 0 else 0
    build_schedule = LR_SCHEDULES.get(train.lr_schedule)
    rate = build_schedule(learning_rate, max(1, total_steps - warmup), steps_per_epoch, train)
    return WarmUp(rate, warmup) if warmup else rate


def check(train: TrainConfig) -> None:
    """Checks the optimizer and schedule flags of a TrainConfig.

    Raises:
      UserError: naming the flag (an unknown name lists the valid ones).
    """
    OPTIMIZERS.get(train.optimizer)
    LR_SCHEDULES.get(train.lr_schedule)
    ranges = (
        ("momentum", 0.0 <= train.momentum < 1.0, "in [0, 1)"),
        ("lr_step_epochs", train.lr_step_epochs >= 0, ">= 0"),
        ("lr_decay_factor", 0.0 < train.lr_decay_factor <= 1.0, "in (0, 1]"),
        ("restart_epochs", train.restart_epochs > 0, "> 0"),
        ("restart_multiplier", train.restart_multiplier >= 1.0, ">= 1"),
        ("warmup_epochs", train.warmup_epochs >= 0, ">= 0"),
        ("layer_lr_ratio", 0.0 < train.layer_lr_ratio <= 1.0, "in (0, 1]"),
    )
    for flag, ok, allowed in ranges:
        if not ok:
            raise UserError(f"--{flag} must be {allowed}, got {getattr(train, flag)}")
    if train.warmup_epochs > 0 and train.warmup_epochs >= train.epochs_finetune:
        raise UserError(
            f"--warmup_epochs={train.warmup_epochs} warms up phase 2, so it must be less than "
            f"--epochs_finetune={train.epochs_finetune}"
        )


class _LayerRates:
    """Mixin: each variable's step uses the learning rate times its factor in lr_factors.

    Keras optimizers take one learning rate; discriminative fine-tuning (fastai's
    slice(lo, hi), ULMFiT, layer-wise decay in BEiT/ViT fine-tuning) needs one per
    layer. Scaling the rate handed to update_step works for every optimizer (scaling
    the gradient would not: Adam and RMSprop divide its scale out).
    """

    lr_factors: dict[str, float] = {}

    def build(self, variables):
        super().build(variables)
        # A tuple, so Keras' attribute tracking leaves it alone.
        self._factor_by_index = tuple(self.lr_factors.get(v.path, 1.0) for v in variables)

    def update_step(self, gradient, variable, learning_rate):
        factor = self._factor_by_index[self._get_variable_index(variable)]
        if factor != 1.0:
            learning_rate = ops.multiply(learning_rate, factor)
        return super().update_step(gradient, variable, learning_rate)


_LAYERWISE_CLASSES: dict[type, type] = {}


def _with_layer_rates(optimizer, factors: dict[str, float]):
    base = type(optimizer)
    if base not in _LAYERWISE_CLASSES:
        _LAYERWISE_CLASSES[base] = type(f"Layerwise{base.__name__}", (_LayerRates, base), {})
    optimizer.__class__ = _LAYERWISE_CLASSES[base]
    optimizer.lr_factors = dict(factors)
    return optimizer


def layer_rate_factors(backbone: keras.Model, ratio: float) -> dict[str, float]:
    """Learning-rate factors for a backbone's variables, ratio at its first layer, ~1 at its top.

    Layers with weights, in the backbone's order, get ratio ** (1 - i / n) for
    the i-th of n: the rate grows geometrically with depth, since early layers hold
    generic features (edges, textures) worth keeping and later ones the ImageNet-specific
    ones worth changing. Variables not listed (the head) keep factor 1.

    Args:
      backbone: the (nested) backbone model.
      ratio: factor of the first layer, in (0, 1]; 1 gives every layer the same rate.
    """
    weighted = [layer for layer in backbone.layers if layer.weights]
    factors: dict[str, float] = {}
    for index, layer in enumerate(weighted):
        factor = ratio ** (1.0 - index / len(weighted))
        for variable in layer.weights:
            factors[variable.path] = factor
    return factors


def build(
    train: TrainConfig,
    learning_rate: float,
    total_steps: int,
    steps_per_epoch: int,
    warmup_epochs: float = 0.0,
    lr_factors: dict[str, float] | None = None,
) -> keras.optimizers.Optimizer:
    """A fresh optimizer for one phase of total_steps steps.

    Args:
      train: --optimizer, --lr_schedule and their settings (--momentum, --weight_decay,
        --ema_momentum, ...).
      learning_rate: the phase's peak learning rate.
      total_steps: steps in the phase (the schedule's length).
      steps_per_epoch: turns the schedule's epoch lengths into steps.
      warmup_epochs: linear warm-up at the start of the phase; 0 for none.
      lr_factors: variable path -> factor on the learning rate (layer_rate_factors);
        None or empty: one rate for all.
    """
    rate = schedule(train, learning_rate, total_steps, steps_per_epoch, warmup_epochs)
    ema = {"use_ema": train.ema_momentum > 0, "ema_momentum": train.ema_momentum or 0.99}
    optimizer = OPTIMIZERS.get(train.optimizer)(train, rate, **ema)
    return _with_layer_rates(optimizer, lr_factors) if lr_factors else optimizer
