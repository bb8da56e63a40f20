"""make_dataset: shapes, dtypes, value ranges, and the same preprocessing eagerly and in tf.data."""

from __future__ import annotations

import io

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from lmrec import training as training_lib
from lmrec.data import pipeline, prepare, records
from lmrec.errors import UserError
from lmrec.models import backbones
from tests.conftest import jpeg_bytes, small_demo_config

# Expected output range of each backbone's normalization for inputs in [0, 255].
RANGES = {
    "xception": (-1.0, 1.0),
    "inceptionv3": (-1.0, 1.0),
    "baseline": (-1.0, 1.0),
    "resnet50": (-123.68, 151.061),  # caffe mode: BGR minus ImageNet means
    "efficientnetb7": (0.0, 255.0),  # normalizes inside the network
    **{f"efficientnet_lite{i}": (-127 / 128, 1.0) for i in range(3)},  # mean 127, std 128
    # torchvision's ImageNet mean/std: (0 - 0.485) / 0.229 for R, (1 - 0.406) / 0.225 for B.
    **{name: (-0.485 / 0.229, 0.594 / 0.225) for name in ("squeezenet", "resnet18", "resnet34")},
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

    def make():
        return pipeline.make_dataset(
            records.shard_pattern(demo_records, "val"),
            64,
            tf.identity,
            batch_size=5,
            training=False,
            with_ids=True,
            num_examples=stats_total,
        )

    first = [i.decode() for _, _, ids in make() for i in ids.numpy()]
    second = [i.decode() for _, _, ids in make() for i in ids.numpy()]
    assert first == second and len(first) == stats_total == len(set(first))
    assert int(make().cardinality()) == -(-stats_total // 5)


def test_counted_training_passes_hold_each_image_once_and_end(demo_records):
    """passes=N (the feature cache's read): N whole passes in order, augmented differently."""
    count = prepare.read_stats(demo_records)["totals"]["train"]
    dataset = pipeline.make_dataset(
        records.shard_pattern(demo_records, "train"),
        32,
        lambda x: x,
        batch_size=7,
        training=True,
        augment_policy="light",
        seed=1,
        with_ids=True,
        passes=2,
    )
    batches = list(dataset)
    ids = [i.decode() for _, _, batch_ids in batches for i in batch_ids.numpy()]
    assert len(ids) == 2 * count and len(batches) == -(-2 * count // 7)
    assert sorted(ids[:count]) == sorted(ids[count:]) and len(set(ids[:count])) == count
    images = np.concatenate([batch.numpy() for batch, _, _ in batches])
    first = {i: image for i, image in zip(ids[:count], images[:count], strict=True)}
    differs = [
        not np.allclose(first[i], image)
        for i, image in zip(ids[count:], images[count:], strict=True)
    ]
    assert sum(differs) > count // 2, "the second pass is cropped and flipped anew"


def test_training_crops_differ_between_epochs_but_evaluation_is_fixed():
    encoded = tf.constant(jpeg_bytes(3, size=(120, 90)))
    policy = pipeline.augment.get_policy("light")
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
    with pytest.raises(UserError, match="--augment='autoaugment'.*light.*shift_jitter"):
        _training_batches(demo_records, "autoaugment", 2, seed=1)
    with pytest.raises(UserError, match="renamed to --augment=light"):
        pipeline.augment.get_policy("crop_flip")


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


def test_shift_jitter_policy_shifts_and_jitters_inside_tf_data(demo_records):
    images, labels = next(iter(_training_batches(demo_records, "shift_jitter", 4, seed=4)))
    assert images.shape == (4, 48, 48, 3) and images.dtype == tf.float32
    assert labels.shape == (4,) and labels.dtype == tf.int32
    assert 0.0 <= float(tf.reduce_min(images)) and float(tf.reduce_max(images)) <= 1.0
    # The batch stage alone, on fixed (evaluation) batches: it must change the pixels.
    plain = pipeline.make_dataset(
        records.shard_pattern(demo_records, "val"), 48, lambda x: x, 8, training=False
    ).take(1)
    batch_layer = pipeline.augment.get_policy("shift_jitter").batch_layer(5)
    pairs = plain.map(lambda x, y: (x, batch_layer(x, training=True)))
    before, after = (t.numpy() for t in next(iter(pairs)))
    assert after.shape == before.shape == (8, 48, 48, 3)
    assert 0.0 <= after.min() and after.max() <= 255.0
    changed = np.abs(after - before).reshape(8, -1).mean(axis=1)
    assert (changed > 1.0).all(), changed  # every image, by more than a level on average


def test_class_weights_are_inverse_frequency_with_mean_one():
    weights = pipeline.class_weights([90, 10, 45])
    assert weights.mean() == pytest.approx(1.0)
    assert weights[1] > weights[2] > weights[0]
    assert weights[1] / weights[0] == pytest.approx(9.0)
    assert weights[2] / weights[0] == pytest.approx(2.0)
    np.testing.assert_allclose(pipeline.class_weights([7, 7, 7]), 1.0)
    empty = pipeline.class_weights([10, 0, 30])
    assert empty[1] == 0.0 and empty[[0, 2]].mean() == pytest.approx(1.0)
    with pytest.raises(UserError, match="no class has training images"):
        pipeline.class_weights([0, 0])


def test_sample_weights_follow_sparse_one_hot_and_mixed_labels():
    weights = pipeline.class_weights([90, 10])  # [0.2, 1.8]
    images = tf.zeros([3, 2, 2, 3])
    sparse = tf.data.Dataset.from_tensors((images, tf.constant([0, 1, 1])))
    _, _, w = next(iter(pipeline.with_class_weights(sparse, weights)))
    np.testing.assert_allclose(w.numpy(), weights[[0, 1, 1]], rtol=1e-6)
    mixed = tf.constant([[1.0, 0.0], [0.0, 1.0], [0.7, 0.3]])
    dense = tf.data.Dataset.from_tensors((images, mixed))
    _, labels, w = next(iter(pipeline.with_class_weights(dense, weights)))
    np.testing.assert_allclose(w.numpy(), [0.2, 1.8, 0.7 * 0.2 + 0.3 * 1.8], rtol=1e-6)
    np.testing.assert_array_equal(labels.numpy(), mixed.numpy())


@pytest.fixture(scope="module")
def skewed_records(tmp_path_factory) -> str:
    """90 photos of class 0 and 10 of class 1, 16 px, in 3 shards."""
    directory = str(tmp_path_factory.mktemp("skewed"))
    writer = records.ShardWriter(directory, "train", images_per_shard=40)
    for i in range(100):
        label = 1 if i % 10 == 0 else 0
        writer.write(records.Record(f"c{label}/{i}.jpg", label, jpeg_bytes(i, (16, 16)), 16, 16))
    writer.finish()
    return records.shard_pattern(directory, "train")


def _share_of_class_one(pattern: str, batches: int, **balance) -> float:
    dataset = pipeline.make_dataset(
        pattern,
        16,
        lambda x: x,
        batch_size=25,
        training=True,
        augment_policy="none",
        seed=7,
        shuffle_buffer=100,
        **balance,
    )
    labels = np.concatenate([y.numpy() for _, y in dataset.take(batches)])
    return float((labels == 1).mean())


def test_resample_balances_a_skewed_stream(skewed_records):
    # 400 labels: a binomial share of 0.5 has a standard deviation of 0.025.
    balanced = _share_of_class_one(skewed_records, 16, balance="resample", class_counts=[90, 10])
    assert balanced == pytest.approx(0.5, abs=0.1)
    assert _share_of_class_one(skewed_records, 8) == pytest.approx(0.1, abs=0.06)
    # class_weights leaves sampling alone (the weights are added after mixing, in train).
    skewed = _share_of_class_one(skewed_records, 8, balance="class_weights")
    assert skewed == pytest.approx(0.1, abs=0.06)


def test_evaluation_is_never_resampled(skewed_records):
    dataset = pipeline.make_dataset(
        skewed_records,
        16,
        lambda x: x,
        25,
        training=False,
        balance="resample",
        class_counts=[90, 10],
    )
    labels = np.concatenate([y.numpy() for _, y in dataset])
    assert len(labels) == 100 and int((labels == 1).sum()) == 10


def test_unknown_balance_and_resample_without_counts_are_clear_errors(skewed_records, tmp_path):
    with pytest.raises(UserError, match="--balance='oversample'.*class_weights.*resample"):
        pipeline.make_dataset(skewed_records, 16, lambda x: x, 4, True, balance="oversample")
    with pytest.raises(UserError, match="resample needs the per-class training counts"):
        pipeline.make_dataset(skewed_records, 16, lambda x: x, 4, True, balance="resample")
    experiment = small_demo_config(str(tmp_path), balance="oversample")
    with pytest.raises(UserError, match="--balance='oversample'"):
        training_lib.validate(experiment)


def _short_run_config(tmp_path, demo_records, **overrides):
    return small_demo_config(
        str(tmp_path),
        data_dir=demo_records,
        prepare_if_missing="false",
        image_size=32,
        batch_size=8,
        epochs_frozen=1,
        epochs_finetune=1,
        steps_per_epoch=2,
        evaluate_after="false",
        export_after="false",
        **overrides,
    )


def test_class_weights_reach_the_training_batches(tmp_path, demo_records):
    experiment = _short_run_config(tmp_path, demo_records, balance="class_weights")
    stats = prepare.read_stats(demo_records)
    num_classes = len(records.read_labels(demo_records))
    # Pretend class 0 had a quarter of the images of the others.
    for entry in stats["classes"]:
        if entry["index"] == 0:
            entry["train"] //= 4
    counts = training_lib.train_class_counts(stats, num_classes)
    expected = pipeline.class_weights(counts)
    train, val, _ = training_lib.datasets(experiment, stats, num_classes)
    images, labels, sample_weights = next(iter(train))
    np.testing.assert_allclose(
        sample_weights.numpy(), expected[np.argmax(labels.numpy(), axis=1)], rtol=1e-6
    )
    assert len(next(iter(val))) == 2, "validation is not weighted"


def test_short_training_run_with_class_weights_and_mixup(tmp_path, demo_records):
    from lmrec.train import train_and_evaluate

    experiment = _short_run_config(
        tmp_path, demo_records, balance="class_weights", mixing="mixup", label_smoothing=0.1
    )
    result = train_and_evaluate(experiment, verbose=False)
    assert [row["phase"] for row in result.history] == ["frozen", "finetune"]
    assert all(np.isfinite(row["loss"]) for row in result.history)


@pytest.mark.parametrize("size", [(800, 600), (2400, 1800)])
def test_dct_downscaled_jpeg_decoding_stays_close_to_a_full_decode(size):
    """A JPEG >= 2x the model input decodes at 1/2 or 1/4 scale; the model input moves by
    about a level of 255, less than the choice of resize filter moves it."""
    width, height = size
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = 128 + 60 * np.sin(x / 37.0) * np.cos(y / 23.0) + 30 * np.sin((x + y) / 11.0)
    noise = rng.normal(0, 12, (height, width, 1))
    pixels = np.clip(base[..., None] + noise + [0, 20, -20], 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    encoded = tf.constant(buffer.getvalue())

    scaled = pipeline.decode_and_resize(encoded, 224).numpy()
    full = tf.io.decode_jpeg(encoded, channels=3)
    reference = pipeline.resize(full, 224).numpy()
    area = tf.image.resize(tf.cast(full, tf.float32), [224, 224], method="area").numpy()
    index = int(pipeline._dct_scale_index(tf.constant(min(size)), 224))
    assert pipeline.DCT_SCALES[index] > 1  # the scaled decode was taken
    dct_difference = float(np.mean(np.abs(scaled - reference)))
    filter_difference = float(np.mean(np.abs(area - reference)))
    assert dct_difference < 1.5, dct_difference
    assert dct_difference < filter_difference, (dct_difference, filter_difference)
