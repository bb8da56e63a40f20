"""--source=gldv2 on a fake GLDv2 tree: selections, names, bad files, parallel, Beam, resume."""

from __future__ import annotations

import json
import os

import pytest
import tensorflow as tf

from lmrec.config import PrepareConfig
from lmrec.data import pipeline, prepare, records, shards, sources
from lmrec.data.sources import gldv2
from lmrec.errors import UserError
from tests.conftest import jpeg_bytes

# Trains, exports or runs commands: left out by `pytest -m "not slow"`.
pytestmark = pytest.mark.slow

# landmark id -> number of images listed in train.csv. Ids are not contiguous; 1001 has one
# image; 300 has no category name. Three of 58's images are missing, empty and corrupt.
COUNTS = {"7": 6, "42": 4, "58": 8, "300": 3, "1001": 1, "77777": 5}
NAMES = {
    "7": "http://commons.wikimedia.org/wiki/Category:Eiffel_Tower",
    "42": "http://commons.wikimedia.org/wiki/Category:Ha_Long_Bay",
    "58": "http://commons.wikimedia.org/wiki/Category:Caf%C3%A9_de_Flore",
    "1001": "http://commons.wikimedia.org/wiki/Category:Big_Ben",
    "77777": "http://commons.wikimedia.org/wiki/Category:Golden_Gate_Bridge",
}


def _image_id(landmark: str, index: int) -> str:
    return f"{int(landmark):08x}{index:08x}"


@pytest.fixture(scope="module")
def fake_gldv2(tmp_path_factory):
    root = tmp_path_factory.mktemp("gldv2")
    rows = ["id,url,landmark_id"]
    bad = {}
    seed = 0
    for landmark, count in COUNTS.items():
        for index in range(count):
            image_id = _image_id(landmark, index)
            rows.append(f"{image_id},https://example.org/{image_id}.jpg,{landmark}")
            path = gldv2.image_path(str(root), image_id)
            if landmark == "58" and index == 0:
                bad[image_id] = "missing"
                continue
            os.makedirs(os.path.dirname(path), exist_ok=True)
            seed += 1
            data = jpeg_bytes(seed, size=(40 + 8 * index, 32))
            if landmark == "58" and index == 1:
                data, bad[image_id] = b"", "empty"
            if landmark == "58" and index == 2:
                data, bad[image_id] = data[: len(data) // 3], "truncated"
            with open(path, "wb") as f:
                f.write(data)
    rows.insert(5, "not-a-row")
    rows.insert(9, "../../etc/passwd,https://x,7")
    (root / "train.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    clean = ["landmark_id,images"]
    for landmark, count in COUNTS.items():
        ids = " ".join(_image_id(landmark, i) for i in range(count) if i % 2 == 0)
        clean.append(f"{landmark},{ids}")
    (root / "train_clean.csv").write_text("\n".join(clean) + "\n", encoding="utf-8")
    categories = ["landmark_id,category"] + [f"{k},{v}" for k, v in NAMES.items()]
    (root / "train_label_to_category.csv").write_text("\n".join(categories) + "\n")
    return {"root": str(root), "bad": bad}


def _config(fake, tmp_path, **overrides) -> PrepareConfig:
    values = dict(
        source="gldv2",
        gldv2_dir=fake["root"],
        output_dir=str(tmp_path / "out"),
        name="gld",
        val_fraction=0.3,
        seed=5,
        images_per_shard=4,
        num_workers=1,
    )
    values.update(overrides)
    return PrepareConfig.build(**values)


def _select(config: PrepareConfig) -> gldv2.Selection:
    return gldv2.select(sources.options_of(config), config.seed)


def _examples(data_dir: str) -> dict[str, tuple[str, int, bytes]]:
    """image id -> (split, label, encoded bytes) over every shard."""
    found = {}
    for split in records.SPLITS:
        for path in sorted(tf.io.gfile.glob(records.shard_pattern(data_dir, split))):
            for serialized in tf.data.TFRecordDataset(path):
                parsed = records.parse_example(serialized)
                image_id = parsed[records.IMAGE_ID].numpy().decode()
                assert image_id not in found, f"{image_id} written twice"
                found[image_id] = (
                    split,
                    int(parsed[records.LABEL]),
                    parsed[records.ENCODED].numpy(),
                )
    return found


@pytest.mark.parametrize(
    "flags, expected",
    [
        ({}, {"7": 6, "42": 4, "58": 8, "300": 3, "1001": 1, "77777": 5}),
        ({"min_images_per_class": 4}, {"7": 6, "42": 4, "58": 8, "77777": 5}),
        ({"min_images_per_class": 4, "num_classes": 2}, {"7": 6, "58": 8}),
        (
            {"min_images_per_class": 2, "max_images_per_class": 3},
            {"7": 3, "42": 3, "58": 3, "300": 3, "77777": 3},
        ),
        ({"classes": "1001,42", "num_classes": 1}, {"42": 4, "1001": 1}),
        (
            {"gldv2_csv": "train_clean", "min_images_per_class": 2},
            {"7": 3, "42": 2, "58": 4, "300": 2, "77777": 3},
        ),
    ],
)
def test_selections_count_exactly(fake_gldv2, tmp_path, flags, expected):
    selection = _select(_config(fake_gldv2, tmp_path, **flags))
    assert {k: len(v) for k, v in selection.images.items()} == expected
    funnel = selection.info["classes_after_each_filter"]
    assert funnel["in_csv"] == 6 and list(funnel.values())[-1] == len(expected)
    if flags.get("max_images_per_class"):
        again = _select(_config(fake_gldv2, tmp_path, **flags))
        other = _select(_config(fake_gldv2, tmp_path, seed=6, **flags))
        assert again.images == selection.images
        assert other.images != selection.images  # the cap is a seeded sample


def test_random_class_selection_is_seeded(fake_gldv2, tmp_path):
    picks = {
        seed: sorted(
            _select(
                _config(fake_gldv2, tmp_path, num_classes=3, class_selection="random", seed=seed)
            ).images
        )
        for seed in range(6)
    }
    assert all(len(p) == 3 for p in picks.values())
    assert len({tuple(p) for p in picks.values()}) > 1
    assert picks[0] == sorted(
        _select(
            _config(fake_gldv2, tmp_path, num_classes=3, class_selection="random", seed=0)
        ).images
    )


def test_malformed_rows_are_counted_and_listed(fake_gldv2, tmp_path):
    selection = _select(_config(fake_gldv2, tmp_path))
    assert selection.malformed_count == 2
    assert all("malformed CSV row" in reason for _, reason in selection.malformed)
    assert {where.split(":")[0] for where, _ in selection.malformed} == {"train.csv"}


def test_prepare_names_counts_and_bad_files(fake_gldv2, tmp_path):
    result = prepare.prepare(_config(fake_gldv2, tmp_path), verbose=False)
    stats = result.stats
    labels = records.read_labels(result.data_dir)
    assert [(e["name"], e["landmark_id"]) for e in labels] == [
        ("Eiffel_Tower", "7"),
        ("Ha_Long_Bay", "42"),
        ("Café_de_Flore", "58"),
        ("landmark_300", "300"),
        ("Big_Ben", "1001"),
        ("Golden_Gate_Bridge", "77777"),
    ]
    examples = _examples(result.data_dir)
    good = sum(COUNTS.values()) - len(fake_gldv2["bad"])
    assert len(examples) == stats["totals"]["kept"] == good
    reasons = {entry["file"]: entry["reason"] for entry in stats["skipped"]}
    bad = fake_gldv2["bad"]
    missing_id = next(i for i, why in bad.items() if why == "missing")
    assert (
        "missing"
        in reasons[
            os.path.relpath(gldv2.image_path(fake_gldv2["root"], missing_id), fake_gldv2["root"])
        ]
    )
    for image_id, why in bad.items():
        if why != "missing":
            assert why in reasons[image_id], reasons
    assert sum("malformed CSV row" in r for r in reasons.values()) == 2
    # Every class keeps training images, including the one-image class; labels are contiguous.
    for entry in stats["classes"]:
        assert entry["train"] >= 1, entry
    train_labels = {label for split, label, _ in examples.values() if split == "train"}
    assert train_labels == set(range(len(labels)))
    assert stats["source_info"]["missing_images"] == 1
    assert stats["source_info"]["classes_after_each_filter"] == {
        "in_csv": 6,
        "min_images_per_class": 6,
    }
    assert (
        stats["image_sizes"]
        and os.path.getsize(os.path.join(result.data_dir, "stats.png")) > 10_000
    )


def test_shards_feed_make_dataset(fake_gldv2, tmp_path):
    result = prepare.prepare(_config(fake_gldv2, tmp_path, val_fraction=0.0), verbose=False)
    dataset = pipeline.make_dataset(
        records.shard_pattern(result.data_dir, "train"),
        image_size=32,
        preprocess=lambda x: x,
        batch_size=4,
        training=False,
    )
    seen = 0
    for images, labels in dataset:
        assert images.shape[1:] == (32, 32, 3)
        seen += int(labels.shape[0])
    assert seen == result.stats["totals"]["train"]


def test_worker_processes_and_beam_write_the_same_examples(fake_gldv2, tmp_path):
    local = prepare.prepare(
        _config(fake_gldv2, tmp_path, name="local", num_workers=2), verbose=False
    )
    beam = prepare.prepare(_config(fake_gldv2, tmp_path, name="beam", runner="beam"), verbose=False)
    one = prepare.prepare(_config(fake_gldv2, tmp_path, name="one", num_workers=1), verbose=False)
    assert _examples(local.data_dir) == _examples(beam.data_dir) == _examples(one.data_dir)
    assert sorted(os.listdir(local.data_dir)) == sorted(os.listdir(beam.data_dir))
    assert local.stats["classes"] == beam.stats["classes"]


class _Killed(Exception):
    pass


def test_a_killed_prepare_resumes_with_its_finished_shards(fake_gldv2, tmp_path, monkeypatch):
    real = shards.write_shard
    calls = []
    resumed = False

    def dies_on_third(spec, options):
        calls.append(spec.name)
        if len(calls) == 3 and not resumed:
            raise _Killed  # stands for a kill between two shards
        return real(spec, options)

    monkeypatch.setattr(shards, "write_shard", dies_on_third)
    config = _config(fake_gldv2, tmp_path)
    with pytest.raises(_Killed):
        prepare.prepare(config, verbose=False)
    work = os.path.join(config.output_dir, ".gld.inprogress")
    assert len(shards.finished_results(work)) == 2
    assert not os.path.exists(os.path.join(config.output_dir, "gld"))

    calls.clear()
    resumed = True
    result = prepare.prepare(config, verbose=False)
    total_shards = sum(len(names) for names in result.stats["shards"].values())
    assert len(calls) == total_shards - 2  # the two finished shards were not written again
    assert not os.path.exists(work)
    monkeypatch.setattr(shards, "write_shard", real)
    fresh = prepare.prepare(_config(fake_gldv2, tmp_path, name="fresh"), verbose=False)
    assert _examples(result.data_dir) == _examples(fresh.data_dir)


def test_a_changed_plan_starts_over(fake_gldv2, tmp_path):
    config = _config(fake_gldv2, tmp_path)
    work = os.path.join(config.output_dir, ".gld.inprogress")
    os.makedirs(work)
    with open(os.path.join(work, "plan.json"), "w") as f:
        json.dump({"fingerprint": "another plan"}, f)
    with open(os.path.join(work, "train-00000-of-00009.tfrecord"), "wb") as f:
        f.write(b"stale")
    result = prepare.prepare(config, verbose=False)
    assert "train-00000-of-00009.tfrecord" not in os.listdir(result.data_dir)
    assert len(_examples(result.data_dir)) == result.stats["totals"]["kept"]


def test_bad_gldv2_flags_are_clear(fake_gldv2, tmp_path):
    with pytest.raises(UserError, match="--gldv2_dir"):
        _select(PrepareConfig.build(source="gldv2"))
    with pytest.raises(UserError, match="train.csv is missing.*download_gldv2"):
        _select(PrepareConfig.build(source="gldv2", gldv2_dir=str(tmp_path)))
    with pytest.raises(UserError, match="--classes.*999"):
        _select(_config(fake_gldv2, tmp_path, classes="7,999"))
    with pytest.raises(UserError, match="No landmark passes.*largest class in the CSV has 8"):
        _select(_config(fake_gldv2, tmp_path, min_images_per_class=50))
    with pytest.raises(UserError, match="--class_selection"):
        _select(_config(fake_gldv2, tmp_path, class_selection="biggest"))
    with pytest.raises(UserError, match="--runner"):
        prepare.prepare(_config(fake_gldv2, tmp_path, runner="spark"), verbose=False)


def test_a_landmark_with_tens_of_thousands_of_photos_fits_in_one_csv_row(tmp_path):
    ids = [f"{index:016x}" for index in range(12_000)]  # one field of about 200 KB
    (tmp_path / "train_clean.csv").write_text(
        "landmark_id,images\n" + f"7,{' '.join(ids)}\n" + "8,ffffffffffffffff\n", encoding="utf-8"
    )
    config = PrepareConfig.build(source="gldv2", gldv2_dir=str(tmp_path), gldv2_csv="train_clean")
    selection = _select(config)
    assert {k: len(v) for k, v in selection.images.items()} == {"7": 12_000, "8": 1}
