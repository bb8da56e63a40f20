"""The evaluation report: every section with real embedded figures, distractors, rejection."""

from __future__ import annotations

import base64
import csv
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

from lmrec import evaluate, metrics, report, run_files
from lmrec.data.sources import demo
from lmrec.errors import UserError
from tests.conftest import REPO

# Trains, exports or runs commands: left out by `pytest -m "not slow"`.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained(trained_demo):
    return run_files.load(trained_demo.model_dir)


@pytest.fixture(scope="module")
def photo_folders(tmp_path_factory):
    """Demo photos of three classes (seed 5, unseen in training) and noise distractors."""
    root = tmp_path_factory.mktemp("evaluate")
    for label in (0, 3, 6):
        folder = root / "landmarks" / demo.CLASS_NAMES[label]
        folder.mkdir(parents=True)
        for i in range(4):
            (folder / f"{i}.jpg").write_bytes(demo.make_image(label, 3000 + i, 100, seed=5).encoded)
    rng = np.random.default_rng(0)
    for i, where in enumerate(["a", "a", "b/c", "b/c", "b/c"]):
        folder = root / "distractors" / where
        folder.mkdir(parents=True, exist_ok=True)
        noise = rng.integers(0, 255, (80, 120, 3), dtype=np.uint8)
        Image.fromarray(noise).save(folder / f"indoor shot {i}.png")
    (root / "distractors" / "a" / "empty.jpg").write_bytes(b"")
    return root


def _evaluate(trained_demo, trained, photo_folders, **options):
    """evaluate on the landmark photos of photo_folders, with the loaded model."""
    return evaluate.evaluate(
        trained_demo.model_dir,
        data=str(photo_folders / "landmarks"),
        verbose=False,
        trained=trained,
        **options,
    )


def _embedded_pngs(page: str) -> list[Image.Image]:
    found = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    return [Image.open(io.BytesIO(base64.b64decode(data))) for data in found]


def test_report_html_has_every_section_with_valid_images(trained_demo, trained, photo_folders):
    result = _evaluate(trained_demo, trained, photo_folders)
    page = (open(os.path.join(result.report_dir, "report.html"), encoding="utf-8")).read()
    for section in report.SECTIONS:
        assert f'id="{section}"' in page, section
    pngs = _embedded_pngs(page)
    assert len(pngs) == 4  # confusion matrix, gallery, reliability, coverage
    for png in pngs:
        png.load()  # raises on a truncated or corrupt image
        assert png.format == "PNG" and min(png.size) > 100
    assert 'src="http' not in page and "<link" not in page  # nothing outside the file
    for name in ("confusion_matrix", "gallery", "reliability", "coverage"):
        assert os.path.isfile(os.path.join(result.report_dir, f"{name}.png"))
    summary = result.metrics
    assert np.asarray(summary["confusion_matrix"]).sum() == summary["num_images"] == 12
    assert sum(b["count"] for b in summary["calibration"]) == 12
    assert 0.0 <= summary["ece"] <= 1.0
    for entry in summary["most_confused"]:
        assert entry["true"] != entry["predicted"] and entry["count"] > 0
    assert json.load(open(os.path.join(result.report_dir, "metrics.json")))["ece"] == summary["ece"]


def test_distractors_count_in_gap_ranking_and_the_threshold_rejects(
    trained_demo, trained, photo_folders
):
    result = _evaluate(
        trained_demo,
        trained,
        photo_folders,
        distractors=str(photo_folders / "distractors"),
        reject_threshold=0.5,
    )
    open_set = result.metrics["open_set"]
    assert open_set["distractors"] == 5
    assert any(e.get("file", "").endswith("empty.jpg") for e in result.metrics["skipped"])
    assert result.metrics["num_images"] == 12  # closed-set metrics: landmark photos only
    with open(os.path.join(result.report_dir, "predictions.csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 17
    assert sum(r["true"] == "no landmark" for r in rows) == 5
    # Recompute both GAPs from the written predictions.
    names = trained.class_names
    true = np.array(
        [
            metrics.NO_LANDMARK if r["true"] == "no landmark" else names.index(r["true"])
            for r in rows
        ]
    )
    confidence = np.array([float(r["confidence"]) for r in rows])
    predicted = np.array([names.index(r["predicted"]) for r in rows])
    rejected = confidence < 0.5
    assert [int(r["rejected"]) for r in rows] == rejected.astype(int).tolist()
    predicted = np.where(rejected, metrics.NO_LANDMARK, predicted)
    ranked = np.where(rejected, -np.inf, confidence)
    assert open_set["gap"] == pytest.approx(
        metrics.global_average_precision(true, predicted, ranked), abs=1e-3
    )
    landmark = true != metrics.NO_LANDMARK
    assert open_set["gap_without_distractors"] == pytest.approx(
        metrics.global_average_precision(true[landmark], predicted[landmark], ranked[landmark]),
        abs=1e-3,
    )
    assert open_set["distractors_rejected"] == pytest.approx(np.mean(rejected[~landmark]))
    page = open(os.path.join(result.report_dir, "report.html"), encoding="utf-8").read()
    assert "GAP with distractors" in page


def test_reject_threshold_outside_zero_one_is_refused(trained_demo, trained):
    with pytest.raises(UserError, match="--reject_threshold"):
        evaluate.evaluate(
            trained_demo.model_dir, verbose=False, trained=trained, reject_threshold=1.5
        )


def test_distractors_must_be_a_folder_of_photos(trained_demo, trained, tmp_path):
    with pytest.raises(UserError, match="--distractors"):
        evaluate.evaluate(
            trained_demo.model_dir,
            verbose=False,
            trained=trained,
            distractors=str(tmp_path / "missing"),
        )


def test_cam_crop_reports_whole_crop_and_mean(trained_demo, trained, photo_folders):
    result = _evaluate(trained_demo, trained, photo_folders, cam_crop=True)
    cam = result.metrics["cam_crop"]
    assert set(cam) == {"whole", "crop", "mean"}
    assert cam["whole"]["accuracy"] == pytest.approx(result.metrics["accuracy"])
    assert cam["whole"]["gap"] == pytest.approx(result.metrics["gap"])
    for entry in cam.values():
        assert 0.0 <= entry["accuracy"] <= 1.0
    page = open(os.path.join(result.report_dir, "report.html"), encoding="utf-8").read()
    assert 'id="cam-crop"' in page


def test_command_line_passes_every_evaluate_flag(
    trained_demo, photo_folders, tmp_path, env_for_subprocess
):
    model_dir = tmp_path / "model"  # a copy: the other tests read the shared run's report
    shutil.copytree(
        trained_demo.model_dir, model_dir, ignore=shutil.ignore_patterns("report", "logs", "resume")
    )
    command = [
        sys.executable,
        "-m",
        "lmrec.evaluate",
        f"--model_dir={model_dir}",
        f"--data={photo_folders / 'landmarks'}",
        f"--distractors={photo_folders / 'distractors'}",
        "--reject_threshold=0.4",
        "--cam_crop",
    ]
    done = subprocess.run(command, cwd=REPO, env=env_for_subprocess, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    written = json.load(open(model_dir / "report" / "metrics.json"))
    assert written["open_set"]["threshold"] == 0.4 and written["open_set"]["distractors"] == 5
    assert set(written["cam_crop"]) == {"whole", "crop", "mean"}
    assert os.path.isfile(model_dir / "report" / "report.html")
    assert os.listdir(model_dir / "logs" / "evaluate")  # the TensorBoard event file


def test_a_60_class_confusion_matrix_is_drawn_ordered_with_its_top_confusions(tmp_path):
    from lmrec import plots

    rng = np.random.default_rng(0)
    counts = np.diag(rng.integers(20, 40, 60))
    pairs = [(3, 41), (41, 3), (17, 58), (8, 9)]
    for true, predicted in pairs:
        counts[true, predicted] = 7
    names = [f"Landmark number {i} with a long name" for i in range(60)]
    order = metrics.confusion_order(counts)
    position = {c: i for i, c in enumerate(order.tolist())}
    for true, predicted in pairs:
        assert abs(position[true] - position[predicted]) == 1
    path = tmp_path / "confusion.png"
    png = plots.confusion_matrix_png(counts, names, str(path), "60 classes", order=order)
    assert path.read_bytes() == png
    with Image.open(path) as image:
        assert image.size[0] > 1500  # large enough to read 60 rows
