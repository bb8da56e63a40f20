"""lmrec.gallery: build (resumable), add, remove, list, load, and the command line."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from lmrec import embeddings, gallery, metrics, run_files
from lmrec.data import prepare
from lmrec.errors import UserError
from lmrec.gallery import store
from tests.conftest import REPO, jpeg_bytes
from tests.tiny_model_dir import write_model_dir

CHUNK = 48  # photos per build segment: the demo's train split makes several


@pytest.fixture(scope="module")
def built(tmp_path_factory, demo_records) -> str:
    """A model_dir with a gallery of its train split; tests that change it copy it first."""
    model_dir = write_model_dir(str(tmp_path_factory.mktemp("gallery") / "model"), demo_records)
    gallery.build(model_dir, chunk_size=CHUNK, verbose=False)
    return model_dir


@pytest.fixture
def model_dir(built, tmp_path) -> str:
    copy = str(tmp_path / "model")
    shutil.copytree(built, copy)
    return copy


def _index(model_dir: str) -> dict:
    with open(os.path.join(model_dir, "gallery", store.INDEX_FILE), encoding="utf-8") as f:
        return json.load(f)


def _photos(folder, count: int, first_seed: int = 100) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / f"photo_{i}.jpg"
        path.write_bytes(jpeg_bytes(first_seed + i, size=(40 + i, 36)))
        paths.append(str(path))
    return paths


def test_build_embeds_every_train_photo_under_its_class(built, demo_records):
    stats = prepare.read_stats(demo_records)
    trained = run_files.load(built)
    found = gallery.load(built)
    total = stats["totals"]["train"]
    assert found.embeddings.dtype == np.float16
    assert found.embeddings.shape == (total, embeddings.embedding_dimension(trained))
    norms = np.linalg.norm(found.embeddings.astype(np.float32), axis=1)
    np.testing.assert_allclose(norms, 1.0, atol=2e-3)
    assert found.label_ids.dtype == np.int32 and len(set(found.photo_ids)) == total
    assert found.class_names() == trained.class_names  # every class has train photos
    assert set(found.origins()) == {"trained"} and found.distractor_id is None
    assert found.fingerprint == embeddings.fingerprint(built)
    counts = np.bincount(found.label_ids, minlength=len(trained.class_names))
    assert [e["count"] for e in gallery.list_labels(built)] == counts.tolist()
    assert all(e["origin"] == "trained" for e in gallery.list_labels(built))
    index = _index(built)
    assert [s["count"] for s in index["segments"]][:-1] == [CHUNK] * (-(-total // CHUNK) - 1)
    assert not os.path.exists(os.path.join(built, gallery.WORK_DIR))
    # A photo's gallery row is its embedding, label and id from the train shards.
    source = gallery.held_out.train_data(trained, "", 32)
    vectors, labels, ids = embeddings.embed_dataset(trained, source.dataset)
    row = {photo_id: i for i, photo_id in enumerate(found.photo_ids)}
    order = [row[i] for i in ids]
    np.testing.assert_allclose(found.embeddings[order], vectors, atol=2e-3)
    np.testing.assert_array_equal(found.label_ids[order], labels)


def test_a_killed_build_resumes_from_its_finished_chunks(
    built, tmp_path, demo_records, monkeypatch
):
    model_dir = write_model_dir(str(tmp_path / "model"), demo_records)
    embedded = []
    embed_batches = embeddings.embed_batches

    def counting(*args, **kwargs):
        for batch in embed_batches(*args, **kwargs):
            embedded.append(len(batch[0]))
            yield batch

    monkeypatch.setattr(embeddings, "embed_batches", counting)
    write_segment = store.write_segment

    def killed_after_one(directory, name, *args, **kwargs):
        if name != "train-00000":
            raise KeyboardInterrupt("killed")
        return write_segment(directory, name, *args, **kwargs)

    monkeypatch.setattr(store, "write_segment", killed_after_one)
    with pytest.raises(KeyboardInterrupt):
        gallery.build(model_dir, chunk_size=CHUNK, verbose=False)
    assert not os.path.exists(os.path.join(model_dir, "gallery"))
    assert sorted(os.listdir(os.path.join(model_dir, gallery.WORK_DIR, "segments"))) == [
        "train-00000.npz"
    ]
    monkeypatch.setattr(store, "write_segment", write_segment)
    embedded.clear()
    result = gallery.build(model_dir, chunk_size=CHUNK, verbose=False)
    assert result.resumed_photos == CHUNK
    assert sum(embedded) == result.photos - CHUNK  # the finished chunk was not embedded again
    resumed, whole = gallery.load(model_dir), gallery.load(built)
    assert resumed.photo_ids == whole.photo_ids
    np.testing.assert_array_equal(resumed.label_ids, whole.label_ids)
    # Batches after the skipped photos are grouped differently, which can move a float32
    # sum by an ulp and so its float16 rounding.
    np.testing.assert_allclose(resumed.embeddings, whole.embeddings, atol=1e-3)


def test_add_a_landmark_from_a_folder_with_a_corrupt_photo(model_dir, tmp_path):
    before = gallery.load(model_dir)
    folder = tmp_path / "Tháp Nhạn"
    paths = _photos(folder, 4)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff" + b"\0" * 300)
    result = gallery.add(model_dir, "Tháp Nhạn", [str(folder)], verbose=False)
    assert (result.label, result.added, result.already_present) == ("Tháp Nhạn", 4, 0)
    assert [f["file"] for f in result.failures] == [str(folder / "broken.jpg")]
    listed = {e["name"]: e for e in gallery.list_labels(model_dir)}
    assert listed["Tháp Nhạn"] == {"name": "Tháp Nhạn", "count": 4, "origin": "added"}
    after = gallery.load(model_dir)
    new = after.class_names().index("Tháp Nhạn")
    rows = np.flatnonzero(after.label_ids == new)
    assert sorted(after.photo_ids[i] for i in rows) == sorted(paths)
    direct = embeddings.embed(model_dir, paths, verbose=False)
    by_id = dict(zip(direct.ids, direct.embeddings, strict=True))
    for i in rows:
        np.testing.assert_allclose(after.embeddings[i], by_id[after.photo_ids[i]], atol=2e-3)
    # The trained rows are untouched and keep their label indices.
    assert after.class_names()[: len(before.labels)] == before.class_names()
    np.testing.assert_array_equal(after.embeddings[: len(before.photo_ids)], before.embeddings)
    np.testing.assert_array_equal(after.label_ids[: len(before.photo_ids)], before.label_ids)


def test_adding_the_same_photos_twice_adds_them_once(model_dir, tmp_path):
    paths = _photos(tmp_path / "new", 3)
    gallery.add(model_dir, "New Bridge", paths[:2], verbose=False)
    segments = _index(model_dir)["segments"]
    again = gallery.add(model_dir, "New Bridge", paths[:2], verbose=False)
    assert (again.added, again.already_present) == (0, 2)
    assert _index(model_dir)["segments"] == segments
    more = gallery.add(model_dir, "New Bridge", [str(tmp_path / "new")], verbose=False)
    assert (more.added, more.already_present) == (1, 2)
    assert {e["name"]: e["count"] for e in gallery.list_labels(model_dir)}["New Bridge"] == 3
    # The same photo under another label is another entry.
    trained_name = gallery.list_labels(model_dir)[0]["name"]
    assert gallery.add(model_dir, trained_name, paths[:1], verbose=False).added == 1
    entry = gallery.list_labels(model_dir)[0]
    assert entry["origin"] == "trained"  # more photos of a known landmark stay "trained"


def test_distractors_go_under_no_landmark(model_dir, tmp_path):
    paths = _photos(tmp_path / "street", 3, first_seed=300)
    gallery.add(model_dir, "", [str(tmp_path / "street")], distractors=True, verbose=False)
    found = gallery.load(model_dir)
    assert found.distractor_id is not None
    assert found.labels[found.distractor_id].name == gallery.DISTRACTOR_LABEL
    assert found.labels[found.distractor_id].origin == "distractor"
    rows = np.flatnonzero(found.label_ids == found.distractor_id)
    assert sorted(found.photo_ids[i] for i in rows) == sorted(paths)
    votes = found.vote_labels()
    assert (votes[rows] == metrics.NO_LANDMARK).all()
    np.testing.assert_array_equal(np.delete(votes, rows), np.delete(found.label_ids, rows))
    with pytest.raises(UserError, match="either --label or --distractors"):
        gallery.add(model_dir, "Somewhere", paths, distractors=True, verbose=False)
    with pytest.raises(UserError, match="--distractors"):
        gallery.add(model_dir, gallery.DISTRACTOR_LABEL, paths, verbose=False)


def test_remove_rewrites_only_the_segments_holding_the_label(model_dir, tmp_path):
    trained_segments = _index(model_dir)["segments"]
    gallery.add(model_dir, "Gone Soon", _photos(tmp_path / "gone", 2), verbose=False)
    gallery.add(model_dir, "Stays", _photos(tmp_path / "stays", 2, first_seed=200), verbose=False)
    added = [s["name"] for s in _index(model_dir)["segments"][len(trained_segments) :]]
    assert gallery.remove(model_dir, "Gone Soon", verbose=False) == 2
    index = _index(model_dir)
    assert index["segments"][: len(trained_segments)] == trained_segments
    assert [s["name"] for s in index["segments"][len(trained_segments) :]] == added[1:]
    files = sorted(os.listdir(os.path.join(model_dir, "gallery", "segments")))
    assert files == sorted(s["name"] + ".npz" for s in index["segments"])
    names = [e["name"] for e in gallery.list_labels(model_dir)]
    assert "Gone Soon" not in names and "Stays" in names
    found = gallery.load(model_dir)
    assert len(found.photo_ids) == sum(e["count"] for e in gallery.list_labels(model_dir))
    # A trained class shares its segments with others: those are rewritten without it.
    first = gallery.list_labels(model_dir)[0]
    gallery.remove(model_dir, first["name"], verbose=False)
    after = gallery.load(model_dir)
    assert first["name"] not in after.class_names()
    assert len(after.photo_ids) == len(found.photo_ids) - first["count"]
    with pytest.raises(UserError, match="did you mean 'Stays'"):
        gallery.remove(model_dir, "Stay", verbose=False)


def test_a_gallery_of_other_weights_is_refused_naming_both(model_dir, demo_records, tmp_path):
    old = embeddings.fingerprint(model_dir)
    other = write_model_dir(str(tmp_path / "other"), demo_records, seed=7)
    shutil.copyfile(
        os.path.join(other, run_files.BEST_WEIGHTS), os.path.join(model_dir, run_files.BEST_WEIGHTS)
    )
    new = embeddings.fingerprint(model_dir)
    with pytest.raises(UserError, match="another model") as refused:
        gallery.load(model_dir)
    assert old in str(refused.value) and new in str(refused.value)
    assert "python -m lmrec.gallery build" in str(refused.value)
    with pytest.raises(UserError, match=new):
        gallery.add(model_dir, "X", _photos(tmp_path / "x", 1), verbose=False)
    assert gallery.list_labels(model_dir)  # listing needs no matching weights


def test_a_rebuild_by_retrained_weights_carries_the_added_photos(model_dir, demo_records, tmp_path):
    added = _photos(tmp_path / "added", 3)
    gallery.add(model_dir, "Tháp Nhạn", added, verbose=False)
    street = _photos(tmp_path / "street", 2, first_seed=300)
    gallery.add(model_dir, "", street, distractors=True, verbose=False)
    trained_name = gallery.list_labels(model_dir)[1]["name"]
    more = _photos(tmp_path / "more", 1, first_seed=400)
    gallery.add(model_dir, trained_name, more, verbose=False)
    os.remove(added[2])
    other = write_model_dir(str(tmp_path / "other"), demo_records, seed=7)
    shutil.copyfile(
        os.path.join(other, run_files.BEST_WEIGHTS), os.path.join(model_dir, run_files.BEST_WEIGHTS)
    )
    result = gallery.build(model_dir, chunk_size=CHUNK, verbose=False)
    assert result.carried_photos == 5
    assert [entry["file"] for entry in result.skipped] == [added[2]]
    listed = {entry["name"]: entry for entry in gallery.list_labels(model_dir)}
    assert listed["Tháp Nhạn"] == {"name": "Tháp Nhạn", "count": 2, "origin": "added"}
    assert listed[gallery.DISTRACTOR_LABEL]["count"] == 2
    assert listed[trained_name]["origin"] == "trained"
    found = gallery.load(model_dir)  # the new fingerprint
    assert found.fingerprint == embeddings.fingerprint(model_dir)
    direct = embeddings.embed(model_dir, added[:2] + street + more, verbose=False)
    by_id = dict(zip(found.photo_ids, found.embeddings, strict=True))
    for path, vector in zip(direct.ids, direct.embeddings, strict=True):
        np.testing.assert_allclose(by_id[path], vector, atol=2e-3)
    label_of = dict(zip(found.photo_ids, found.label_ids, strict=True))
    assert found.labels[label_of[more[0]]].name == trained_name
    assert result.photos == len(found.photo_ids) == sum(e["count"] for e in listed.values())


def test_no_gallery_says_how_to_build_one(tmp_path, demo_records):
    model_dir = write_model_dir(str(tmp_path / "model"), demo_records)
    for call in (gallery.load, gallery.list_labels):
        with pytest.raises(UserError, match=r"no gallery; build it first: python -m lmrec.gallery"):
            call(model_dir)
    with pytest.raises(UserError, match="no gallery"):
        gallery.add(model_dir, "X", _photos(tmp_path / "x", 1), verbose=False)


@pytest.mark.slow
def test_the_command_line_lists_labels_and_rejects_unknown_commands(built, env_for_subprocess):
    def run(*args):
        return subprocess.run(
            [sys.executable, "-m", "lmrec.gallery", *args],
            capture_output=True,
            text=True,
            env=env_for_subprocess,
            cwd=REPO,
            timeout=300,
        )

    listed = run("list", f"--model_dir={built}")
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert lines[0].split() == ["label", "count", "origin"]
    for entry, line in zip(gallery.list_labels(built), lines[1:-1], strict=True):
        assert line.split() == [*entry["name"].split(), str(entry["count"]), "trained"]
    assert lines[-1].split()[:2] == ["total", str(len(gallery.load(built).photo_ids))]
    wrong = run("lsit", f"--model_dir={built}")
    assert wrong.returncode == 2
    assert "Unknown gallery command 'lsit' (did you mean 'list'?)" in wrong.stderr
