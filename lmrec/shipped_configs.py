"""Where the flagfiles lmrec ships are, and what to say when a --flagfile is missing.

A clone of the repository has them in ./configs; a pip install carries them as
package data (setup.py maps the top-level configs/ to the package
lmrec.bundled_configs), and `python -m lmrec.copy_configs` puts them in place.
"""

from __future__ import annotations

import importlib.resources
import os
from pathlib import Path

PACKAGE = "lmrec.bundled_configs"
FOLDER = "configs"  # the name the flagfiles use for each other


def bundled_dir() -> Path:
    """The shipped configs: the installed package data, or the source tree's configs/ when
    lmrec runs from a checkout that was never installed (PYTHONPATH=.)."""
    try:
        return Path(str(importlib.resources.files(PACKAGE)))
    except ModuleNotFoundError:
        return Path(__file__).resolve().parent.parent / FOLDER


def bundled_files() -> list[str]:
    """Relative paths of every shipped flagfile (e.g. "recipes/lite0_transfer.cfg")."""
    root = bundled_dir()
    return sorted(str(path.relative_to(root)) for path in root.rglob("*.cfg"))


def missing_flagfile_hint(argv: list[str]) -> str | None:
    """For a command line whose --flagfile does not exist, the message to show instead of
    absl's (which does not say where lmrec's configs are); None when every one exists."""
    for index, arg in enumerate(argv):
        name, equals, value = arg.partition("=")
        if name not in ("--flagfile", "-flagfile"):  # absl's spellings
            continue
        if not equals:
            if index + 1 == len(argv):
                continue  # absl reports the missing value
            value = argv[index + 1]
        path = os.path.expanduser(value)  # as absl does
        if not path or os.path.exists(path):
            continue
        message = f"no flagfile at {path} (relative to {os.getcwd()})"
        relative = Path(path).as_posix()
        prefix = f"{FOLDER}/"
        if relative.startswith(prefix) and relative[len(prefix) :] in bundled_files():
            message += (
                f". {relative} is one of lmrec's configs: run `python -m lmrec.copy_configs` "
                "here to copy them into ./configs, then run this command again"
            )
        return message
    return None
