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

from absl import flags

from lmrec import cli, config, console
from lmrec.data import prepare


def main(argv: list[str]) -> int:
    settings = config.from_flags(config.PrepareConfig, flags.FLAGS)
    prepare.prepare(settings, verbose=not console.is_quiet())
    return 0


def run() -> None:
    cli.run_stage("prepare", main, positional=False)


if __name__ == "__main__":
    run()
