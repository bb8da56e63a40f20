"""Export round-trip against the in-memory model, and predict on a mixed folder."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from lmrec import evaluate, export, predict, run_files
from lmrec.config import ExportConfig
from lmrec.data import pipeline
from lmrec.data.sources import demo
from lmrec.errors import UserError
from tests.conftest import REPO

# Trains, exports or runs commands: left out by `pytest -m "not slow"`.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained(trained_demo):
    return run_files.load(trained_demo.model_dir)


def _demo_jpegs(count: int, size: int = 100) -> list[bytes]:
    # Seed 5 was never used in training (the demo config draws with seed 42).
    return [demo.make_image(i % 8, 1000 + i, size, seed=5).encoded for i in range(count)]


def test_saved_model_equals_the_in_memory_model(trained_demo, trained, tmp_path):
    path = export.export_saved_model(
        trained_demo.model_dir, ExportConfig(export_dir=str(tmp_path), top_k=3), verbose=False
    )
    assert path == os.path.join(str(tmp_path), "demo", "1")
    loaded = tf.saved_model.load(path)
    serve = loaded.signatures["serving_default"]
    jpegs = _demo_jpegs(6)
    png = io.BytesIO()
    Image.open(io.BytesIO(jpegs[0])).save(png, "PNG")
    batch = jpegs + [png.getvalue()]
    outputs = serve(image_bytes=tf.constant(batch))
    assert set(outputs) == {"ok", "classes", "scores", "probabilities"}
    assert outputs["ok"].numpy().all()
    assert outputs["classes"].dtype == tf.string and outputs["classes"].shape == (7, 3)
    images = tf.stack([pipeline.decode_and_resize(b, trained.image_size) for b in batch])
    expected = trained.model(trained.preprocess(images), training=False).numpy()
    np.testing.assert_allclose(outputs["probabilities"].numpy(), expected, atol=1e-5)
    top = np.argsort(-expected, axis=1)[:, :3]
    names = np.array(trained.class_names)
    assert [list(map(bytes.decode, row)) for row in outputs["classes"].numpy()] == names[
        top
    ].tolist()
    np.testing.assert_allclose(
        outputs["scores"].numpy(), np.take_along_axis(expected, top, 1), atol=1e-5
    )

    uint8 = loaded.signatures["serving_images"]
    decoded = tf.stack([tf.io.decode_jpeg(b) for b in jpegs])
    from_uint8 = uint8(images=decoded)["probabilities"].numpy()
    np.testing.assert_allclose(from_uint8, expected[:6], atol=1e-5)


def test_versions_count_up_and_are_never_overwritten(trained_demo, trained, tmp_path):
    first = export.export_saved_model(
        trained_demo.model_dir,
        ExportConfig(export_dir=str(tmp_path)),
        verbose=False,
        trained=trained,
    )
    second = export.export_saved_model(
        trained_demo.model_dir,
        ExportConfig(export_dir=str(tmp_path)),
        verbose=False,
        trained=trained,
    )
    assert (os.path.basename(first), os.path.basename(second)) == ("1", "2")
    with pytest.raises(UserError, match="never overwritten"):
        export.export_saved_model(
            trained_demo.model_dir,
            ExportConfig(export_dir=str(tmp_path), version=1),
            verbose=False,
            trained=trained,
        )
    assert sorted(os.listdir(os.path.join(str(tmp_path), "demo"))) == ["1", "2"]


@pytest.fixture
def mixed_folder(tmp_path):
    root = tmp_path / "trip"
    (root / "day 1").mkdir(parents=True)
    jpegs = _demo_jpegs(5)
    for i, data in enumerate(jpegs[:3]):
        (root / "day 1" / f"DSC_{i:04d}.JPG").write_bytes(data)
    Image.open(io.BytesIO(jpegs[3])).save(root / "pano.png")
    (root / "day 1" / "broken.jpg").write_bytes(jpegs[4][:300])
    (root / "day 1" / "empty.jpeg").write_bytes(b"")
    (root / "notes.txt").write_text("not a photo")
    return root


def test_predict_on_a_mixed_folder_writes_csv_and_reports_failures(
    trained_demo, mixed_folder, tmp_path
):
    out = tmp_path / "tags.csv"
    result = predict.predict(
        trained_demo.model_dir, [str(mixed_folder)], str(out), top_k=2, verbose=False
    )
    assert len(result.rows) == 4
    assert {os.path.basename(f["file"]) for f in result.failures} == {"broken.jpg", "empty.jpeg"}
    assert [os.path.basename(i["file"]) for i in result.ignored] == ["notes.txt"]
    with open(out, encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 7  # 4 tagged, 2 failed, notes.txt ignored
    assert [r["error"] for r in rows if r["file"].endswith("notes.txt")] == [
        "ignored: not an image extension"
    ]
    tagged = [r for r in rows if not r["error"]]
    assert all(r["label"] in demo.CLASS_NAMES and 0 < float(r["score"]) <= 1 for r in tagged)
    assert all(r["label"] == r["label_1"] and r["label_2"] != r["label_1"] for r in tagged)
    reasons = {os.path.basename(r["file"]): r["error"] for r in rows if r["error"]}
    assert "empty" in reasons["empty.jpeg"] and reasons["broken.jpg"]


def test_predict_from_the_export_matches_predict_from_model_dir(
    trained_demo, mixed_folder, tmp_path
):
    path = export.export_saved_model(
        trained_demo.model_dir, ExportConfig(export_dir=str(tmp_path)), verbose=False
    )
    from_export = predict.predict(os.path.dirname(path), [str(mixed_folder)], verbose=False)
    assert predict.load_tagger(path).engine == "savedmodel"  # no TFLite file beside it
    for model in (path, trained_demo.model_dir):
        with pytest.raises(UserError, match="--engine=tflite"):
            predict.load_tagger(model, "tflite")
    from_dir = predict.predict(trained_demo.model_dir, [str(mixed_folder)], verbose=False)
    assert [r.label for r in from_export.rows] == [r.label for r in from_dir.rows]
    np.testing.assert_allclose(
        [r.score for r in from_export.rows], [r.score for r in from_dir.rows], atol=1e-5
    )


def test_reject_threshold_tags_low_confidence_photos_no_landmark(trained_demo, mixed_folder):
    plain = predict.predict(trained_demo.model_dir, [str(mixed_folder)], verbose=False)
    scores = sorted(r.score for r in plain.rows)
    boundary = scores[1]  # a score equal to the threshold is kept
    result = predict.predict(
        trained_demo.model_dir, [str(mixed_folder)], verbose=False, reject_threshold=boundary
    )
    for before, after in zip(plain.rows, result.rows, strict=True):
        expected = predict.NO_LANDMARK if before.score < boundary else before.label
        assert after.label == expected and after.top == before.top
    assert sum(r.label == predict.NO_LANDMARK for r in result.rows) == 1
    with pytest.raises(UserError, match="--reject_threshold"):
        predict.predict(trained_demo.model_dir, [str(mixed_folder)], reject_threshold=-0.1)


def test_serving_outputs_a_no_landmark_flag_only_with_a_threshold(trained):
    batch = tf.constant(_demo_jpegs(5))
    args = (trained.model, trained.class_names, trained.image_size, trained.preprocess, 2)
    plain = export.serving_functions(*args)[0](batch)
    assert "no_landmark" not in plain
    threshold = float(np.median(plain["scores"][:, 0]))
    flagged = export.serving_functions(*args, reject_threshold=threshold)[0](batch)
    np.testing.assert_array_equal(
        flagged["no_landmark"].numpy(), plain["scores"][:, 0].numpy() < threshold
    )


def test_an_image_that_is_not_ok_is_never_no_landmark(trained):
    args = (trained.model, trained.class_names, trained.image_size, trained.preprocess, 2)
    # Above 1, every answered image is below the threshold.
    from_bytes, from_uint8 = export.serving_functions(*args, reject_threshold=1.01)
    outputs = from_bytes(tf.constant(_demo_jpegs(2) + [b"garbage"]))
    assert outputs["ok"].numpy().tolist() == [True, True, False]
    assert outputs["no_landmark"].numpy().tolist() == [True, True, False]
    pixels = tf.stack([tf.io.decode_jpeg(jpeg) for jpeg in _demo_jpegs(2)])
    assert from_uint8(pixels)["ok"].numpy().tolist() == [True, True]


def test_predict_command_line_exit_code_and_json(
    trained_demo, mixed_folder, tmp_path, env_for_subprocess
):
    out = tmp_path / "tags.json"
    command = [
        sys.executable,
        "-m",
        "lmrec.predict",
        f"--model={trained_demo.model_dir}",
        f"--output={out}",
        "--top_k=3",
        str(mixed_folder),
    ]
    result = subprocess.run(
        command, capture_output=True, text=True, cwd=REPO, env=env_for_subprocess, timeout=300
    )
    assert result.returncode == 1, result.stderr[-2000:]  # two files could not be read
    assert "broken.jpg" in result.stderr and "empty.jpeg" in result.stderr
    payload = json.loads(out.read_text(encoding="utf-8"))
    assert len(payload["predictions"]) == 4 and len(payload["failures"]) == 2
    assert all(len(p["top"]) == 3 for p in payload["predictions"])

    good_only = mixed_folder / "day 1" / "DSC_0000.JPG"
    result = subprocess.run(
        command[:-1] + [str(good_only)],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env_for_subprocess,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]


def test_predict_rejects_a_path_that_is_no_model(tmp_path):
    with pytest.raises(UserError, match="no saved_model.pb"):
        predict.predict(str(tmp_path), [str(tmp_path)], verbose=False)


def test_evaluate_on_an_image_folder_matches_classes_by_name(trained_demo, trained, tmp_path):
    root = tmp_path / "eval"
    for label in (0, 2, 5):
        name = demo.CLASS_NAMES[label]
        (root / name).mkdir(parents=True)
        for i in range(3):
            (root / name / f"{i}.jpg").write_bytes(
                demo.make_image(label, 2000 + i, 100, seed=5).encoded
            )
    (root / "atlantis").mkdir()
    (root / "atlantis" / "x.jpg").write_bytes(demo.make_image(0, 1, 100, seed=5).encoded)
    (root / "tower" / "bad.jpg").write_bytes(b"nope")
    result = evaluate.evaluate(
        trained_demo.model_dir, data=str(root), verbose=False, trained=trained
    )
    assert result.metrics["num_images"] == 9
    skipped = result.metrics["skipped"]
    assert {"class": "atlantis", "reason": "class unknown to the model"} in skipped
    assert any(entry.get("file", "").endswith("bad.jpg") for entry in skipped)
    supports = {row["class"]: row["support"] for row in result.metrics["per_class"]}
    assert supports["tower"] == supports["dome"] == supports["lighthouse"] == 3
    assert supports["arch"] == 0
    assert os.path.isfile(os.path.join(result.report_dir, "confusion_matrix.png"))


def test_top_k_indices_equal_a_full_stable_sort():
    rng = np.random.default_rng(0)
    probabilities = rng.random((16, 500)).astype(np.float32)
    probabilities[3, [7, 2, 40]] = 2.0  # a tie within the top k: class index decides
    for k in (1, 5, 500, 600):
        expected = np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
        np.testing.assert_array_equal(predict.top_k_indices(probabilities, k), expected)
    assert predict.top_k_indices(probabilities, 5)[3, :3].tolist() == [2, 7, 40]
