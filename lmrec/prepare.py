"""Photos -> validated, split, sharded TFRecords under tf_records/<name>/.

    python -m lmrec.prepare --source=folder --input_dir=~/Pictures/landmarks --name=my_trip
    python -m lmrec.prepare --source=demo

The work happens in lmrec.data.prepare.prepare(config), which notebooks call.
"""

from __future__ import annotations


def main(argv: list[str]) -> int:
    from absl import flags

    from lmrec import config as config_lib
    from lmrec.data import prepare

    prepare.prepare(config_lib.from_flags(config_lib.PrepareConfig, flags.FLAGS))
    return 0


def run() -> None:
    from lmrec import cli, flags  # noqa: F401 - defines the flags.

    cli.run_stage(main, positional=False)


if __name__ == "__main__":
    run()
