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

import os

from absl import flags

from lmrec import atomic, cli, config
from lmrec.shipped_configs import FOLDER, bundled_dir, bundled_files


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


def main(argv: list[str]) -> int:
    settings = config.from_flags(config.CopyConfigsConfig, flags.FLAGS)
    project_dir = settings.project_dir
    dest = os.path.join(project_dir, FOLDER)
    outcome = copy_configs(project_dir, overwrite=settings.overwrite)
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
    cli.run_stage("copy_configs", main, positional=False)


if __name__ == "__main__":
    run()
