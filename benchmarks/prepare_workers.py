"""Shard writing in parallel: images/s with 1 vs 2 worker processes, and memory vs size.

    python benchmarks/prepare_workers.py [--copies=2] [--side=1024] [--beam]

Builds, in a temp folder (never in the repo), a tree in Google Landmarks v2's own
layout (train.csv + train/a/b/c/<id>.jpg) from the real photos in ../shared/data,
each resized to --side px (longer side) and saved --copies times with different
JPEG quality so every file is distinct work. Then runs `--source=gldv2` prepare
(max_image_side 800: decode, validate, downscale, re-encode, write) in a fresh
process per configuration and reports images/s, the speed-up of 2 workers over 1
(checked against 1.7x on 2 cores), and peak memory (parent and workers) at 1x and 2x
the images, which should not grow with the number of images. --beam adds the same
build as an Apache Beam DirectRunner pipeline with 2 worker processes.
Writes benchmarks/results/prepare_workers_gldv2_layout_cpu2.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(os.path.dirname(REPO), "shared", "data")
PHOTO_FOLDERS = ("vn_landmarks/train", "vn_landmarks/test", "intel_scenes_small/train")

# Runs one prepare in a fresh interpreter and prints its timing and peak memory as JSON.
_CHILD = """
import json, resource, sys, time
from lmrec.config import PrepareConfig
from lmrec.data import prepare
config = PrepareConfig.build(**json.loads(sys.argv[1]))
started = time.perf_counter()
result = prepare.prepare(config, verbose=False)
seconds = time.perf_counter() - started
self_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
children_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print(json.dumps({"seconds": seconds, "kept": result.stats["totals"]["kept"],
                  "rss_parent_mb": self_kb / 1024, "rss_worker_mb": children_kb / 1024}))
"""


def build_tree(root: str, copies: int, side: int) -> int:
    """Writes a GLDv2-layout tree of distinct JPEGs; returns how many images it holds."""
    from PIL import Image

    from lmrec.data import images
    from lmrec.data.sources import gldv2

    rows = ["id,url,landmark_id"]
    classes: dict[str, int] = {}
    count = 0
    for folder in PHOTO_FOLDERS:
        base = os.path.join(SHARED, folder)
        for class_name in sorted(os.listdir(base)):
            landmark = classes.setdefault(f"{folder}/{class_name}", 100 + 7 * len(classes))
            for name in sorted(os.listdir(os.path.join(base, class_name))):
                try:
                    photo = images.decode(images.read_file(os.path.join(base, class_name, name)))
                except images.BadImage:
                    continue
                scale = side / max(photo.image.size)
                resized = photo.image.resize(
                    (round(photo.image.width * scale), round(photo.image.height * scale)),
                    Image.Resampling.BILINEAR,
                )
                for copy in range(copies):
                    image_id = f"{count:016x}"
                    path = gldv2.image_path(root, image_id)
                    os.makedirs(os.path.dirname(path), exist_ok=True)
                    resized.save(path, "JPEG", quality=90 - copy)
                    rows.append(f"{image_id},https://example.org/{image_id}.jpg,{landmark}")
                    count += 1
    with open(os.path.join(root, "train.csv"), "w") as f:
        f.write("\n".join(rows) + "\n")
    return count


def run(label: str, config: dict) -> dict:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, json.dumps(config)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0:
        raise SystemExit(f"{label} failed:\n{out.stderr[-3000:]}")
    row = json.loads(out.stdout.strip().splitlines()[-1])
    row["label"] = label
    row["images_per_s"] = row["kept"] / row["seconds"]
    print(
        f"{label}: {row['kept']} images in {row['seconds']:.1f} s = {row['images_per_s']:.1f} "
        f"img/s; peak RSS parent {row['rss_parent_mb']:.0f} MB, "
        f"worker {row['rss_worker_mb']:.0f} MB",
        file=sys.stderr,
    )
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--copies", type=int, default=2)
    parser.add_argument("--side", type=int, default=1024)
    parser.add_argument("--images_per_shard", type=int, default=100)
    parser.add_argument("--beam", action="store_true")
    parser.add_argument(
        "--output",
        default=os.path.join(
            REPO, "benchmarks", "results", "prepare_workers_gldv2_layout_cpu2.json"
        ),
    )
    args = parser.parse_args()
    missing = [f for f in PHOTO_FOLDERS if not os.path.isdir(os.path.join(SHARED, f))]
    if missing:
        print(f"skipped: the real photos are absent ({SHARED}/{missing[0]})", file=sys.stderr)
        return 0
    sys.path.insert(0, REPO)
    from lmrec import atomic

    with tempfile.TemporaryDirectory(prefix="lmrec-prepare-bench-") as tmp:
        small, large = os.path.join(tmp, "gld_1x"), os.path.join(tmp, "gld_2x")
        started = time.time()
        n_small = build_tree(small, args.copies, args.side)
        n_large = build_tree(large, 2 * args.copies, args.side)
        print(
            f"built {n_small} + {n_large} photos in {time.time() - started:.0f} s", file=sys.stderr
        )

        def config(gldv2_dir: str, name: str, **extra) -> dict:
            return dict(
                source="gldv2",
                gldv2_dir=gldv2_dir,
                output_dir=os.path.join(tmp, "out"),
                name=name,
                images_per_shard=args.images_per_shard,
                max_image_side=800,
                **extra,
            )

        rows = [
            run("1 worker", config(small, "w1", num_workers=1)),
            run("2 workers", config(small, "w2", num_workers=2)),
            run("2 workers, 2x images", config(large, "w2x", num_workers=2)),
        ]
        if args.beam:
            beam_options = "--direct_num_workers=2 --direct_running_mode=multi_processing"
            rows.append(
                run(
                    "beam direct, 2 processes",
                    config(small, "beam", runner="beam", beam_options=beam_options),
                )
            )
    speedup = rows[1]["images_per_s"] / rows[0]["images_per_s"]
    memory_growth = rows[2]["rss_parent_mb"] / rows[1]["rss_parent_mb"]
    lines = [
        "| run | images | seconds | images/s | peak RSS parent MB | peak RSS worker MB |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['label']} | {row['kept']} | {row['seconds']:.1f} | {row['images_per_s']:.1f} "
            f"| {row['rss_parent_mb']:.0f} | {row['rss_worker_mb']:.0f} |"
        )
    lines.append(
        f"\n2 workers vs 1: {speedup:.2f}x (target >= 1.7x); "
        f"parent memory at 2x images: {memory_growth:.2f}x"
    )
    table = "\n".join(lines)
    print(table)
    atomic.write_json(
        args.output,
        {
            "benchmark": "prepare_workers",
            "date": datetime.date.today().isoformat(),
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
            "settings": {k: v for k, v in vars(args).items() if k != "output"},
            "rows": rows,
            "speedup_2_vs_1": speedup,
            "parent_memory_2x_vs_1x": memory_growth,
            "markdown": table,
        },
    )
    print(f"wrote {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
