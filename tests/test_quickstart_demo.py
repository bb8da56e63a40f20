"""The quick start command, `python -m lmrec.train --flagfile=configs/demo.cfg`, for real.

One fresh process runs the README's command from the repository root with overrides
that keep it short (40 drawn photos per class, 96 px, one epoch per phase, every file
under tmp_path): it prepares the demo data, fine-tunes the pretrained EfficientNet-Lite0,
evaluates and exports. About a minute on a 2-core CPU.
"""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys

import pytest

from lmrec import run_files
from tests.conftest import REPO

# Trains, exports or runs commands: left out by `pytest -m "not slow"`.
pytestmark = pytest.mark.slow

IMAGES_PER_CLASS = 40
NUM_CLASSES = 8
# A TensorFlow C++ log line (Abseil's "I0000 00:00:..." format) or one of its start-up notices.
TENSORFLOW_LOG = re.compile(r"^[IWE]\d{4} |cuda|oneDNN|cpu_feature_guard")


@pytest.fixture(scope="module")
def quickstart_run(tmp_path_factory, env_for_subprocess):
    """The command's result and its model_dir."""
    root = tmp_path_factory.mktemp("quickstart")
    env = dict(env_for_subprocess)
    # A set TF_CPP_MIN_LOG_LEVEL hands TensorFlow's logging back to the user (lmrec.quiet_start).
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)
    model_dir = root / "runs" / "demo"
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "lmrec.train",
            "--flagfile=configs/demo.cfg",
            f"--output_dir={root / 'tf_records'}",
            f"--data_dir={root / 'tf_records' / 'demo'}",
            f"--model_dir={model_dir}",
            f"--export_dir={root / 'export'}",
            f"--demo_images_per_class={IMAGES_PER_CLASS}",
            "--image_size=96",
            "--epochs_frozen=1",
            "--epochs_finetune=1",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    return completed, model_dir


def test_the_quick_start_command_prepares_trains_evaluates_and_exports(quickstart_run):
    completed, model_dir = quickstart_run
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "No prepared data" in completed.stderr
    assert os.path.isfile(model_dir / "report" / "metrics.json")
    assert re.search(r"^  SavedModel +\S+", completed.stderr, re.M), completed.stderr[-2000:]


def test_the_first_lines_are_lmrecs_not_tensorflows(quickstart_run):
    completed, _ = quickstart_run
    for name, text in (("stderr", completed.stderr), ("stdout", completed.stdout)):
        lines = [line for line in text.splitlines() if line.strip()]
        before = []
        for line in lines:
            if not TENSORFLOW_LOG.search(line):
                break
            before.append(line)
        assert before == [], f"{name} starts with TensorFlow's log:\n" + "\n".join(before)
    assert completed.stderr.lstrip().startswith("No prepared data")


def test_the_run_fine_tunes_the_pretrained_efficientnet_lite0(quickstart_run):
    _, model_dir = quickstart_run
    resolved = json.loads((model_dir / run_files.CONFIG_FILE).read_text(encoding="utf-8"))
    assert resolved["model"]["backbone"] == "efficientnet_lite0"
    assert resolved["model"]["weights"] == "imagenet"
    flags = (model_dir / run_files.FLAGS_FILE).read_text(encoding="utf-8").splitlines()
    assert "--backbone=efficientnet_lite0" in flags and "--weights=imagenet" in flags
    assert any(line.startswith("--unfreeze_from=block") for line in flags)
    # ImageNet features separate the drawn landmarks after one short epoch of the head
    # (32 training photos per class, 8 steps: about 0.67 on the 64 validation photos);
    # the same run with --weights=none stays at chance (1/8).
    with open(model_dir / "history.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2
    assert rows[0]["phase"] == "frozen"
    assert float(rows[0]["val_accuracy"]) >= 0.4, rows[0]
