r"""Downloads the Google Landmarks v2 images a chosen subset needs, then lmrec.prepare reads them.

    python scripts/download_gldv2.py --gldv2_dir=data/gldv2 --gldv2_tars=0-9 \
        --num_classes=100 --min_images_per_class=20 --keep_tars=false
    python -m lmrec.prepare --source=gldv2 --gldv2_dir=data/gldv2 --num_classes=100 ...

Steps: the CSV named by --gldv2_csv and train_label_to_category.csv -> the image
ids the selection flags pick -> the --gldv2_tars tars and their md5 lists (in
parallel, resumable, md5-checked) -> only the wanted images, as
<gldv2_dir>/train/a/b/c/<id>.jpg. Rerun the same command after an interruption:
finished files are not fetched again and .part files resume. --gldv2_url may
name any mirror with the official layout, including a file:// folder.
"""

from __future__ import annotations

import dataclasses

from absl import flags

from lmrec import cli, config, settings
from lmrec.data import gldv2_download
from lmrec.data.sources import gldv2


@dataclasses.dataclass(frozen=True)
class DownloadOptions:
    """This script's own settings, beside the GLDv2 source's (lmrec.data.sources.gldv2)."""

    keep_tars: bool = settings.setting(
        True,
        "Keep each image tar after its wanted images are extracted; false deletes it then, so "
        "at most --download_jobs tars take disk space at a time.",
    )


def main(argv: list[str]) -> int:
    gldv2_options = settings.values(gldv2.Gldv2Options, flags.FLAGS)
    prepare = config.PrepareConfig(
        source="gldv2", seed=flags.FLAGS.seed, source_options=dataclasses.asdict(gldv2_options)
    )
    keep_tars = settings.values(DownloadOptions, flags.FLAGS).keep_tars
    summary = gldv2_download.download_gldv2(prepare, keep_tars=keep_tars)
    print(summary.describe())
    print(
        f"Next: python -m lmrec.prepare --source=gldv2 --gldv2_dir={gldv2_options.gldv2_dir} "
        "with the same selection flags"
    )
    return 0


if __name__ == "__main__":
    cli.run_stage(
        "download_gldv2", main, positional=False, extra=settings.flag_fields(DownloadOptions)
    )
