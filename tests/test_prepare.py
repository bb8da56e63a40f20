"""lmrec.prepare on messy folders: every file accounted for, shards that parse, atomic output."""

from __future__ import annotations

import json
import os

import pytest
import tensorflow as tf

from lmrec.config import PrepareConfig
from lmrec.data import prepare, records
from lmrec.data.sources import SourceItem
from lmrec.errors import UserError


def _read_examples(data_dir: str, split: str) -> list[dict]:
    pattern = records.shard_pattern(data_dir, split)
    examples = []
    for serialized in tf.data.TFRecordDataset(sorted(tf.io.gfile.glob(pattern))):
        parsed = records.parse_example(serialized)
        image = tf.io.decode_jpeg(parsed[records.ENCODED])
        examples.append(
            {
                "id": parsed[records.IMAGE_ID].numpy().decode(),
                "label": int(parsed[records.LABEL]),
                "shape": tuple(image.shape),
            }
        )
    return examples


def _prepare_folder(messy, tmp_path, **overrides):
    config = PrepareConfig.build(
        source="folder",
        input_dir=messy["root"],
        output_dir=str(tmp_path / "out"),
        name="messy",
        val_fraction=0.25,
        seed=3,
        **overrides,
    )
    return prepare.prepare(config, verbose=False)


def test_every_file_is_accounted_for(messy_folder, tmp_path):
    result = _prepare_folder(messy_folder, tmp_path)
    stats = result.stats
    examples = _read_examples(result.data_dir, "train") + _read_examples(result.data_dir, "val")
    kept = {e["id"] for e in examples}
    skipped = {entry["file"]: entry["reason"] for entry in stats["skipped"]}

    assert kept == set(messy_folder["good"])
    assert set(skipped) == set(messy_folder["bad"]) | set(messy_folder["ignored"])
    for path, word in {**messy_folder["bad"], **messy_folder["ignored"]}.items():
        assert word in skipped[path], (path, skipped[path])
    total_files = sum(len(files) for _, _, files in os.walk(messy_folder["root"]))
    assert len(kept) + len(skipped) == total_files == stats["totals"]["files_seen"]
    assert stats["totals"]["kept"] == len(kept)
    assert stats["dropped_classes"] == {"Empty Class": "no images"}


def test_labels_are_contiguous_and_named(messy_folder, tmp_path):
    result = _prepare_folder(messy_folder, tmp_path)
    with open(os.path.join(result.data_dir, records.LABELS_FILE), encoding="utf-8") as f:
        labels = json.load(f)
    assert [entry["name"] for entry in labels] == ["Eiffel Tower", "Vịnh Hạ Long"]
    assert [entry["index"] for entry in labels] == [0, 1]
    for example in _read_examples(result.data_dir, "train"):
        expected = messy_folder["good"][example["id"]]
        assert labels[example["label"]]["name"] == expected
        assert example["shape"][2] == 3


def test_split_is_stratified_seeded_and_keeps_training_images():
    items = [SourceItem(f"{c}/{i}", c) for c in "abc" for i in range({"a": 10, "b": 2, "c": 1}[c])]
    first = prepare.stratified_split(items, 0.5, seed=7)
    again = prepare.stratified_split(items, 0.5, seed=7)
    other = prepare.stratified_split(items, 0.5, seed=8)
    ids = lambda split: [item.image_id for item in split]  # noqa: E731
    assert ids(first["train"]) == ids(again["train"]) and ids(first["val"]) == ids(again["val"])
    assert set(ids(first["val"])) != set(ids(other["val"]))
    per_class = lambda split, c: sum(item.class_name == c for item in split)  # noqa: E731
    assert per_class(first["val"], "a") == 5 and per_class(first["train"], "a") == 5
    assert per_class(first["val"], "b") == 1 and per_class(first["train"], "b") == 1
    assert per_class(first["val"], "c") == 0 and per_class(first["train"], "c") == 1


def test_a_class_whose_training_images_are_all_bad_still_trains(tmp_path):
    from tests.conftest import jpeg_bytes

    root = tmp_path / "photos"
    for name in ("good", "unlucky"):
        (root / name).mkdir(parents=True)
    for i in range(6):
        (root / "good" / f"{i}.jpg").write_bytes(jpeg_bytes(i))
    # With val_fraction=0.5 and this seed "unlucky" has 2 val and 2 train candidates; make all but
    # one file unreadable so that whichever split it landed in, it must end up in train.
    for i in range(3):
        (root / "unlucky" / f"{i}.jpg").write_bytes(b"")
    (root / "unlucky" / "3.jpg").write_bytes(jpeg_bytes(99))
    config = PrepareConfig.build(
        source="folder",
        input_dir=str(root),
        output_dir=str(tmp_path / "out"),
        name="x",
        val_fraction=0.5,
        seed=0,
    )
    stats = prepare.prepare(config, verbose=False).stats
    unlucky = next(c for c in stats["classes"] if c["name"] == "unlucky")
    assert unlucky["train"] == 1 and unlucky["val"] == 0 and unlucky["skipped"] == 3


def test_an_all_bad_class_is_dropped_and_labels_stay_contiguous(tmp_path):
    from tests.conftest import jpeg_bytes

    root = tmp_path / "photos"
    for name in ("a_bad", "b_good", "c_good"):
        (root / name).mkdir(parents=True)
    (root / "a_bad" / "x.jpg").write_bytes(b"garbage")
    for name in ("b_good", "c_good"):
        for i in range(3):
            (root / name / f"{i}.jpg").write_bytes(jpeg_bytes(hash(name) % 1000 + i))
    config = PrepareConfig.build(
        source="folder",
        input_dir=str(root),
        output_dir=str(tmp_path / "out"),
        name="x",
        val_fraction=0.0,
    )
    result = prepare.prepare(config, verbose=False)
    labels = records.read_labels(result.data_dir)
    assert [entry["name"] for entry in labels] == ["b_good", "c_good"]
    assert result.stats["dropped_classes"] == {"a_bad": "no image could be decoded"}
    assert sorted({e["label"] for e in _read_examples(result.data_dir, "train")}) == [0, 1]


def test_large_photos_are_downscaled_and_small_jpegs_kept_byte_for_byte(tmp_path):
    from tests.conftest import jpeg_bytes

    root = tmp_path / "photos"
    for name in ("a", "b"):
        (root / name).mkdir(parents=True)
    small = jpeg_bytes(1, size=(64, 48))
    (root / "a" / "small.jpg").write_bytes(small)
    (root / "b" / "large.jpg").write_bytes(jpeg_bytes(2, size=(1000, 500)))
    config = PrepareConfig.build(
        source="folder",
        input_dir=str(root),
        output_dir=str(tmp_path / "out"),
        name="x",
        val_fraction=0.0,
        max_image_side=300,
    )
    result = prepare.prepare(config, verbose=False)
    stored = {}
    for serialized in tf.data.TFRecordDataset(
        tf.io.gfile.glob(records.shard_pattern(result.data_dir, "train"))
    ):
        parsed = records.parse_example(serialized)
        stored[parsed[records.IMAGE_ID].numpy().decode()] = parsed[records.ENCODED].numpy()
    assert stored["a/small.jpg"] == small
    assert tuple(tf.io.decode_jpeg(stored["b/large.jpg"]).shape) == (150, 300, 3)


def test_shards_roll_over_and_get_final_names(messy_folder, tmp_path):
    result = _prepare_folder(messy_folder, tmp_path, images_per_shard=3)
    names = sorted(os.listdir(result.data_dir))
    train = [n for n in names if n.startswith("train-")]
    assert train and all(n.endswith(f"-of-{len(train):05d}.tfrecord") for n in train)
    assert not [n for n in names if n.startswith(".")], names
    assert sum(len(_read_examples(result.data_dir, s)) for s in ("train", "val")) == len(
        messy_folder["good"]
    )


def test_existing_dataset_needs_overwrite_and_partials_are_cleaned(messy_folder, tmp_path):
    _prepare_folder(messy_folder, tmp_path)
    with pytest.raises(UserError, match="--overwrite"):
        _prepare_folder(messy_folder, tmp_path)
    leftover = tmp_path / "out" / ".messy.abc123.partial"
    leftover.mkdir()
    (leftover / "train-00000.inprogress").write_bytes(b"half")
    result = _prepare_folder(messy_folder, tmp_path, overwrite=True)
    assert not leftover.exists()
    assert prepare.is_prepared(result.data_dir)


def test_bad_input_dir_errors_name_the_flag(tmp_path):
    config = PrepareConfig.build(
        source="folder", input_dir=str(tmp_path / "nope"), output_dir=str(tmp_path)
    )
    with pytest.raises(UserError, match="--input_dir"):
        prepare.prepare(config, verbose=False)
    with pytest.raises(UserError, match="--source='flickr'.*demo, folder"):
        prepare.prepare(
            PrepareConfig.build(source="flickr", output_dir=str(tmp_path)), verbose=False
        )
    (tmp_path / "empty" / "some class").mkdir(parents=True)
    (tmp_path / "empty" / "some class" / "bad.jpg").write_bytes(b"x")
    config = PrepareConfig.build(
        source="folder", input_dir=str(tmp_path / "empty"), output_dir=str(tmp_path / "o")
    )
    with pytest.raises(UserError, match="No usable images"):
        prepare.prepare(config, verbose=False)
    assert not (tmp_path / "o" / "empty").exists()


def test_real_messy_photos(vn_landmarks, tmp_path):
    """The shared real photos: spaces and parentheses in names, WebP and PNG named .jpg."""
    config = PrepareConfig.build(
        source="folder",
        input_dir=str(vn_landmarks / "train"),
        output_dir=str(tmp_path),
        name="vn",
    )
    stats = prepare.prepare(config, verbose=False).stats
    files = sum(len(f) for _, _, f in os.walk(vn_landmarks / "train"))
    assert stats["totals"]["files_seen"] == files
    assert stats["totals"]["kept"] + stats["totals"]["skipped"] == files
    assert stats["num_classes"] == 5
    assert stats["totals"]["kept"] >= 200  # 213 photos, all readable once WebP/PNG are detected
    assert all(c["train"] > 0 and c["val"] > 0 for c in stats["classes"])


def test_large_jpegs_decode_at_reduced_scale_and_still_catch_truncation():
    """Pillow's draft mode (DCT scaling) for photos >= 2x --max_image_side: same output size,
    the original size still recorded, and a truncated file is still rejected."""
    import io

    import numpy as np
    from PIL import Image

    from lmrec.data import images

    gradient = np.linspace(0, 255, 2400)[None, :, None] * np.ones((1800, 1, 3))
    out = io.BytesIO()
    Image.fromarray(gradient.astype(np.uint8)).save(out, "JPEG", quality=90)
    data = out.getvalue()
    decoded = images.decode(data, "big.jpg", max_side=500)
    assert decoded.image.size == (600, 450)  # decoded at 1/4 scale, still >= 500 on the long side
    assert decoded.original_size == (2400, 1800)
    converted = images.convert(data, "big.jpg", max_side=500)
    assert (converted.width, converted.height) == (500, 375)
    assert (converted.original_width, converted.original_height) == (2400, 1800)
    full = np.asarray(images.fit_within(images.decode(data).image, 500), dtype=np.float32)
    drafted = np.asarray(Image.open(io.BytesIO(converted.jpeg)), dtype=np.float32)
    assert np.abs(full - drafted).mean() < 2.0  # same picture, not just the same size
    with pytest.raises(images.BadImage, match="truncated"):
        images.convert(data[: len(data) // 2], "cut.jpg", max_side=500)
