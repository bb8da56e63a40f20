"""Photos -> validated, split, sharded TFRecords under tf_records/<name>/.

    python -m lmrec.prepare --source=folder --input_dir=~/Pictures/landmarks --name=my_trip
    python -m lmrec.prepare --source=demo
    python -m lmrec.prepare --source=gldv2 --gldv2_dir=data/gldv2 --min_images_per_class=250 \
        --num_classes=100 --name=gld100 [--num_workers=8 | --runner=beam --beam_options=...]
    python -m lmrec.prepare --source=tfds --tfds_name=tf_flowers
    python -m lmrec.prepare --source=tfrecords --input_dir=delf_shards/ --name=gld_delf

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
