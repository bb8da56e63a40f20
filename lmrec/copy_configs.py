"""Copies the configs lmrec ships into a folder, so `--flagfile=configs/X.cfg` works after pip.

    python -m lmrec.copy_configs [--project_dir=.] [--overwrite]

The flagfiles include each other by paths relative to the working directory
(`--flagfile=configs/common.cfg`), so they are meant to sit in ./configs beside
the user's tf_records/ and runs/. A clone of the repository has them; a pip install
carries them as package data (setup.py maps the top-level configs/ to the package
lmrec.bundled_configs), and this command puts them back in place. A file the user
has edited is kept unless --overwrite; each copy is written atomically.
"""

from __future__ import annotations

import importlib.resources
import os
from pathlib import Path

from lmrec import atomic

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


def copy_configs(project_dir: str, overwrite: bool = False) -> dict[str, list[str]]:
    """Copies every shipped flagfile into project_dir/configs.

    Returns:
      The relative paths by outcome: "copied" (new or, with overwrite, replaced),
      "unchanged" (already identical) and "kept" (differs, left as the user has it).
    """
    root = bundled_dir()
    outcome: dict[str, list[str]] = {"copied": [], "unchanged": [], "kept": []}
    for relative in bundled_files():
        data = (root / relative).read_bytes()
        target = os.path.join(project_dir, FOLDER, relative)
        if os.path.exists(target):
            with open(target, "rb") as f:
                if f.read() == data:
                    outcome["unchanged"].append(relative)
                    continue
            if not overwrite:
                outcome["kept"].append(relative)
                continue
        atomic.write_bytes(target, data)
        outcome["copied"].append(relative)
    return outcome


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


def main(argv: list[str]) -> int:
    from absl import flags

    project_dir = flags.FLAGS.project_dir
    dest = os.path.join(project_dir, FOLDER)
    outcome = copy_configs(project_dir, overwrite=flags.FLAGS.overwrite)
    for relative in outcome["kept"]:
        print(
            f"kept {os.path.join(dest, relative)}: differs from lmrec's (--overwrite replaces it)"
        )
    print(
        f"{len(outcome['copied'])} configs copied into {dest}, "
        f"{len(outcome['unchanged'])} already there, {len(outcome['kept'])} kept as they were."
    )
    go = "" if os.path.abspath(project_dir) == os.getcwd() else f"cd {project_dir} && "
    print(f"Next: {go}python -m lmrec.train --flagfile=configs/demo.cfg")
    return 0


def run() -> None:
    from absl import flags

    from lmrec import cli

    flags.DEFINE_string(
        "project_dir",
        ".",
        "The folder you run lmrec from: the configs go to its configs/ subfolder (they "
        "include each other as configs/...).",
    )
    flags.DEFINE_bool("overwrite", False, "Replace configs there that differ from lmrec's.")
    cli.run_stage(main, positional=False)


if __name__ == "__main__":
    run()
