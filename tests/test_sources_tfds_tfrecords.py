"""--source=tfds (on tfds.testing.mock_data) and --source=tfrecords (on DELF-layout shards).

mock_data generates random examples for a real dataset's features and honours the
SkipDecoding decoder (the image arrives as PNG bytes), so the TFDS source is tested
on the same code path as a real download, offline and in about a second.
"""

from __future__ import annotations

import io
import json
import os

import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from PIL import Image

from lmrec.config import PrepareConfig
from lmrec.data import pipeline, prepare, records
from lmrec.data.sources import get_source
from lmrec.errors import UserError
from tests.conftest import jpeg_bytes

# Trains, exports or runs commands: left out by `pytest -m "not slow"`.
pytestmark = pytest.mark.slow


def _ids(source) -> list[str]:
    return [item.image_id for item in source.items()]


def _check_decodes(item) -> None:
    with Image.open(io.BytesIO(item.read())) as image:
        image.load()
        assert image.width > 0 and image.height > 0


# --- TFDS ----------------------------------------------------------------------------------


def test_tfds_source_reads_encoded_images_with_their_file_names():
    with tfds.testing.mock_data(num_examples=7):
        source = get_source(PrepareConfig.build(source="tfds", tfds_name="cats_vs_dogs"))
        items = list(source.items())
        second = _ids(source)
    assert source.streaming and source.class_names == ["cat", "dog"]
    assert source.info["image_feature"] == "image" and source.info["label_feature"] == "label"
    assert source.info["id_feature"] == "image/filename"
    assert len(items) == 7 and [item.image_id for item in items] == second
    assert all(item.image_id and item.class_name in source.class_names for item in items)
    for item in items:
        assert item.read()[:4] == b"\x89PNG"  # the stored encoding, not decoded pixels
        _check_decodes(item)


def test_tfds_source_without_file_names_uses_tfds_ids():
    with tfds.testing.mock_data(num_examples=5):
        source = get_source(
            PrepareConfig.build(source="tfds", tfds_name="mnist", tfds_split="test")
        )
        items = list(source.items())
        assert _ids(source) == [item.image_id for item in items]
    assert source.class_names == [str(digit) for digit in range(10)]
    assert [item.image_id for item in items] == [
        f"mnist-test.tfrecord-00000-of-00001__{index}" for index in range(5)
    ]
    _check_decodes(items[0])  # a 28x28 grayscale PNG


def test_tfds_unlabeled_examples_are_listed_not_offered():
    def as_dataset(self, split, decoders=None, read_config=None, **kwargs):
        png = tf.io.encode_png(tf.zeros([4, 4, 1], tf.uint8))
        return tf.data.Dataset.from_tensor_slices(
            {"image": [png, png], "label": [3, -1], "tfds_id": ["a", "b"]}
        )

    with tfds.testing.mock_data(as_dataset_fn=as_dataset):
        source = get_source(PrepareConfig.build(source="tfds", tfds_name="mnist"))
        assert _ids(source) == _ids(source) == ["a"]
    assert source.rejected == [("b", "label -1 is not a class (unlabeled)")]


def test_tfds_end_to_end_prepare(tmp_path):
    with tfds.testing.mock_data(num_examples=12):
        result = prepare.prepare(
            PrepareConfig.build(
                source="tfds",
                tfds_name="cats_vs_dogs",
                output_dir=str(tmp_path),
                val_fraction=0.25,
            ),
            verbose=False,
        )
    assert result.data_dir == os.path.join(str(tmp_path), "tfds")
    assert result.stats["totals"]["kept"] + result.stats["totals"]["skipped"] == 12
    assert records.label_names(records.read_labels(result.data_dir)) == ["cat", "dog"]


def test_tfds_unknown_or_missing_name():
    with pytest.raises(UserError, match="list_builders"):
        get_source(PrepareConfig.build(source="tfds", tfds_name="no_such_landmarks_dataset"))
    with pytest.raises(UserError, match="--tfds_name is required"):
        get_source(PrepareConfig.build(source="tfds"))


def test_tfds_dataset_without_a_class_label_names_its_features():
    with tfds.testing.mock_data(num_examples=2), pytest.raises(UserError) as raised:
        get_source(PrepareConfig.build(source="tfds", tfds_name="celeb_a"))
    assert "one Image and one ClassLabel" in str(raised.value)
    assert "attributes: FeaturesDict" in str(raised.value)


def test_tfds_offline_download_says_where_to_put_a_copy(tmp_path, monkeypatch):
    def offline(self, *args, **kwargs):
        raise OSError("Failed to resolve 'storage.googleapis.com'")

    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", offline)
    config = PrepareConfig.build(source="tfds", tfds_name="mnist", tfds_data_dir=str(tmp_path))
    with pytest.raises(UserError) as raised:
        get_source(config)
    message = str(raised.value)
    assert "'mnist'" in message and "network" in message and "Failed to resolve" in message
    assert os.path.join(str(tmp_path), "mnist") in message


def test_tfds_real_prepared_dataset_and_unknown_split(tmp_path):
    # Not mocked: a dataset prepared on disk, read back by name like a user's copy. TFDS
    # 4.9.10 needs importlib_resources to build one (tensorflow/datasets#11212).
    pytest.importorskip("importlib_resources")
    tfds.testing.DummyMnist(data_dir=str(tmp_path)).download_and_prepare()
    config = PrepareConfig.build(
        source="tfds", tfds_name="dummy_mnist", tfds_data_dir=str(tmp_path)
    )
    source = get_source(config)
    assert len(_ids(source)) == 20 and source.info["tfds_name"] == "dummy_mnist/3.0.1"
    with pytest.raises(UserError, match="splits: test, train"):
        get_source(
            PrepareConfig.build(
                source="tfds",
                tfds_name="dummy_mnist",
                tfds_data_dir=str(tmp_path),
                tfds_split="validation",
            )
        )


# --- existing TFRecords --------------------------------------------------------------------

NAMES = ["Eiffel Tower", "Big Ben", "Colosseum"]  # stored labels 1, 2, 3


def _example(encoded: bytes, label: int | None, **strings: str) -> bytes:
    feature = {"image/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(value=[encoded]))}
    if label is not None:
        feature["image/class/label"] = tf.train.Feature(
            int64_list=tf.train.Int64List(value=[label])
        )
    for key, value in strings.items():
        feature[key.replace("__", "/")] = tf.train.Feature(
            bytes_list=tf.train.BytesList(value=[value.encode()])
        )
    example = tf.train.Example(features=tf.train.Features(feature=feature))
    return example.SerializeToString()


def _write(path, examples: list[bytes]) -> None:
    with tf.io.TFRecordWriter(str(path)) as writer:
        for example in examples:
            writer.write(example)


@pytest.fixture
def delf_shards(tmp_path) -> dict:
    """DELF-layout shards: 1-based labels, class text, ids or file names, one truncated shard.

    Returns {"dir", "good": {image id: class name}, "truncated": shard name, "kept_before_cut"}.
    """
    root = tmp_path / "delf"
    root.mkdir()
    good: dict[str, str] = {}
    shards: dict[str, list[bytes]] = {
        "train-00000-of-00003": [],
        "train-00001-of-00003": [],
        "validation-00000-of-00001.tfrecord": [],
    }
    for n in range(18):
        stored = 1 + n % 3
        text = NAMES[stored - 1]
        if n % 2:
            image_id = f"id{n:03d}"
            example = _example(jpeg_bytes(n), stored, image__id=image_id, image__class__text=text)
        else:
            image_id = f"photos/{n:03d}.jpg"
            example = _example(
                jpeg_bytes(n), stored, image__filename=image_id, image__class__text=text
            )
        good[image_id] = text
        shards[list(shards)[n % 3]].append(example)
    shards["validation-00000-of-00001.tfrecord"].append(_example(jpeg_bytes(99), 0))  # label 0
    shards["train-00001-of-00003"].append(_example(b"", None, image__id="no-label"))
    for name, examples in shards.items():
        _write(root / name, examples)
    # A shard cut short: its first two records are whole, the third is cut.
    truncated = "train-00002-of-00003"
    cut = [_example(jpeg_bytes(50 + i), 3, image__id=f"cut{i}") for i in range(3)]
    _write(root / truncated, cut)
    data = (root / truncated).read_bytes()
    (root / truncated).write_bytes(data[: len(data) - len(cut[-1]) // 2])
    good.update({"cut0": "Colosseum", "cut1": "Colosseum"})
    (root / "README.txt").write_text("not a shard")
    (root / ".train-00009-of-00010.inprogress").write_bytes(b"half-written by someone")
    return {"dir": str(root), "good": good, "truncated": truncated}


def _tfrecords_config(input_dir: str, **overrides) -> PrepareConfig:
    return PrepareConfig.build(
        **{"source": "tfrecords", "input_dir": input_dir, "tfrecords_label_offset": 1, **overrides}
    )


def test_tfrecords_source_reads_delf_shards(delf_shards):
    source = get_source(_tfrecords_config(delf_shards["dir"]))
    items = list(source.items())
    assert source.streaming and source.class_names == NAMES
    assert source.info["class_names_from"] == "the records"
    assert source.info["shards"] == [  # README.txt and the hidden in-progress file are not read
        "train-00000-of-00003",
        "train-00001-of-00003",
        "train-00002-of-00003",
        "validation-00000-of-00001.tfrecord",
    ]
    assert {item.image_id: item.class_name for item in items} == delf_shards["good"]
    assert [item.image_id for item in items] == _ids(source)  # the same on a second read
    for item in items[:3]:
        _check_decodes(item)
    reasons = dict(source.rejected)
    assert len(source.rejected) == 3, source.rejected  # each listed once over three reads
    assert "truncated record" in reasons[delf_shards["truncated"]]
    assert "after 2 records" in reasons[delf_shards["truncated"]]
    assert "negative" in reasons["validation-00000-of-00001.tfrecord#6"]
    assert "no image/class/label" in reasons["train-00001-of-00003#6"]


def test_tfrecords_names_from_a_label_map_or_the_label_numbers(delf_shards, tmp_path):
    bare = tmp_path / "bare"
    bare.mkdir()
    _write(bare / "train-00000-of-00001", [_example(jpeg_bytes(i), 5 + 2 * i) for i in range(3)])
    source = get_source(_tfrecords_config(str(bare)))
    assert source.class_names == ["4", "6", "8"]  # sparse labels, offset subtracted
    assert [item.image_id for item in source.items()] == [
        f"train-00000-of-00001#{i}" for i in range(3)
    ]

    (bare / "label_map.csv").write_text("label,name,landmark_id\n5,Hạ Long Bay,1001\n7,Huế,\n")
    source = get_source(_tfrecords_config(str(bare)))
    assert source.class_names == ["Hạ Long Bay", "Huế"]
    assert source.landmark_ids == {"Hạ Long Bay": "1001"}
    assert [item.class_name for item in source.items()] == ["Hạ Long Bay", "Huế"]
    assert source.rejected == [("train-00000-of-00001#2", "label 8 is not in label_map.csv")]

    labels = [{"index": i, "name": name, "landmark_id": ""} for i, name in enumerate("abc")]
    (bare / "labels.json").write_text(json.dumps(labels))
    source = get_source(_tfrecords_config(str(bare), tfrecords_label_offset=5))
    assert source.class_names == ["a", "b", "c"]
    assert [item.class_name for item in source.items()] == ["a", "c"]
    assert "label 4 is not in labels.json" in dict(source.rejected).values()


def test_tfrecords_without_shards(tmp_path):
    (tmp_path / "photo.jpg").write_bytes(jpeg_bytes(0))
    with pytest.raises(UserError) as raised:
        get_source(_tfrecords_config(str(tmp_path)))
    assert str(tmp_path) in str(raised.value) and "NNNNN-of-NNNNN" in str(raised.value)
    with pytest.raises(UserError, match="--input_dir is required"):
        get_source(_tfrecords_config(""))
    with pytest.raises(UserError, match="label,name"):
        _write(tmp_path / "train-00000-of-00001", [_example(jpeg_bytes(0), 1)])
        (tmp_path / "label_map.csv").write_text("id,class\n1,x\n")
        get_source(_tfrecords_config(str(tmp_path)))


def test_tfrecords_end_to_end_prepare_and_pipeline(delf_shards, tmp_path):
    result = prepare.prepare(
        _tfrecords_config(
            delf_shards["dir"], output_dir=str(tmp_path / "out"), name="delf", val_fraction=0.25
        ),
        verbose=False,
    )
    stats = result.stats
    assert stats["totals"]["kept"] == len(delf_shards["good"]) == 20
    assert stats["totals"]["train"] > stats["totals"]["val"] > 0
    assert records.label_names(records.read_labels(result.data_dir)) == NAMES
    skipped = {entry["file"] for entry in stats["skipped"]}
    assert delf_shards["truncated"] in skipped and len(skipped) == 3

    seen = []
    for split in records.SPLITS:
        dataset = pipeline.make_dataset(
            records.shard_pattern(result.data_dir, split),
            32,
            lambda x: x / 255.0,
            batch_size=4,
            training=False,
            with_ids=True,
        )
        for images, labels, ids in dataset:
            assert images.shape[1:] == (32, 32, 3)
            seen += [
                (i.decode(), NAMES[int(label)])
                for i, label in zip(ids.numpy(), labels, strict=True)
            ]
    assert dict(seen) == delf_shards["good"] and len(seen) == 20
