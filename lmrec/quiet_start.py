"""Keeps TensorFlow's C++ start-up notices out of lmrec's commands.

Importing TensorFlow prints its start-up notices (oneDNN, CUDA stubs, CPU
instructions; about ten lines, twice) through Abseil's C++ logging before
anything in Python can configure it, and TF_CPP_MIN_LOG_LEVEL does not reach
them; finding the devices then logs a failed cuInit as an error on a machine
without an NVIDIA driver. An lmrec command (`python -m lmrec.<stage>`, an
`lmrec-*` script, and the worker processes they spawn) imports TensorFlow and
lists the devices once with the process's stderr (file descriptor 2) pointed at
a temporary file, then puts stderr back and passes on every captured line except
those notices, so the first lines a user sees are lmrec's. It also sets
TF_CPP_MIN_LOG_LEVEL=1, so TensorFlow's INFO lines at run time stay out too
(warnings and errors show). A user who sets TF_CPP_MIN_LOG_LEVEL sees
TensorFlow's output as it comes. Library use (a
notebook, the tests) is left alone.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile

# Abseil's notice about its own initialisation, a line in its INFO or WARNING format
# ("I0000 00:00:1796189069.054093    4475 port.cc:153] ..."), and the CPU notice's
# second line.
_NOTICE = re.compile(
    r"WARNING: All log messages before absl::InitializeLog\(\)"
    r"|[IW]\d{4} \d\d:\d\d:[\d.]+ +\d+ [\w.-]+:\d+\] "
    r"|To enable the following instructions: "
)
# Without a driver (no /proc/driver/nvidia) a failed cuInit says nothing; with one it may
# be the reason a GPU is missing, and is passed on.
_NO_DRIVER_CUINIT = re.compile(r"E\d{4} [\d:. ]+ \d+ cuda_platform\.cc:\d+\] failed call to cuInit")
_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
# Set when TF_CPP_MIN_LOG_LEVEL below is lmrec's default, not the user's.
_OWN_LEVEL = "LMREC_DEFAULT_TF_LOG_LEVEL"


def is_command() -> bool:
    """Whether this process runs an lmrec command (or is a worker one spawned)."""
    argv = list(getattr(sys, "orig_argv", []))
    if "-m" in argv[:-1] and argv[argv.index("-m") + 1].startswith("lmrec."):
        return True
    program = sys.argv[0] if sys.argv else ""
    # An lmrec-* console script, or a spawned worker (multiprocessing copies the parent's
    # sys.argv, whose argv[0] runpy set to the stage's file).
    return os.path.basename(program).startswith("lmrec-") or (
        os.path.dirname(os.path.abspath(program)) == _PACKAGE_DIR if program else False
    )


def without_notices(text: str, driver_present: bool = True) -> str:
    """text less the start-up notice lines (and a failed cuInit where there is no driver)."""

    def notice(line: str) -> bool:
        return bool(_NOTICE.match(line)) or (
            not driver_present and bool(_NO_DRIVER_CUINIT.match(line))
        )

    return "".join(line for line in text.splitlines(True) if not notice(line))


def import_tensorflow() -> None:
    """Imports TensorFlow with its start-up notices left out of stderr (see the module doc)."""
    if "tensorflow" in sys.modules:
        return
    if "TF_CPP_MIN_LOG_LEVEL" in os.environ and os.environ.get(_OWN_LEVEL) != "1":
        return  # the user's own level
    # INFO lines at run time (e.g. TFRecordDataset's buffer_size notice) obey the level;
    # warnings and errors still show. Marked as lmrec's, so spawned workers still filter.
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "1"
    os.environ[_OWN_LEVEL] = "1"
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            # Imported here, not at the top: library users of lmrec never pay for it.
            import tensorflow as tf

            tf.config.list_physical_devices()  # where cuInit runs, and may log
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            text = captured.read().decode("utf-8", "replace")
            driver = os.path.exists("/proc/driver/nvidia")
            sys.stderr.write(without_notices(text, driver_present=driver))
            sys.stderr.flush()
