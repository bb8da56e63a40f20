"""Every head in the registry, with every loss: shapes, .keras and SavedModel round trips, a
training step.

Plus numerical checks of the pooling layers: compact bilinear pooling against a
NumPy Tensor Sketch (explicit pair hashing, no FFT), its inner products against
<x, y>², and the exact bilinear product when the hashes are injective.
"""

from __future__ import annotations

import dataclasses
import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from lmrec import export, losses, run_files
from lmrec.config import ExperimentConfig, ExportConfig, ModelConfig
from lmrec.data import records
from lmrec.errors import UserError
from lmrec.models import backbones, classifier, heads, pooling

# Trains, exports or runs commands: left out by `pytest -m "not slow"`.
pytestmark = pytest.mark.slow

FEATURES = (4, 4, 32)  # a small backbone feature map
CONFIG = ModelConfig(dense_units=16, bilinear_dim=256)
NUM_CLASSES = 3


def _feature_maps(seed: int = 0, shape=FEATURES, batch: int = 3) -> np.ndarray:
    """Non-negative, like ReLU features, with some exact zeros."""
    rng = np.random.default_rng(seed)
    return np.maximum(rng.normal(0.5, 1.0, (batch, *shape)), 0.0).astype("float32")


def _perturb(model: keras.Model, seed: int = 1) -> None:
    """Moves every trainable weight off its initial value (γ = 0 would hide self-attention)."""
    rng = np.random.default_rng(seed)
    for weight in model.trainable_weights:
        weight.assign(weight.numpy() + rng.normal(0.0, 0.1, weight.shape).astype("float32"))


@pytest.mark.parametrize("loss", sorted(losses.LOSSES))
@pytest.mark.parametrize("name", sorted(heads.HEADS))
def test_head_gives_probabilities_and_survives_a_keras_file(name, loss, tmp_path):
    config = dataclasses.replace(CONFIG, head=name, loss=loss)
    head = heads.build_head(FEATURES, NUM_CLASSES, config)
    assert head.name == "head"
    _perturb(head)
    features = _feature_maps()
    probabilities = head(features, training=False).numpy()
    assert probabilities.shape == (3, NUM_CLASSES) and probabilities.dtype == np.float32
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    path = str(tmp_path / "head.keras")
    head.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_allclose(loaded(features, training=False).numpy(), probabilities, atol=1e-6)
    assert [w.name for w in loaded.weights] == [w.name for w in head.weights]


# For the slower tests (XLA, SavedModel): every head with the default loss, and each other
# loss with another head (from the end). The loss only changes the head's last layer.
HEAD_NAMES = sorted(heads.HEADS)
SLOW_CASES = [(name, "softmax") for name in HEAD_NAMES] + [
    (HEAD_NAMES[-1 - i % len(HEAD_NAMES)], loss)
    for i, loss in enumerate(loss for loss in sorted(losses.LOSSES) if loss != "softmax")
]


@pytest.mark.parametrize("name, loss", SLOW_CASES)
def test_head_trains_one_step(name, loss):
    config = dataclasses.replace(CONFIG, head=name, loss=loss)
    head = heads.build_head(FEATURES, NUM_CLASSES, config)
    # XLA, as Keras' jit_compile="auto" picks on a GPU: every op must have an XLA kernel.
    head.compile(
        optimizer=keras.optimizers.SGD(0.1),
        loss=losses.build(ExperimentConfig(model=config)),
        jit_compile=True,
    )
    before = [w.numpy().copy() for w in head.trainable_weights]
    value = head.train_on_batch(_feature_maps(), keras.utils.to_categorical([0, 1, 2], 3))
    assert np.isfinite(value)
    after = [w.numpy() for w in head.trainable_weights]
    changed = [not np.allclose(b, a) for b, a in zip(before, after, strict=True)]
    assert changed[-1], "the classifier layer learns"
    # and what feeds it, if anything trains there (the cosine classifier has no bias, and the
    # bilinear head no trainable weight before it).
    assert sum(changed) >= min(2, len(changed))


@pytest.mark.parametrize("name, loss", SLOW_CASES)
def test_classifier_rebuilds_from_weights_and_exports(name, loss, tmp_path):
    """The model_dir path: rebuilt from the config + a weights file, then lmrec.export."""
    size = 32  # the baseline's minimum: a 2x2x256 feature map
    model_config = ModelConfig(
        backbone="baseline", weights="none", head=name, dense_units=16, bilinear_dim=256, loss=loss
    )
    model = classifier.build_classifier(model_config, num_classes=NUM_CLASSES, image_size=size)
    assert model.head.name == "head"
    _perturb(model.head)
    weights_file = str(tmp_path / "best.weights.h5")
    model.save_weights(weights_file)
    rebuilt = classifier.build_classifier(model_config, NUM_CLASSES, size, load_weights=False)
    rebuilt.load_weights(weights_file)

    images = np.random.default_rng(2).integers(0, 256, (2, size, size, 3), dtype=np.uint8)
    preprocess = backbones.get_spec("baseline").preprocess
    expected = model(preprocess(tf.constant(images, tf.float32)), training=False).numpy()
    np.testing.assert_allclose(expected.sum(axis=1), 1.0, rtol=1e-5)
    rebuilt_out = rebuilt(preprocess(tf.constant(images, tf.float32)), training=False)
    np.testing.assert_allclose(rebuilt_out.numpy(), expected, atol=1e-6)

    model_dir = tmp_path / "run"
    model_dir.mkdir()
    labels = [{"index": i, "name": f"class{i}", "landmark_id": str(i)} for i in range(3)]
    (model_dir / records.LABELS_FILE).write_text(json.dumps(labels), encoding="utf-8")
    trained = run_files.TrainedModel(
        model=rebuilt,
        config=ExperimentConfig(model=model_config),
        labels=labels,
        image_size=size,
        model_dir=str(model_dir),
    )
    path = export.export_saved_model(
        str(model_dir), ExportConfig(export_dir=str(tmp_path / "export")), False, trained
    )
    served = tf.saved_model.load(path).signatures["serving_images"](images=tf.constant(images))
    np.testing.assert_allclose(served["probabilities"].numpy(), expected, atol=1e-5)
    assert export.read_metadata(path)["loss"] == loss


def test_unknown_head_lists_the_valid_names():
    with pytest.raises(UserError, match=r"--head='bilinar'.*bilinear.*self_attention"):
        heads.get_builder("bilinar")
    with pytest.raises(UserError, match="--bilinear_dim must be positive"):
        heads.build_head(FEATURES, 3, ModelConfig(head="bilinear", bilinear_dim=0))


# Compact bilinear pooling (Tensor Sketch).


def _hashes(layer: pooling.CompactBilinearPooling):
    return [
        (getattr(layer, f"hash_{i}").numpy(), getattr(layer, f"sign_{i}").numpy()) for i in (1, 2)
    ]


def _reference_tensor_sketch(feature_maps: np.ndarray, layer) -> np.ndarray:
    """Σ over locations of Σ_ij s1(i)s2(j)·x_i·x_j at (h1(i) + h2(j)) mod D: no FFT involved."""
    (h1, s1), (h2, s2) = _hashes(layer)
    dim = layer.output_dim
    batch, channels = feature_maps.shape[0], feature_maps.shape[-1]
    x = feature_maps.reshape(batch, -1, channels).astype(np.float64)
    pair_index = (h1[:, None] + h2[None, :]) % dim  # [C, C]
    pair_sign = s1[:, None] * s2[None, :]
    sketch = np.zeros((batch, dim))
    for b in range(batch):
        outer = np.einsum("li,lj->ij", x[b], x[b])  # the full bilinear pooling, C x C
        np.add.at(sketch[b], pair_index.ravel(), (pair_sign * outer).ravel())
    return sketch


def test_compact_bilinear_pooling_matches_a_numpy_tensor_sketch():
    layer = pooling.CompactBilinearPooling(output_dim=64, seed=3)
    x = np.random.default_rng(4).normal(size=(2, 3, 3, 16)).astype("float32")
    output = layer(x).numpy()
    sketch = _reference_tensor_sketch(x, layer)
    np.testing.assert_allclose(layer.tensor_sketch(x).numpy(), sketch, rtol=1e-4, atol=1e-4)
    signed_sqrt = np.sign(sketch) * np.sqrt(np.abs(sketch) + layer.epsilon)
    expected = signed_sqrt / np.linalg.norm(signed_sqrt, axis=1, keepdims=True)
    assert output.shape == (2, 64)
    # The square root magnifies float32 FFT round-off in empty bins (1e-9 -> 3e-5).
    np.testing.assert_allclose(output, expected, atol=3e-4)


def test_sketched_inner_products_approximate_squared_inner_products():
    """Over 30 hash draws, <TS(x), TS(y)> - <x, y>² has mean ~0 and the predicted spread."""
    channels, draws = 32, 30
    rng = np.random.default_rng(0)
    x = rng.normal(size=channels)
    y = 0.5 * x + rng.normal(size=channels)  # correlated, so <x, y>² is far from 0
    exact = (x @ y) ** 2
    pair = np.stack([x, y]).reshape(2, 1, 1, channels).astype("float32")
    rms = {}
    for dim in (256, 4096):
        errors = []
        for seed in range(draws):
            sketch = pooling.CompactBilinearPooling(dim, seed=seed).tensor_sketch(pair).numpy()
            errors.append(float(sketch[0] @ sketch[1]) - exact)
        errors = np.array(errors)
        # Count-sketch variance of <u, v> for u = x⊗x, v = y⊗y: (|u|²|v|² + <u, v>²) / D.
        std = np.sqrt(((x @ x) ** 2 * (y @ y) ** 2 + exact**2) / dim)
        rms[dim] = np.sqrt(np.mean(errors**2))
        assert rms[dim] < 2.0 * std, (dim, rms[dim], std)
        assert abs(errors.mean()) < 5.0 * std / np.sqrt(draws), "the estimate is unbiased"
    assert rms[4096] < rms[256] / 2, "16x the dimension, about 4x less error"


def test_injective_hashes_give_the_exact_bilinear_product():
    """h1(i) = i, h2(j) = j·C, D = C², signs +1: the sketch is the flattened Σ x xᵀ."""
    channels = 6
    layer = pooling.CompactBilinearPooling(output_dim=channels**2)
    layer.build((None, 2, 2, channels))
    layer.hash_1.assign(np.arange(channels, dtype=np.int32))
    layer.hash_2.assign(np.arange(channels, dtype=np.int32) * channels)
    layer.sign_1.assign(np.ones(channels, np.float32))
    layer.sign_2.assign(np.ones(channels, np.float32))
    x = np.random.default_rng(5).normal(size=(2, 2, 2, channels)).astype("float32")
    sketch = layer.tensor_sketch(x).numpy()
    flat = x.reshape(2, -1, channels).astype(np.float64)
    bilinear = np.einsum("bli,blj->bji", flat, flat)  # index j·C + i, as the hashes place it
    np.testing.assert_allclose(sketch, bilinear.reshape(2, -1), atol=1e-4)
    np.testing.assert_allclose(sketch[0] @ sketch[1], np.sum(bilinear[0] * bilinear[1]), rtol=1e-4)


def test_hashes_are_fixed_weights_that_travel_with_the_weights_file(tmp_path):
    def build():
        inputs = keras.Input(FEATURES)
        return keras.Model(inputs, pooling.CompactBilinearPooling(128, seed=7)(inputs))

    model = build()
    layer = model.layers[-1]
    assert len(model.trainable_weights) == 0 and len(model.non_trainable_weights) == 4
    model.trainable = True  # what freezing.freeze_backbone does to the head
    assert len(model.trainable_weights) == 0, "hashes never train"
    (h1, s1), (h2, s2) = _hashes(layer)
    assert h1.dtype == np.int32 and h1.min() >= 0 and h1.max() < 128
    assert set(np.unique(s1)) <= {-1.0, 1.0} and not np.array_equal(h1, h2)
    layer.hash_1.assign(np.roll(h1, 1))  # differ from what the seed draws
    model.save_weights(str(tmp_path / "cbp.weights.h5"))
    rebuilt = build()
    rebuilt.load_weights(str(tmp_path / "cbp.weights.h5"))
    np.testing.assert_array_equal(rebuilt.layers[-1].hash_1.numpy(), np.roll(h1, 1))
    x = _feature_maps()
    np.testing.assert_allclose(rebuilt(x).numpy(), model(x).numpy(), atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(model(x).numpy(), axis=1), 1.0, rtol=1e-5)


# GeM, spatial attention, self-attention.


def test_gem_spans_average_to_max_pooling():
    x = np.random.default_rng(6).uniform(0.5, 1.0, (2, 4, 4, 5)).astype("float32")
    average = pooling.GeneralizedMeanPooling(p=1.0)(x).numpy()
    np.testing.assert_allclose(average, x.mean(axis=(1, 2)), rtol=1e-5)
    near_max = pooling.GeneralizedMeanPooling(p=200.0)(x).numpy()
    np.testing.assert_allclose(near_max, x.max(axis=(1, 2)), rtol=0.02)
    gem3 = pooling.GeneralizedMeanPooling()(x).numpy()
    assert np.all(average < gem3) and np.all(gem3 < near_max)
    fixed = pooling.GeneralizedMeanPooling(p=3.0, trainable_p=False)
    fixed.build((None, 4, 4, 5))
    assert not fixed.trainable_weights and len(fixed.non_trainable_weights) == 1


def test_spatial_attention_weights_strong_locations_and_leaves_a_uniform_map():
    uniform = np.ones((1, 3, 3, 4), np.float32)
    layer = pooling.SpatialAttention()
    np.testing.assert_allclose(layer(uniform).numpy(), uniform, rtol=1e-5)
    x = _feature_maps(seed=7)
    weights = layer.attention(x).numpy()
    np.testing.assert_allclose(weights.sum(axis=(1, 2, 3)), 1.0, rtol=1e-5)
    energy = np.linalg.norm(x, axis=-1).reshape(3, -1)
    flat = weights.reshape(3, -1)
    assert np.all(np.argmax(flat, 1) == np.argmax(energy, 1))
    assert np.all(np.argmin(flat, 1) == np.argmin(energy, 1))
    assert not layer.weights, "parameter-free"


def test_spatial_attention_passes_gradients_only_through_the_features():
    # ReLU maps have all-zero locations, where the norm's gradient is unbounded; fine-tuning a
    # backbone through it collapsed a real run, so the weights a_l act as constants:
    # d/dx_l of v · mean_l(x_l a_l HW) is a_l v.
    x = _feature_maps(seed=9)
    x[:, 0, 0, :] = 0.0
    x = tf.constant(x)
    layer = pooling.SpatialAttention()
    v = tf.constant(np.random.default_rng(3).normal(size=FEATURES[-1]).astype("float32"))
    with tf.GradientTape() as tape:
        tape.watch(x)
        pooled = tf.reduce_mean(layer(x), axis=(1, 2))
        objective = tf.reduce_sum(pooled * v)
    gradient = tape.gradient(objective, x).numpy()
    assert np.all(np.isfinite(gradient))
    expected = layer.attention(x).numpy() * v.numpy()
    np.testing.assert_allclose(gradient, expected, rtol=1e-4, atol=1e-7)


def test_bilinear_heads_give_the_classifier_features_of_unit_mean_square():
    config = ModelConfig(head="bilinear", bilinear_dim=512)
    head = heads.build_head(FEATURES, 3, config)
    features = keras.Model(head.input, head.get_layer("unit_scale").output)
    out = features(_feature_maps(seed=10)).numpy()
    np.testing.assert_allclose(np.mean(np.square(out), axis=1), 1.0, rtol=1e-4)


def test_self_attention_starts_as_the_identity():
    layer = pooling.SelfAttention2D(reduction=8)
    x = _feature_maps(seed=8)
    np.testing.assert_array_equal(layer(x).numpy(), x)
    assert float(layer.gamma.numpy()) == 0.0 and layer.gamma.trainable
    layer.gamma.assign(1.0)
    y = layer(x).numpy()
    assert y.shape == x.shape and not np.allclose(y, x)
    assert layer.query.kernel.shape == (1, 1, 32, 4) and layer.value.kernel.shape == (1, 1, 32, 32)
