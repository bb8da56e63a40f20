"""Pretrained vs from scratch on real photos: the comparison transfer learning has to win.

    python benchmarks/transfer_real_photos.py [--datasets=vietnam_landmarks,intel_scenes]
                                              [--recipes=lite0,lite0_scratch,baseline]
                                              [--seeds=42] [--append]

Trains configs/<dataset>_<recipe>.cfg for each pair, on the shared real photos in
../shared/data, evaluates on each dataset's separate test folder, prints a
Markdown table (test accuracy, macro-F1, GAP, seconds per phase) and writes
benchmarks/results/transfer_real_photos_cpu2.json. All runs happen in one process,
one after another, on the same machine, so the seconds compare.

--seeds repeats each run with other training seeds (initialization, shuffling,
augmentation; the train/val split stays the one prepared first): a 300-photo test
set moves by a percent between seeds, so one run does not settle a 1% question.
--append adds the runs to the rows already in the JSON (replacing the same
dataset/recipe/seed) and the table shows the mean with every seed's value.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA_FOLDERS = {
    "vietnam_landmarks": "../shared/data/vn_landmarks",
    "intel_scenes": "../shared/data/intel_scenes_small",
}
RECIPES = {
    "lite0": "EfficientNet-Lite0, ImageNet weights",
    "lite0_scratch": "EfficientNet-Lite0, random init",
    "baseline": "baseline CNN, random init",
}


def run_one(dataset: str, recipe: str, seed: int, runs_dir: str) -> dict:
    from lmrec import config
    from lmrec.data.prepare import read_stats
    from lmrec.training import train_and_evaluate

    model_dir = os.path.join(runs_dir, f"{dataset}_{recipe}_seed{seed}")
    # A finished run left there would be taken as done (lmrec resumes): start afresh.
    shutil.rmtree(model_dir, ignore_errors=True)
    experiment = config.experiment_from_flagfile(
        os.path.join("configs", f"{dataset}_{recipe}.cfg"),
        f"--model_dir={model_dir}",
        f"--seed={seed}",
        "--export_after=false",
    )
    started = time.time()
    result = train_and_evaluate(experiment, verbose=False)
    phases = result.phase_seconds
    return {
        "dataset": dataset,
        "recipe": recipe,
        "description": RECIPES[recipe],
        "seed": seed,
        "backbone": experiment.model.backbone,
        "weights": experiment.model.weights,
        "image_size": experiment.data.image_size,
        "epochs_frozen": experiment.train.epochs_frozen,
        "epochs_finetune": experiment.train.epochs_finetune,
        "val_fraction": experiment.prepare.val_fraction,
        "train_images": read_stats(result.data_dir)["totals"]["train"],
        "test_images": result.metrics["num_images"],
        "test_accuracy": result.metrics["accuracy"],
        "test_macro_f1": result.metrics["macro_f1"],
        "test_gap": result.metrics["gap"],
        "best_val_accuracy": result.best_value,
        "best_epoch": result.best_epoch,
        "seconds_frozen": phases.get("frozen", 0.0),
        "seconds_finetune": phases.get("finetune", 0.0),
        "seconds_total": round(time.time() - started, 1),
    }


def _mean(rows: list[dict], key: str) -> float:
    return sum(r[key] for r in rows) / len(rows)


def markdown(rows: list[dict]) -> str:
    """One line per dataset and recipe; with several seeds, means and each seed's accuracy."""
    lines = [
        "| dataset | model | test acc | macro-F1 | GAP | phase 1 s | phase 2 s | total s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["dataset"], r["recipe"]), []).append(r)
    for group in groups.values():
        first = group[0]
        accuracy = f"{_mean(group, 'test_accuracy'):.3f}"
        if len(group) > 1:
            seeds = ", ".join(f"{r['test_accuracy']:.3f}" for r in group)
            accuracy += f" (mean of {len(group)} seeds: {seeds})"
        lines.append(
            f"| {first['dataset']} ({first['test_images']} test) | {first['description']} | "
            f"{accuracy} | {_mean(group, 'test_macro_f1'):.3f} | {_mean(group, 'test_gap'):.3f} | "
            f"{_mean(group, 'seconds_frozen'):.0f} | {_mean(group, 'seconds_finetune'):.0f} | "
            f"{_mean(group, 'seconds_total'):.0f} |"
        )
    return "\n".join(lines)


def _previous_rows(path: str) -> list[dict]:
    if not os.path.isfile(path):
        return []
    with open(path) as f:
        return json.load(f)["rows"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", default=",".join(DATA_FOLDERS))
    parser.add_argument("--recipes", default=",".join(RECIPES))
    parser.add_argument("--seeds", default="42", help="comma-separated training seeds")
    parser.add_argument("--append", action="store_true", help="keep the JSON's earlier rows")
    parser.add_argument("--runs_dir", default="runs/benchmarks")
    parser.add_argument(
        "--output", default=os.path.join("benchmarks", "results", "transfer_real_photos_cpu2.json")
    )
    args = parser.parse_args()
    os.chdir(REPO)  # configs use paths relative to the repo root
    import tensorflow as tf

    from lmrec import atomic

    rows = _previous_rows(args.output) if args.append else []
    skipped = []
    seeds = [int(seed) for seed in args.seeds.split(",")]
    for dataset in args.datasets.split(","):
        if not os.path.isdir(DATA_FOLDERS[dataset]):
            skipped.append(f"{dataset}: {DATA_FOLDERS[dataset]} is absent")
            print(f"skipping {skipped[-1]}", file=sys.stderr)
            continue
        for recipe in args.recipes.split(","):
            for seed in seeds:
                print(f"training {dataset} / {recipe} / seed {seed} ...", file=sys.stderr)
                row = run_one(dataset, recipe, seed, args.runs_dir)
                rows = [
                    r
                    for r in rows
                    if (r["dataset"], r["recipe"], r.get("seed")) != (dataset, recipe, seed)
                ]
                rows.append(row)
                print(markdown([row]).splitlines()[-1], file=sys.stderr)
    table = markdown(rows)
    print(table)
    atomic.write_json(
        args.output,
        {
            "benchmark": "transfer_real_photos",
            "date": datetime.date.today().isoformat(),
            "machine": {
                "cpus": os.cpu_count(),
                "platform": platform.platform(),
                "tensorflow": tf.__version__,
                "gpus": len(tf.config.list_physical_devices("GPU")),
            },
            "rows": rows,
            "skipped": skipped,
            "markdown": table,
        },
    )
    print(f"wrote {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
