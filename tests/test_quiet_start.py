"""lmrec's commands start with lmrec's own lines, not TensorFlow's C++ start-up notices."""

from __future__ import annotations

import re
import subprocess
import sys

from lmrec import quiet_start

IMPORT_NOTICES = """\
WARNING: All log messages before absl::InitializeLog() is called are written to STDERR
I0000 00:00:1796189069.054093    4475 port.cc:153] oneDNN custom operations are on.
I0000 00:00:1796189069.054563    4475 cudart_stub.cc:31] Could not find cuda drivers
I0000 00:00:1796189070.331062    4475 cpu_feature_guard.cc:227] This TensorFlow binary is
To enable the following instructions: AVX2 AVX512F FMA, in other operations, rebuild
"""
CUINIT = (
    "E0000 00:00:1796189181.749756    4781 cuda_platform.cc:52] failed call to cuInit: "
    "INTERNAL: CUDA error: Failed call to cuInit: UNKNOWN ERROR (303)\n"
)
KEPT = (
    "E0000 00:00:1796189181.749756    4781 op_kernel.cc:1830] OP_REQUIRES failed\n"
    "/site-packages/x.py:3: DeprecationWarning: a Python warning\n"
)


def test_notices_are_dropped_and_everything_else_kept():
    text = IMPORT_NOTICES + CUINIT + KEPT
    assert quiet_start.without_notices(text, driver_present=True) == CUINIT + KEPT
    assert quiet_start.without_notices(text, driver_present=False) == KEPT


def test_a_command_prints_lmrecs_lines_first(env_for_subprocess):
    env = {k: v for k, v in env_for_subprocess.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    done = subprocess.run(
        [sys.executable, "-m", "lmrec.predict", "--help"],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    lines = [line for line in (done.stderr + done.stdout).splitlines() if line.strip()]
    assert lines[0] == "Tags photos with landmark labels: the photographer's tool.", lines[:5]
    assert quiet_start.without_notices(done.stderr, driver_present=False) == done.stderr


def test_library_use_is_left_alone():
    assert not quiet_start.is_command()  # pytest imported lmrec, as a notebook would


def _prepare_from_records(records: str, out, env: dict) -> subprocess.CompletedProcess:
    """python -m lmrec.prepare --source=tfrecords: reads shards with a TFRecordDataset, whose
    C++ op logs an INFO line about its buffer size at run time."""
    return subprocess.run(
        [sys.executable, "-m", "lmrec.prepare", "--source=tfrecords", f"--input_dir={records}",
         "--name=copy", f"--output_dir={out}"],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def test_tensorflows_run_time_info_lines_stay_out_unless_asked_for(
    demo_records, tmp_path, env_for_subprocess
):
    env = {k: v for k, v in env_for_subprocess.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    done = _prepare_from_records(demo_records, tmp_path / "default", env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Prepared" in done.stderr
    assert not re.search(r"^[IW]\d{4} ", done.stderr, re.M), done.stderr[:2000]

    asked = _prepare_from_records(
        demo_records, tmp_path / "asked", {**env, "TF_CPP_MIN_LOG_LEVEL": "0"}
    )
    assert asked.returncode == 0, asked.stderr[-2000:]
    assert re.search(r"^I\d{4} .*tf_record_dataset_op", asked.stderr, re.M), asked.stderr[:2000]
