"""lmrec.evaluate with a gallery: softmax, knn and hybrid side by side, retrieval metrics,
the nearest gallery photos of the highest-loss photos, and --choose_threshold."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from lmrec import embeddings, evaluate, gallery, knn, recognizer, report
from lmrec.config import ClassifierConfig
from lmrec.data.sources import demo
from lmrec.errors import UserError
from lmrec.gallery import photos as gallery_photos
from tests.conftest import REPO, jpeg_bytes
from tests.tiny_model_dir import write_model_dir

ADDED = "Ponte Vecchio"


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Distractor photos, photos of a landmark the model never saw, and class folders
    holding that landmark and one trained class."""
    root = tmp_path_factory.mktemp("open_set_photos")
    (root / "distractors" / "street").mkdir(parents=True)
    for i in range(6):
        (root / "distractors" / "street" / f"d{i}.jpg").write_bytes(jpeg_bytes(700 + i))
    (root / "added").mkdir()
    for i in range(4):
        (root / "added" / f"p{i}.jpg").write_bytes(jpeg_bytes(300 + i, size=(48, 40)))
    classes = root / "classes"
    shutil.copytree(root / "added", classes / ADDED)
    (classes / demo.CLASS_NAMES[0]).mkdir()
    for i in range(3):
        encoded = demo.make_image(0, 4000 + i, 64, seed=5).encoded
        (classes / demo.CLASS_NAMES[0] / f"{i}.jpg").write_bytes(encoded)
    return root


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, demo_records, folders) -> str:
    """A tiny model with a gallery of its train split plus an added landmark."""
    model_dir = write_model_dir(str(tmp_path_factory.mktemp("open_set") / "model"), demo_records)
    gallery.build(model_dir, verbose=False)
    gallery.add(model_dir, ADDED, [str(folders / "added")], verbose=False)
    return model_dir


def _copy(model_dir: str, tmp_path) -> str:
    """A copy of the model_dir, for a test that writes open_set.json."""
    copy = str(tmp_path / "model")
    shutil.copytree(model_dir, copy, ignore=shutil.ignore_patterns("report", "logs"))
    return copy


def _page(result) -> str:
    with open(os.path.join(result.report_dir, evaluate.REPORT_HTML), encoding="utf-8") as f:
        return f.read()


def _in_unit_interval(value) -> bool:
    return value is not None and 0.0 <= value <= 1.0


def test_knn_evaluation_compares_the_classifiers_and_searches_the_gallery(model_dir, folders):
    result = evaluate.evaluate(
        model_dir,
        verbose=False,
        distractors=str(folders / "distractors"),
        classifier=ClassifierConfig(classifier="knn", knn_k=1),
    )
    summary = result.metrics
    classifiers = summary["classifiers"]
    assert list(classifiers) == ["softmax", "knn", "hybrid"]
    for entry in classifiers.values():
        for key in ("accuracy", "gap", "gap_without_distractors", "landmarks_rejected"):
            assert _in_unit_interval(entry[key]), key
        assert _in_unit_interval(entry["distractors_rejected"])
        curve = entry["coverage_curve"]
        assert 2 <= len(curve["coverage"]) <= evaluate.CURVE_POINTS
        assert curve["coverage"][-1] == 1.0 and all(0 <= p <= 1 for p in curve["precision"])
    # The evaluated classifier is knn: its column is the report's own accuracy.
    assert classifiers["knn"]["accuracy"] == pytest.approx(summary["accuracy"])
    assert summary["open_set"]["classifier"] == "knn"
    retrieval = summary["retrieval"]
    landmarks = summary["num_images"]
    assert retrieval["queries"] == landmarks
    for key in ("map_at_100", "recall_at_1", "recall_at_5"):
        assert _in_unit_interval(retrieval[key]), key
    assert retrieval["recall_at_5"] >= retrieval["recall_at_1"]
    # One neighbour voting: knn is right exactly when the nearest gallery photo is.
    assert classifiers["knn"]["accuracy"] == pytest.approx(retrieval["recall_at_1"])
    # The softmax column is the trained head alone: as a softmax evaluation says.
    softmax = evaluate.evaluate(
        model_dir, verbose=False, distractors=str(folders / "distractors")
    ).metrics
    assert classifiers["softmax"]["accuracy"] == pytest.approx(softmax["accuracy"])
    assert softmax["classifiers"]["knn"]["accuracy"] == pytest.approx(
        classifiers["knn"]["accuracy"]
    )
    page = _page(result)
    assert re.search(r"<th>softmax</th><th>knn</th><th>hybrid</th>", page)
    assert "mAP@100" in page
    thumbnails = re.findall(r'src="data:image/jpeg;base64,', page)
    neighbours = summary["highest_loss_neighbours"]
    assert len(neighbours) == min(evaluate.NEIGHBOUR_ROWS, landmarks + 6)
    # Each row: the photo and its NEIGHBOURS gallery photos, all readable here.
    assert len(thumbnails) == len(neighbours) * (1 + evaluate.NEIGHBOURS)
    loaded = gallery.load(model_dir)
    for row in neighbours:
        similarities = [n["similarity"] for n in row["neighbours"]]
        assert similarities == sorted(similarities, reverse=True)
        for near in row["neighbours"]:
            assert near["photo_id"] in loaded.photo_ids
            assert near["label"] in loaded.class_names()
    assert os.path.isfile(os.path.join(result.report_dir, "classifiers.png"))


def test_a_landmark_added_to_the_gallery_is_a_class_of_knn_and_hybrid(model_dir, folders):
    for name in ("knn", "hybrid"):
        result = evaluate.evaluate(
            model_dir,
            data=str(folders / "classes"),
            verbose=False,
            classifier=ClassifierConfig(classifier=name, knn_k=3),
        )
        per_class = {row["class"]: row for row in result.metrics["per_class"]}
        assert per_class[ADDED]["support"] == 4
        assert per_class[ADDED]["recall"] == 1.0, name  # its own photos are in the gallery
        assert len(result.metrics["confusion_matrix"]) == len(demo.CLASS_NAMES) + 1
    softmax = evaluate.evaluate(model_dir, data=str(folders / "classes"), verbose=False)
    assert ADDED not in {row["class"] for row in softmax.metrics["per_class"]}
    assert {"class": ADDED, "reason": "class unknown to the model"} in softmax.metrics["skipped"]


def test_choose_threshold_stores_the_best_score_and_later_runs_use_it(model_dir, folders, tmp_path):
    model_dir = _copy(model_dir, tmp_path)
    chosen = evaluate.evaluate(
        model_dir,
        verbose=False,
        distractors=str(folders / "distractors"),
        classifier=ClassifierConfig(classifier="hybrid"),
        choose_threshold=True,
        max_landmarks_rejected=0.05,
    )
    choice = recognizer.read_choice(model_dir)
    assert choice.classifier == "hybrid"
    assert choice.gallery_fingerprint in ("", gallery.load(model_dir).fingerprint)
    assert choice.model_fingerprint == embeddings.fingerprint(model_dir)
    scores = choice.measured["scores"]
    assert set(scores) == set(knn.OPEN_SET_SCORES.names())
    best = max(entry["distractors_rejected"] for entry in scores.values())
    assert scores[choice.score]["distractors_rejected"] == best
    assert scores[choice.score]["threshold"] == choice.threshold
    for entry in scores.values():
        assert entry["landmarks_rejected"] <= 0.05
    assert choice.measured["distractors"] == 6
    assert choice.measured["landmarks"] == chosen.metrics["num_images"]
    # The report of the choosing run already answers with the choice...
    open_set = chosen.metrics["open_set"]
    assert (open_set["score"], open_set["threshold"]) == (choice.score, choice.threshold)
    # ...and so does a later evaluation of the same classifier, rejecting the same photos.
    again = evaluate.evaluate(
        model_dir,
        verbose=False,
        distractors=str(folders / "distractors"),
        classifier=ClassifierConfig(classifier="hybrid"),
    ).metrics["open_set"]
    assert (again["score"], again["threshold"]) == (choice.score, choice.threshold)
    assert again["landmarks_rejected"] == pytest.approx(scores[choice.score]["landmarks_rejected"])
    assert again["distractors_rejected"] == pytest.approx(
        scores[choice.score]["distractors_rejected"]
    )


def test_without_a_gallery_there_is_no_side_by_side_and_knn_is_refused(
    demo_records, folders, tmp_path
):
    model_dir = write_model_dir(str(tmp_path / "model"), demo_records)
    with pytest.raises(UserError, match="lmrec.gallery build"):
        evaluate.evaluate(model_dir, verbose=False, classifier=ClassifierConfig("knn"))
    with pytest.raises(UserError, match="--choose_threshold needs --distractors"):
        evaluate.evaluate(model_dir, verbose=False, choose_threshold=True)
    result = evaluate.evaluate(
        model_dir,
        verbose=False,
        distractors=str(folders / "distractors"),
        choose_threshold=True,
    )
    assert "classifiers" not in result.metrics and "retrieval" not in result.metrics
    page = _page(result)
    assert 'id="classifiers"' in page and "lmrec.gallery build" in page
    assert "data:image/jpeg" not in page
    choice = recognizer.read_choice(model_dir)
    assert set(choice.measured["scores"]) == {"top_probability", "margin"}
    assert choice.classifier == "softmax" and choice.gallery_fingerprint == ""


@pytest.mark.slow
def test_command_line_chooses_the_threshold_of_the_classifier_given(
    model_dir, folders, tmp_path, env_for_subprocess
):
    model_dir = _copy(model_dir, tmp_path)
    command = [
        sys.executable,
        "-m",
        "lmrec.evaluate",
        f"--model_dir={model_dir}",
        f"--distractors={folders / 'distractors'}",
        "--classifier=knn",
        "--knn_k=5",
        "--choose_threshold",
        "--max_landmarks_rejected=0.1",
    ]
    done = subprocess.run(command, cwd=REPO, env=env_for_subprocess, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "* " in done.stderr and "distractors rejected" in done.stderr
    choice = recognizer.read_choice(model_dir)
    assert (choice.classifier, choice.knn_k) == ("knn", 5)
    assert choice.measured["max_landmarks_rejected"] == 0.1
    written = json.load(open(os.path.join(model_dir, "report", "metrics.json")))
    assert written["open_set"]["score"] == choice.score
    assert np.isclose(written["open_set"]["threshold"], choice.threshold)


def test_an_unreadable_gallery_photo_is_a_placeholder(model_dir, folders, tmp_path):
    real = str(folders / "added" / "p0.jpg")
    (tmp_path / "broken.jpg").write_bytes(b"not a photo")
    broken, missing = str(tmp_path / "broken.jpg"), str(tmp_path / "moved.jpg")
    loaded = gallery.load(model_dir)
    record = next(i for i in loaded.photo_ids if not os.path.isabs(i))
    found = gallery_photos.photo_thumbnails(model_dir, [real, broken, missing, record, "gone-1"])
    assert found[broken] is None and found[missing] is None and found["gone-1"] is None
    for photo_id in (real, record):  # an added file, and a record of the train shards
        with Image.open(io.BytesIO(found[photo_id])) as image:
            assert image.format == "JPEG" and max(image.size) <= gallery_photos.THUMBNAIL_SIDE
    row = {
        "id": "val/1",
        "image": found[real],
        "true": "tower",
        "predicted": "dome",
        "confidence": 0.9,
        "neighbours": [
            {"photo_id": missing, "label": "dome", "similarity": 0.8, "image": None},
            {"photo_id": record, "label": "tower", "similarity": 0.7, "image": found[record]},
        ],
    }
    summary = evaluate.evaluate(model_dir, verbose=False).metrics
    page = report.render(summary, {}, "tiny", [row])
    assert page.count("photo unavailable") == 1
    assert page.count("data:image/jpeg;base64,") == 2
    assert "similarity 0.800" in page and "similarity 0.700" in page
