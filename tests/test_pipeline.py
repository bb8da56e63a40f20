"""make_dataset: shapes, dtypes, value ranges, and the same preprocessing eagerly and in tf.data."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from lmrec.data import pipeline, records
from lmrec.errors import UserError
from lmrec.models import backbones
from tests.conftest import jpeg_bytes

# Expected output range of each backbone's normalization for inputs in [0, 255].
RANGES = {
    "xception": (-1.0, 1.0),
    "inceptionv3": (-1.0, 1.0),
    "baseline": (-1.0, 1.0),
    "resnet50": (-123.68, 151.061),  # caffe mode: BGR minus ImageNet means
    "efficientnetb7": (0.0, 255.0),  # normalizes inside the network
    **{f"efficientnet_lite{i}": (-127 / 128, 1.0) for i in range(3)},  # mean 127, std 128
}


def test_every_backbone_has_an_expected_range():
    assert set(RANGES) == set(backbones.BACKBONES)


@pytest.mark.parametrize("training", [True, False])
def test_shapes_dtypes_and_ranges(demo_records, training):
    spec = backbones.get_spec("xception")
    dataset = pipeline.make_dataset(
        records.shard_pattern(demo_records, "train"),
        80,
        spec.preprocess,
        batch_size=8,
        training=training,
        seed=1,
    )
    images, labels = next(iter(dataset))
    assert images.shape == (8, 80, 80, 3) and images.dtype == tf.float32
    assert labels.shape == (8,) and labels.dtype == tf.int32
    assert -1.0 <= float(tf.reduce_min(images)) and float(tf.reduce_max(images)) <= 1.0
    assert float(tf.math.reduce_std(images)) > 0.05, "images are not blank"
    num_classes = len(records.read_labels(demo_records))
    assert 0 <= int(tf.reduce_min(labels)) and int(tf.reduce_max(labels)) < num_classes


@pytest.mark.parametrize("name", sorted(backbones.BACKBONES))
def test_preprocessing_is_the_same_eagerly_and_inside_tf_data(name):
    spec = backbones.get_spec(name)
    raw = tf.constant(np.random.default_rng(0).uniform(0, 255, (2, 8, 8, 3)), tf.float32)
    eager = spec.preprocess(raw).numpy()
    graph = next(iter(tf.data.Dataset.from_tensors(raw).map(spec.preprocess))).numpy()
    np.testing.assert_allclose(eager, graph, rtol=1e-6, atol=1e-5)
    low, high = RANGES[name]
    extremes = spec.preprocess(tf.constant([[[[0.0, 0.0, 0.0], [255.0, 255.0, 255.0]]]])).numpy()
    assert extremes.min() == pytest.approx(low, abs=1e-3)
    assert extremes.max() == pytest.approx(high, abs=1e-3)


def test_evaluation_pass_is_ordered_complete_and_has_known_length(demo_records):
    stats_total = sum(
        1
        for _ in tf.data.TFRecordDataset(
            tf.io.gfile.glob(records.shard_pattern(demo_records, "val"))
        )
    )
    make = lambda: pipeline.make_dataset(  # noqa: E731
        records.shard_pattern(demo_records, "val"),
        64,
        lambda x: x,
        batch_size=5,
        training=False,
        with_ids=True,
        num_examples=stats_total,
    )
    first = [i.decode() for _, _, ids in make() for i in ids.numpy()]
    second = [i.decode() for _, _, ids in make() for i in ids.numpy()]
    assert first == second and len(first) == stats_total == len(set(first))
    assert int(make().cardinality()) == -(-stats_total // 5)


def test_training_crops_differ_between_epochs_but_evaluation_is_fixed():
    encoded = tf.constant(jpeg_bytes(3, size=(120, 90)))
    policy = pipeline.augment.get_policy("crop_flip")
    crops = [pipeline.random_crop_and_resize(encoded, 32, policy, None).numpy() for _ in range(4)]
    assert any(not np.allclose(crops[0], c) for c in crops[1:])
    fixed = [pipeline.decode_and_resize(encoded, 32).numpy() for _ in range(2)]
    np.testing.assert_array_equal(fixed[0], fixed[1])
    assert fixed[0].shape == (32, 32, 3) and 0 <= fixed[0].min() and fixed[0].max() <= 255


def _training_batches(demo_records: str, policy: str, batch_size: int, seed: int):
    """Demo training batches at 48 px, scaled to [0, 1]."""
    return pipeline.make_dataset(
        records.shard_pattern(demo_records, "train"),
        48,
        lambda x: x / 255.0,
        batch_size=batch_size,
        training=True,
        augment_policy=policy,
        seed=seed,
    )


def test_randaugment_policy_runs_inside_tf_data(demo_records):
    images, _ = next(iter(_training_batches(demo_records, "randaugment", 4, seed=2)))
    assert images.shape == (4, 48, 48, 3)
    assert 0.0 <= float(tf.reduce_min(images)) and float(tf.reduce_max(images)) <= 1.0


def test_missing_shards_and_unknown_policy_are_clear_errors(tmp_path, demo_records):
    with pytest.raises(UserError, match="No TFRecord shards match"):
        pipeline.make_dataset(str(tmp_path / "x-*.tfrecord"), 32, lambda x: x, 2, training=False)
    with pytest.raises(UserError, match="--augment='autoaugment'.*crop_flip"):
        _training_batches(demo_records, "autoaugment", 2, seed=1)


@pytest.mark.parametrize("mixing", ["mixup", "cutmix"])
def test_mixing_blends_images_and_labels_in_proportion(demo_records, mixing):
    dataset = _training_batches(demo_records, "none", 16, seed=3)
    dataset = dataset.map(lambda x, y: (x, tf.one_hot(y, 8)))
    images, labels = next(iter(pipeline.augment.mix_batches(dataset, mixing, seed=3)))
    labels = labels.numpy()
    assert images.shape == (16, 48, 48, 3)
    np.testing.assert_allclose(labels.sum(axis=1), 1.0, atol=1e-5)
    # Some photo now carries two classes' labels (a pure one-hot batch would fail this).
    assert ((labels > 1e-3).sum(axis=1) >= 2).any()
    assert pipeline.augment.mix_batches(dataset, "none", seed=3) is dataset


def test_unknown_mixing_is_a_clear_error(demo_records):
    with pytest.raises(UserError, match="--mixing='blend'.*cutmix"):
        pipeline.augment.check_mixing("blend")
