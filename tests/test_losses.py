"""The losses against their formulas, the cosine classifier, and the loss flags.

Every head with every loss (shapes, .keras, weights file, SavedModel) is tested
in tests/test_heads.py; here: ArcFace against a NumPy ArcFace and, at m = 0,
against Keras' cross-entropy on the cosine logits; sub-centers; focal at γ = 0;
logits read back from the softmax eagerly, in tf.function and inside fit.
"""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from lmrec import distribute, flags, losses
from lmrec.config import ExperimentConfig, ModelConfig
from lmrec.errors import UserError
from lmrec.models import cosine, heads

SCALE = 30.0


def _cosines(seed: int, batch: int = 8, classes: int = 5) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-0.99, 0.99, (batch, classes)).astype("float32")


def _one_hot(seed: int, batch: int = 8, classes: int = 5) -> np.ndarray:
    labels = np.random.default_rng(seed).integers(0, classes, batch)
    return np.eye(classes, dtype="float32")[labels]


def _softmax_of(logits: np.ndarray):
    """Probabilities as a head gives them: a Keras softmax that remembers its logits."""
    return keras.activations.softmax(tf.constant(logits))


def _numpy_arcface(cos: np.ndarray, y: np.ndarray, margin: float) -> np.ndarray:
    """Per-example ArcFace: target logit s·cos(θ + m) (θ + m < π here), cross-entropy."""
    target = np.cos(np.arccos(cos.astype(np.float64)) + margin)
    logits = SCALE * np.where(y > 0, target, cos)
    return -np.sum(y * _log_softmax(logits), axis=-1)


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.sum(np.exp(shifted), axis=-1, keepdims=True))


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_arcface_without_margin_is_cross_entropy_of_the_cosine_logits(seed, label_smoothing):
    logits = SCALE * _cosines(seed)
    y = _one_hot(seed)
    arcface = losses.ArcFaceLoss(SCALE, margin=0.0, label_smoothing=label_smoothing)
    cross_entropy = keras.losses.CategoricalCrossentropy(
        from_logits=True, label_smoothing=label_smoothing
    )
    np.testing.assert_allclose(
        float(arcface(y, _softmax_of(logits))), float(cross_entropy(y, logits)), rtol=1e-6
    )


@pytest.mark.parametrize("seed", range(3))
def test_arcface_margin_matches_numpy_and_raises_every_loss(seed):
    cos, y = _cosines(seed), _one_hot(seed)
    per_example = losses.ArcFaceLoss(SCALE, margin=0.5, reduction=None)
    with_margin = per_example(y, _softmax_of(SCALE * cos)).numpy()
    without = losses.ArcFaceLoss(SCALE, margin=0.0, reduction=None)(y, _softmax_of(SCALE * cos))
    # |θ + m| < π unless cos < cos(π - 0.5) = -0.878: keep to the cos(θ + m) branch.
    plain = np.abs(np.sum(y * cos, 1)) < 0.87
    np.testing.assert_allclose(
        with_margin[plain], _numpy_arcface(cos, y, 0.5)[plain], rtol=1e-4, atol=1e-4
    )
    assert np.all(with_margin > without.numpy()), "the margin makes every target harder"


def test_arcface_past_pi_falls_back_to_a_linear_penalty():
    """cos θ < cos(π - m): the target gets cos θ - m·sin m, still below cos θ (InsightFace)."""
    m = 0.5
    cos = np.array([[-0.95, 0.2]], np.float32)
    y = np.array([[1.0, 0.0]], np.float32)
    loss = float(losses.ArcFaceLoss(SCALE, m)(y, _softmax_of(SCALE * cos)))
    target = -0.95 - m * math.sin(m)
    expected = -_log_softmax(SCALE * np.array([target, 0.2]))[0]
    np.testing.assert_allclose(loss, expected, rtol=1e-5)


def test_soft_labels_get_the_margin_in_proportion():
    """A MixUp label 0.7/0.3: each class's logit moves 0.7 and 0.3 of its way to cos(θ + m)."""
    m = 0.3
    cos = np.array([[0.6, 0.1, -0.2]], np.float32)
    y = np.array([[0.7, 0.3, 0.0]], np.float32)
    loss = float(losses.ArcFaceLoss(SCALE, m)(y, _softmax_of(SCALE * cos)))
    phi = np.cos(np.arccos(cos[0].astype(np.float64)) + m)
    logits = SCALE * (cos[0] + y[0] * (phi - cos[0]))
    np.testing.assert_allclose(loss, -np.sum(y[0] * _log_softmax(logits)), rtol=1e-5)


def test_cosine_classifier_takes_the_closest_subcenter():
    rng = np.random.default_rng(0)
    features = rng.normal(size=(4, 6)).astype("float32")
    layer = cosine.CosineClassifier(num_classes=3, scale=SCALE, subcenters=2)
    logits = layer(features).numpy()
    kernel = layer.kernel.numpy()  # [6, 3·2], class j in columns 2j, 2j + 1
    unit = features / np.linalg.norm(features, axis=1, keepdims=True)
    cos = unit @ (kernel / np.linalg.norm(kernel, axis=0, keepdims=True))
    np.testing.assert_allclose(logits / SCALE, cos.reshape(4, 3, 2).max(-1), atol=1e-6)
    assert np.all(np.abs(logits) <= SCALE + 1e-4)

    single = cosine.CosineClassifier(num_classes=3, scale=SCALE)
    single.build((None, 6))
    np.testing.assert_allclose(
        single(features).numpy() / SCALE,
        unit @ (single.kernel.numpy() / np.linalg.norm(single.kernel.numpy(), axis=0)),
        atol=1e-6,
    )
    triple = cosine.CosineClassifier(num_classes=3, scale=SCALE, subcenters=3)
    triple.build((None, 6))
    triple.kernel.assign(np.repeat(single.kernel.numpy(), 3, axis=1))  # 3 equal sub-centers
    np.testing.assert_allclose(triple(features).numpy(), single(features).numpy(), atol=1e-5)


def test_subcenters_only_apply_to_subcenter_arcface():
    for loss, expected in (("arcface", 1), ("subcenter_arcface", 3), ("softmax", 1)):
        assert losses.subcenters(ModelConfig(loss=loss, subcenters=3)) == expected
    head = heads.build_head((2, 2, 8), 4, ModelConfig(loss="subcenter_arcface", subcenters=3))
    assert head.get_layer("cosine_classifier").kernel.shape == (512, 12)


@pytest.mark.parametrize("gamma", [0.0, 2.0])
def test_focal_loss_is_cross_entropy_at_gamma_zero_and_down_weights_easy_examples(gamma):
    logits = 3.0 * np.random.default_rng(1).normal(size=(8, 5)).astype("float32")
    y = _one_hot(1)
    focal = losses.FocalLoss(gamma, label_smoothing=0.1, reduction=None)(y, _softmax_of(logits))
    cross_entropy = keras.losses.CategoricalCrossentropy(
        from_logits=True, label_smoothing=0.1, reduction=None
    )(y, logits)
    if gamma == 0:
        np.testing.assert_allclose(focal.numpy(), cross_entropy.numpy(), rtol=1e-5)
    else:
        y_smooth = 0.9 * y + 0.1 / 5
        p = tf.nn.softmax(logits).numpy()
        expected = -np.sum(y_smooth * (1 - p) ** gamma * np.log(p), axis=1)
        np.testing.assert_allclose(focal.numpy(), expected, rtol=1e-4)
        assert np.all(focal.numpy() < cross_entropy.numpy())


def test_logits_are_read_back_eagerly_and_in_graphs():
    head = heads.build_head((2, 2, 8), 3, ModelConfig(loss="arcface", dense_units=8))
    features = np.random.default_rng(2).uniform(0, 1, (2, 2, 2, 8)).astype("float32")
    cosine_layer = head.get_layer("cosine_classifier")
    hidden = keras.Model(head.input, cosine_layer.output)
    expected = hidden(features).numpy()
    np.testing.assert_allclose(losses.logits_of(head(features)).numpy(), expected, atol=1e-6)

    @tf.function
    def graph_logits(x):
        probabilities = head(x)
        del probabilities._keras_logits  # the Softmax op alone, as in a graph Keras rebuilt
        return losses.logits_of(probabilities)

    np.testing.assert_allclose(graph_logits(features).numpy(), expected, atol=1e-6)
    with pytest.raises(ValueError, match="head's softmax output directly"):
        losses.logits_of(tf.constant([[0.5, 0.5]]))
    with pytest.raises(ValueError, match="softmax output"):
        tf.function(lambda x: losses.logits_of(tf.identity(head(x))))(features)


@pytest.mark.parametrize(
    "loss, strategy", [("arcface", "default"), ("subcenter_arcface", "mirrored")]
)
def test_arcface_fit_learns_separable_classes(loss, strategy):
    """Three classes around three directions: fit lowers the ArcFace loss and separates them."""
    rng = np.random.default_rng(3)
    centers = np.eye(3, 8, dtype="float32") * 2.0
    labels = rng.integers(0, 3, 96)
    x = (centers[labels] + rng.normal(0, 0.3, (96, 8))).astype("float32")
    y = keras.utils.to_categorical(labels, 3)
    config = ExperimentConfig(model=ModelConfig(loss=loss, arcface_scale=16.0))
    keras.utils.set_random_seed(0)
    with distribute.get_strategy(strategy).scope():
        inputs = keras.Input((8,))
        logits = cosine.CosineClassifier(3, 16.0, losses.subcenters(config.model))(inputs)
        model = keras.Model(inputs, keras.layers.Activation("softmax", dtype="float32")(logits))
        model.compile(keras.optimizers.Adam(0.05), losses.build(config), metrics=["accuracy"])
    history = model.fit(x, y, batch_size=32, epochs=8, verbose=0).history
    assert history["loss"][-1] < 0.5 * history["loss"][0], history["loss"]
    assert model.evaluate(x, y, verbose=0, return_dict=True)["accuracy"] == 1.0


@pytest.mark.parametrize("name", sorted(losses.LOSSES))
def test_compiled_loss_survives_a_keras_file(name, tmp_path):
    config = ExperimentConfig(model=ModelConfig(loss=name, dense_units=8))
    head = heads.build_head((2, 2, 8), 3, config.model)
    head.compile("sgd", losses.build(config))
    head.save(str(tmp_path / "head.keras"))
    loaded = keras.saving.load_model(str(tmp_path / "head.keras"))
    assert type(loaded.loss) is type(head.loss)
    assert loaded.loss.get_config() == head.loss.get_config()


@pytest.mark.parametrize(
    "args, match",
    [
        (["--loss=cosface"], r"--loss='cosface'.*softmax, focal, arcface, subcenter_arcface"),
        (["--loss=arcface", "--arcface_scale=0"], "--arcface_scale must be positive"),
        (["--arcface_margin=1.6"], r"--arcface_margin must be in \[0, π/2\)"),
        (["--arcface_margin=-0.1"], "--arcface_margin"),
        (["--loss=subcenter_arcface", "--subcenters=0"], "--subcenters must be at least 1"),
        (["--focal_gamma=-1"], "--focal_gamma must be >= 0"),
        (["--label_smoothing=1"], r"--label_smoothing must be in \[0, 1\)"),
    ],
)
def test_bad_loss_flags_name_the_flag(args, match):
    from lmrec import config as config_lib

    experiment = config_lib.experiment_from_flags(flags.parse(args))
    with pytest.raises(UserError, match=match):
        losses.build(experiment)


def test_unknown_loss_fails_when_the_head_is_built():
    with pytest.raises(UserError, match="--loss='arc'"):
        heads.build_head((2, 2, 8), 3, ModelConfig(loss="arc"))
