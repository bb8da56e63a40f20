"""Renders benchmarks/README.md from the result files in benchmarks/results/.

    python benchmarks/render_readme.py            # rewrite benchmarks/README.md
    python benchmarks/render_readme.py --check    # exit 1 if it is not what would be rendered

Every table comes from one result file and says its date, machine and command once.
Result files are named by setting and machine (training_throughput_160steps_cpu2.json:
160 steps per epoch on a 2-core CPU); a benchmark script writes one with --output. The
output depends only on the result files (sorted names, fixed number formats), so the
check is exact. Standard library only: no TensorFlow import.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import textwrap

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")
README = os.path.join(HERE, "README.md")

# Training-throughput files in page order; any other training_throughput_*.json follows.
THROUGHPUT_ORDER = (
    "training_throughput_50steps_cpu2.json",
    "training_throughput_160steps_cpu2.json",
    "training_throughput_baseline_160steps_cpu2.json",
    "training_throughput_resnet50_160steps_cpu2.json",
    "training_throughput_inceptionv3_160steps_cpu2.json",
    "training_throughput_inceptionv3_50steps_cpu2.json",
    "training_throughput_inceptionv3_50steps_without_resumecheckpoint_cpu2.json",
    "training_throughput_resnet50_xception_50steps_one_process_cpu2.json",
    "training_throughput_10steps_one_process_cpu2.json",
)
CALLBACKS = (
    "HistoryWriter",
    "AtomicCheckpoint",
    "TensorBoard",
    "SamplePredictions",
    "ResumeCheckpoint",
)


def load(name: str) -> dict:
    with open(os.path.join(RESULTS, name), encoding="utf-8") as f:
        return json.load(f)


def machine(info: dict) -> str:
    """One line for a result's machine record (the keys differ between benchmarks)."""
    cpus = info.get("cpus_usable") or info.get("cpu_count") or info.get("cpus")
    parts = [f"{cpus} CPU cores" if cpus else "CPU cores not recorded"]
    platform = info.get("platform", "")
    if platform:
        parts[0] += f" ({platform.split('-')[0]}, {info.get('processor') or 'x86_64'})"
    gpus = info.get("gpus")
    if gpus is not None:
        parts.append("no GPU" if gpus == 0 else f"{gpus} GPUs")
    for key, label in (("tensorflow", "TensorFlow"), ("keras", "Keras")):
        if info.get(key):
            parts.append(f"{label} {info[key]}")
    load_avg = info.get("load_average_at_start")
    if load_avg:
        parts.append(f"load average {load_avg[0]:.2f} at start")
    return ", ".join(parts)


def header(result: dict, command: str, source: str) -> list[str]:
    return [
        f"- date: {result.get('date', 'not recorded')}",
        f"- machine: {machine(result.get('machine', {}))}",
        f"- command: `{command}`",
        f"- result file: [`{source}`](results/{source})",
        "",
    ]


def table(columns: list[str], rows: list[list[str]], right_from: int = 1) -> list[str]:
    """A Markdown table; columns from index right_from on are right-aligned."""
    align = ["---" if i < right_from else "---:" for i in range(len(columns))]
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines + [""]


def f1(x) -> str:
    return "-" if x is None else f"{x:.1f}"


def f2(x) -> str:
    return "-" if x is None else f"{x:.2f}"


def f3(x) -> str:
    return "-" if x is None else f"{x:.3f}"


def count(x) -> str:
    return f"{x:,}"


def mean(values):
    return statistics.fmean(values) if values else None


# --- transfer learning on real photos ------------------------------------------------


def transfer_section() -> list[str]:
    source = "transfer_real_photos_cpu2.json"
    result = load(source)
    groups: dict[tuple[str, str], list[dict]] = {}
    for row in result["rows"]:
        groups.setdefault((row["dataset"], row["recipe"]), []).append(row)
    rows = []
    for (dataset, _), runs in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1])):
        runs = sorted(runs, key=lambda r: r["seed"])
        accuracy = f3(mean([r["test_accuracy"] for r in runs]))
        if len(runs) > 1:
            each = ", ".join(f3(r["test_accuracy"]) for r in runs)
            accuracy += f" ({each})"
        rows.append(
            [
                f"{dataset} ({runs[0]['test_images']} test)",
                runs[0]["description"],
                ", ".join(str(r["seed"]) for r in runs),
                accuracy,
                f3(mean([r["test_macro_f1"] for r in runs])),
                f3(mean([r["test_gap"] for r in runs])),
                f"{mean([r['seconds_frozen'] for r in runs]):.0f}",
                f"{mean([r['seconds_finetune'] for r in runs]):.0f}",
                f"{mean([r['seconds_total'] for r in runs]):.0f}",
            ]
        )
    lines = [
        "## Transfer learning on real photos",
        "",
        "`configs/<dataset>_<recipe>.cfg` trained on the real photos in `../shared/data`",
        "and evaluated on each dataset's separate test folder. vietnam_landmarks holds out",
        "15% of its training photos for validation; intel_scenes trains on all of them.",
        "Seconds are wall time of phase 1 (frozen backbone), phase 2 (fine-tuning) and",
        "the whole run with data preparation and evaluation; with several seeds, every",
        "column is their mean and the accuracy lists each seed's.",
        "",
        *header(
            result,
            "python benchmarks/transfer_real_photos.py --seeds=42,43,44 --append",
            source,
        ),
    ]
    lines += table(
        [
            "dataset",
            "model",
            "seeds",
            "test acc",
            "macro-F1",
            "GAP",
            "phase 1 s",
            "phase 2 s",
            "total s",
        ],
        rows,
        right_from=3,
    )
    return lines


# --- heads and losses side by side ---------------------------------------------------


def compare_section() -> list[str]:
    folder = "compare_vietnam_landmarks_cpu2"
    run = load(f"{folder}/run.json")
    result = load(f"{folder}/comparison.json")
    rows = [
        [
            r["name"],
            count(r["params_trainable"]),
            count(r["params_non_trainable"]),
            f3(r["train_accuracy"]),
            f3(r["val_accuracy"]),
            f3(r["accuracy"]),
            f3(r["macro_f1"]),
            f3(r["gap"]),
            f1(r.get("seconds_per_epoch_frozen")),
            f1(r.get("seconds_per_epoch_finetune")),
        ]
        for r in result["rows"]
    ]
    lines = [
        "## Backbones, heads and losses side by side",
        "",
        f"{result['title']}: every `--models` entry of the flagfile trained on the same",
        "prepared data (5 classes) and evaluated on the same 55 test photos, one seed",
        "each. Parameters are those of phase 2; train accuracy is on augmented, mixed",
        "batches. The table shows a small, easy dataset: it does not rank heads for",
        "thousands of classes.",
        "",
        *header(run, run["command"], f"{folder}/comparison.json"),
    ]
    lines += table(
        [
            "model",
            "trainable params",
            "non-trainable",
            "train acc",
            "val acc",
            "test acc",
            "macro-F1",
            "GAP",
            "s/epoch phase 1",
            "s/epoch phase 2",
        ],
        rows,
    )
    return lines


# --- phase 1 on cached features ------------------------------------------------------


def feature_cache_section() -> list[str]:
    source = "frozen_phase_cache_intel_scenes_lite0_cpu2.json"
    result = load(source)
    rows = []
    for s in result["summary"]:
        if s["cached"]:
            on = f"cached features, {s['passes']} pass{'es' if s['passes'] > 1 else ''}"
            speedup = f"{s['speedup']:.1f}x"
            each = ", ".join(f"{x:.1f}x" for x in s.get("speedup_each_seed", []))
        else:
            on, speedup, each = "images", "1.0x", "-"
        rows.append(
            [
                s["augment"],
                on,
                str(s["runs"]),
                f1(s["phase1_seconds"]),
                f1(s["feature_seconds"]),
                speedup,
                each,
                f3(s["test_accuracy"]),
            ]
        )
    sample = result["rows"][0]
    train_images = max(r["train_images"] or 0 for r in result["rows"])
    lines = [
        "## Phase 1 on cached features",
        "",
        f"Phase 1 alone ({result['epochs']} frozen epochs) of `{result['config'][0]}`",
        f"({sample['backbone']}, {sample['image_size']} px, {train_images} training",
        "photos), on images and on cached features, every run in a fresh process; seconds",
        "include computing the features; each value is the median over the random seeds, and the",
        "speed-up is given per seed too. Test accuracy on the dataset's test folder.",
        "",
        *header(
            result,
            "python benchmarks/frozen_phase_cache.py --seeds=42,43,44",
            source,
        ),
    ]
    lines += table(
        [
            "augment",
            "phase 1 on",
            "runs",
            "seconds",
            "of which features",
            "speed-up",
            "speed-up per seed",
            "test acc",
        ],
        rows,
        right_from=2,
    )
    if result.get("note"):
        lines += [f"Note recorded with the runs: {result['note']}", ""]
    return lines


# --- training throughput -------------------------------------------------------------


def throughput_title(name: str, result: dict) -> str:
    settings = result["settings"]
    backbones = settings["backbones"]
    what = "all backbones" if len(backbones) >= 5 else ", ".join(backbones)
    rounds = settings["rounds"]
    title = f"{settings['steps']} steps per epoch, {what}"
    title += ", one round" if rounds == 1 else f", median of {rounds} rounds"
    without = settings.get("lmrec_without_callbacks") or []
    if without:
        title += f", lmrec without {', '.join(without)}"
    if "one_process" in name:
        title += ", all runs in one process"
    return title


def throughput_command(name: str, result: dict) -> str:
    s = result["settings"]
    parts = ["python benchmarks/training_throughput.py"]
    if len(s["backbones"]) < 5:
        parts.append(f"--backbones={','.join(s['backbones'])}")
    parts.append(f"--steps={s['steps']}")
    if s["rounds"] != 1:
        parts.append(f"--rounds={s['rounds']}")
    if s.get("lmrec_without_callbacks"):
        parts.append(f"--without={','.join(s['lmrec_without_callbacks'])}")
    parts.append(f"--output=benchmarks/results/{name}")
    return " ".join(parts)


def throughput_tables(name: str, result: dict, with_callbacks: bool) -> list[str]:
    rates, hooks = [], []
    for b in result["backbones"]:
        for phase in ("frozen", "finetune"):
            p = b["phases"][phase]
            lmrec, plain = p["lmrec"], p["plain"]
            rates.append(
                [
                    b["backbone"],
                    phase,
                    f"{count(lmrec['trainable_parameters'])} of {count(b['total_parameters'])}",
                    f2(lmrec["steps_per_second"]),
                    f2(plain["steps_per_second"]),
                    f2(p["ratio"]),
                    f2(p["extra_seconds_per_epoch"]),
                    f2(p.get("step_over_forward")),
                ]
            )
            seconds = p.get("lmrec_callback_seconds_per_epoch", {})
            hooks.append(
                [b["backbone"], phase]
                + [f2(seconds.get(c)) for c in CALLBACKS]
                + [
                    f2(lmrec.get("steps_per_second_without_hooks")),
                    f2(plain["steps_per_second"]),
                ]
            )
    lines = table(
        [
            "backbone",
            "phase",
            "trainable params",
            "lmrec steps/s",
            "plain fit steps/s",
            "lmrec / plain",
            "lmrec extra s/epoch",
            "step / forward",
        ],
        rates,
        right_from=2,
    )
    if with_callbacks:
        lines += [
            "Seconds per epoch in each lmrec callback, and lmrec's steps/s with them taken out:",
            "",
        ]
        lines += table(
            ["backbone", "phase", *CALLBACKS, "lmrec loop alone steps/s", "plain fit steps/s"],
            hooks,
            right_from=2,
        )
    return lines


def throughput_section() -> list[str]:
    names = sorted(
        n
        for n in os.listdir(RESULTS)
        if n.startswith("training_throughput_") and n.endswith(".json")
    )
    ordered = [n for n in THROUGHPUT_ORDER if n in names]
    ordered += [n for n in names if n not in ordered]
    first = load(ordered[0])
    s = first["settings"]
    lines = [
        "## Training throughput",
        "",
        "lmrec's own `train_and_evaluate` (every callback it installs, its input pipeline,",
        "validation) against a bare `model.fit` of the same model, built, frozen and",
        "compiled by lmrec's functions, on the same tf.data datasets with no callbacks;",
        "and a frozen-phase step against a forward pass (`step / forward`: about 1 when",
        "only the head gets gradients). Demo data, "
        f"{s['image_size']} px, batch {s['batch_size']}, weights=none, {s['epochs']} epochs",
        "per phase with the first not counted; steps/s leave out the validation pass",
        "(run in both). Unless a table says otherwise each run is in a fresh process.",
        "`lmrec extra s/epoch` is a per-phase fixed cost (the phase-end resume checkpoint,",
        "the sample photos), so the ratio rises with the epoch length.",
        "",
    ]
    for i, name in enumerate(ordered):
        result = load(name)
        lines += [f"### {throughput_title(name, result)}", ""]
        lines += header(result, throughput_command(name, result), name)
        lines += throughput_tables(name, result, with_callbacks=i < 2)
    return lines


# --- input pipeline ------------------------------------------------------------------

PIPELINE_PATHS = (
    ("bare", "(a) bare: parse + decode_jpeg + resize"),
    ("bare_dct2", "(a2) bare, decode_jpeg(ratio=2) + resize"),
    ("bare_lmrec_eval_decode", "(a3) bare, lmrec's eval decode"),
    ("bare_lmrec_train_decode", "(a4) bare, lmrec's training decode (crop)"),
    ("train", "(b) make_dataset, training (`light`)"),
    ("eval", "(c) make_dataset, evaluation"),
)
LARGE_PATHS = (
    ("large_full", "full decode + resize", None),
    ("large_full_then_crop", "full decode + random crop + resize", "crop"),
    ("large_crop_decode", "decode_and_crop_jpeg (random crop) + resize", "crop"),
    ("large_dct2", "decode_jpeg(ratio=2) + resize", "dct2"),
    ("large_dct4", "decode_jpeg(ratio=4) + resize", "dct4"),
    ("large_dct8", "decode_jpeg(ratio=8) + resize", "dct8"),
    ("large_lmrec_eval_decode", "lmrec's eval decode", "eval"),
    ("large_lmrec_train_decode", "lmrec's training decode (crop + DCT)", "crop"),
)


def pipeline_section() -> list[str]:
    source = "input_pipeline_lite0_224px_cpu2.json"
    result = load(source)
    rate, cpu = result["median_images_per_second"], result["median_cpu_ms_per_image"]
    base = rate["bare"]
    rows = [
        [label, f"{rate[k]:.0f}", f1(cpu[k]), f2(rate[k] / base)] for k, label in PIPELINE_PATHS
    ]
    ratios = result["ratios"]
    difference = result["mean_abs_difference_from_full_decode_0_255"]["2400x1800"]
    scale = result["lmrec_dct_scale_2400x1800"]
    gain = result["large_photo_gain_vs_full_decode"]
    large = []
    for key, label, kind in LARGE_PATHS:
        if kind in ("dct2", "dct4", "dct8"):
            diff = f2(difference[kind])
        elif kind == "eval":
            diff = f2(difference[f"dct{scale}"])
        else:
            diff = "0" if kind is None else "(crop)"
        large.append(
            [
                label,
                f"{rate[key]:.0f}",
                f1(cpu[key]),
                "1.00" if key == "large_full" else f2(gain[key]),
                diff,
            ]
        )
    lines = [
        "## Input pipeline",
        "",
        f"{result['photos']}, written to TFRecords by lmrec's writer; lmrec's",
        "`make_dataset` against bare decode + resize paths over the same files",
        f"({result['backbone']} at {result['image_size']} px, batch {result['batch_size']},",
        f"median of {result['rounds']} interleaved rounds of {result['images_timed']['800x600']}",
        "images, in one process).",
        "",
        *header(result, "python benchmarks/input_pipeline.py", source),
    ]
    lines += table(["path", "images/s", "CPU ms/image", "ratio to (a)"], rows)
    lines += [
        f"The same decoding with and without the rest of `make_dataset`: training "
        f"{ratios['train_vs_same_decode']:.2f} of (a4), evaluation "
        f"{ratios['eval_vs_same_decode']:.2f} of (a3).",
        "",
        f"Large photos ({result['large_photos']}, to {result['image_size']} px); the last",
        "column is the mean absolute difference of the model input from the full",
        "decode's, in levels of 255 (an area resize of the full decode differs from the",
        f"bilinear one by {difference['area_resize']:.2f}):",
        "",
    ]
    lines += table(["decode", "images/s", "CPU ms/image", "gain", "difference"], large)
    return lines


# --- predict throughput --------------------------------------------------------------

ENGINES = ("lmrec", "lmrec+xla", "lmrec+tflite", "lmrec+tflite-int8")


def predict_section() -> list[str]:
    source = "predict_throughput_128photos_cpu2.json"
    result = load(source)
    rows = []
    for name, b in result["backbones"].items():
        paths = b["paths"]
        cells = [name, str(b["image_size"]), f1(b["plain_images_per_s"])]
        for engine in ENGINES:
            p = paths[engine]
            cells.append(f"{p['images_per_s']:.1f} ({p['ratio_to_plain']:.2f}x)")
        compute = " / ".join(
            f"{paths[e]['compute_only_images_per_s']:.1f}"
            for e in ("lmrec", "lmrec+tflite", "lmrec+tflite-int8")
        )
        rows.append(cells + [compute])
    resnet = result["backbones"].get("resnet50", {}).get("paths", {})
    lines = [
        "## Tagging speed on a CPU",
        "",
        f"{result['images']} real photos of `../shared/data/vn_landmarks` (thumbnails to",
        "multi-megapixel JPEGs, WebP and PNG among them), tagged in one process with what",
        "the Keras examples do (`keras.utils.load_img` photo by photo, then `model.predict`",
        f"per batch of {result['batch_size']}) and with `lmrec.predict.predict` on four",
        "engines: the SavedModel's `serving_images` signature, the Keras model under XLA,",
        "and the float32 and dynamic-range int8 TFLite files. Each backbone at its default",
        "size with an 8-class head (EfficientNet-Lite0 with its ImageNet weights, the others",
        "weights=none). Images/s, and the ratio to the plain loop; the last column is the",
        "compute alone on in-memory batches (SavedModel / TFLite / int8).",
        "",
        *header(result, "python benchmarks/predict_throughput.py", source),
    ]
    lines += table(
        [
            "backbone",
            "size",
            "plain",
            "lmrec (SavedModel)",
            "lmrec + XLA",
            "lmrec + TFLite",
            "lmrec + TFLite int8",
            "compute alone",
        ],
        rows,
    )
    if resnet:
        ceiling = result["flop_ceiling_gflops"]
        lines += [
            "The machine's float32 ceiling (best of repeated 2048x2048 `tf.matmul`s) was",
            f"{ceiling:.0f} GFLOP/s. ResNet50 (7.75 GFLOP per 224 px image) reached",
            f"{resnet['lmrec+tflite']['fraction_of_flop_ceiling']:.2f} of it end to end with"
            " the float32 TFLite file and",
            f"{resnet['lmrec+tflite']['compute_fraction_of_flop_ceiling']:.2f} for the compute"
            " alone. int8 runs above the float32 ceiling (int8 dot products do more work",
            "per cycle), so its fraction is not comparable. The heads are untrained, so the",
            "top-1 agreement with the plain loop (in the JSON) is a rough check only.",
            "",
        ]
    return lines


# --- prepare workers -----------------------------------------------------------------


def prepare_section() -> list[str]:
    source = "prepare_workers_gldv2_layout_cpu2.json"
    result = load(source)
    settings = result["settings"]
    rows = [
        [
            r["label"],
            str(r["kept"]),
            f1(r["seconds"]),
            f1(r["images_per_s"]),
            f"{r['rss_parent_mb']:.0f}",
            f"{r['rss_worker_mb']:.0f}",
        ]
        for r in result["rows"]
    ]
    command = "python benchmarks/prepare_workers.py"
    if settings.get("beam"):
        command += " --beam"
    lines = [
        "## Preparing data with worker processes",
        "",
        "`--source=gldv2` prepare on a tree in Google Landmarks v2's layout built from the",
        f"real photos in `../shared/data` (each resized to {settings['side']} px and saved",
        f"{settings['copies']} times), `--max_image_side=800` (decode, validate, downscale,",
        "re-encode, write), each run in a fresh process.",
        "",
        *header(result, command, source),
    ]
    lines += table(
        [
            "run",
            "images",
            "seconds",
            "images/s",
            "peak RSS parent MB",
            "peak RSS worker MB",
        ],
        rows,
    )
    lines += [
        f"2 workers ran at {result['speedup_2_vs_1']:.2f}x one worker's rate; the parent's",
        f"peak memory with twice the images was {result['parent_memory_2x_vs_1x']:.2f}x.",
        "Each worker imports TensorFlow at its start, a fixed cost that matters less as",
        "datasets grow.",
        "",
    ]
    return lines


# --- open-set recognition ------------------------------------------------------------


def _bar_cell(cell, number=f3) -> str:
    """A measured figure with the bar it is checked against, when it has one."""
    if not isinstance(cell, dict):
        return number(cell)
    met = "" if cell.get("met") is None else (" (meets)" if cell["met"] else " (misses)")
    return f"{number(cell['value'])}{met}"


def open_set_section() -> list[str]:
    source = "open_set_vietnam_landmarks_lite0_cpu2.json"
    if not os.path.isfile(os.path.join(RESULTS, source)):
        return []
    result = load(source)
    part = result["open_set"]
    photos = part["photos"]
    rows = [
        [
            r["classifier"],
            r["gallery"],
            r["open_set_score"],
            f3(r["threshold"]),
            _bar_cell(r["accuracy_without_distractors"]),
            _bar_cell(r["gap_with_distractors"]),
            f3(r.get("gap_with_distractors_ties_random_mean")),
            f3(r["gap_with_distractors_ranked_by_top_probability"]),
            _bar_cell(r["landmarks_rejected"]),
            f3(r["distractors_rejected"]),
        ]
        for r in part["rows"]
    ]
    first = part["rows"][0]
    bars = ", ".join(
        f"{name} {first[key]['bar']}"
        for name, key in (
            ("accuracy", "accuracy_without_distractors"),
            ("GAP with distractors", "gap_with_distractors"),
            ("landmarks rejected", "landmarks_rejected"),
        )
    )
    lines = [
        "## Open-set recognition: softmax, kNN and hybrid",
        "",
        f"`{result['config']}` (all classes) and its embedding gallery of the prepared",
        f"train split ({photos['gallery']} photos). The reject threshold of each classifier",
        "and open-set score is chosen on validation data only: the validation split",
        f"({photos['validation_landmarks']} landmark photos) plus {photos['choosing_distractors']}",
        "intel_scenes_small train photos as distractors. It is then applied to the",
        f"{photos['test_landmarks']} vn_landmarks test photos and {photos['test_distractors']}",
        "intel_scenes_small test photos (distractors). A rejected photo has no prediction;",
        "a kept distractor is a wrong prediction ranked by its open-set score. Equal scores",
        "(frequent with kNN votes) rank wrong predictions first; `random ties` is the mean",
        "over random orders among them, and `by top prob.` ranks by the top class",
        "probability instead. The second",
        f"gallery also holds the {photos['choosing_distractors']} intel train photos as",
        f'"no landmark" neighbours. Bars: {bars}.',
        "",
        *header(result, result["command"], source),
    ]
    lines += table(
        [
            "classifier",
            "gallery",
            "open-set score",
            "threshold",
            "accuracy (no distractors)",
            "GAP with distractors",
            "random ties",
            "by top prob.",
            "landmarks rejected",
            "distractors rejected",
        ],
        rows,
        right_from=3,
    )
    lines += ["Retrieval of the test landmarks over the gallery:", ""]
    lines += table(
        ["gallery", "photos", "mAP@100", "recall@1", "recall@5"],
        [
            [
                name,
                count(r["gallery_photos"]),
                f3(r["map_at_100"]),
                f3(r["recall_at_1"]),
                f3(r["recall_at_5"]),
            ]
            for name, r in part["retrieval"].items()
        ],
    )
    added = result["added_landmark"]
    lines += [
        "A landmark added without retraining: the same config trained without",
        f"{added['left_out']}, then `gallery.add` of its {added['added_photos']} training photos;",
        f"the whole test folder ({added['test_photos_of_added_class']} photos of the added",
        f"class, {added['test_photos_of_other_classes']} of the others). The loss is in",
        "accuracy points on the other classes against the same model's softmax before the",
        f"add ({f3(added['other_classes_accuracy_softmax_before_add'])}).",
        "",
    ]
    lines += table(
        ["classifier", "added class acc", "other classes acc", "loss, points"],
        [
            [
                name,
                _bar_cell(r["added_class_accuracy"]),
                f3(r["other_classes_accuracy"]),
                _bar_cell(r["other_classes_loss_points_vs_softmax_before_add"], f1)
                if "other_classes_loss_points_vs_softmax_before_add" in r
                else "-",
            ]
            for name, r in added["by_classifier"].items()
        ],
    )
    speed = result["speed"]
    build, big, add = speed["gallery_build"], speed["knn_big_gallery"], speed["gallery_add"]
    lines += [
        "Speed. The gallery build embeds the vn train photos, each linked "
        f"{build['copies_of_each_train_photo']} times",
        f"and prepared as shards ({count(build['photos'])} photos), end to end; the plain loop is",
        "the embedding model in a `tf.function` mapped over the same shards, read and",
        "decoded by the same tf.data reader (the model loaded beforehand, nothing written);",
        "`forward alone` runs it on the photos decoded in memory. predict tags",
        f"{count(big['predict_photos'])} photos (the vn test folder and the intel_scenes_small "
        "test and train",
        "folders) with `--classifier=hybrid` over a gallery of "
        f"{count(big['gallery_rows'])} embeddings (the train",
        "photos, the intel distractors and random unit vectors, float16) against",
        "`--classifier=softmax`; the kNN step is the search, votes and scores of a batch of",
        f"{big['batch']} embeddings. Each pair alternates over several rounds; medians.",
        "",
    ]
    lines += table(
        ["speed", "lmrec", "reference", "ratio"],
        [
            [
                f"gallery build, {count(build['photos'])} photos (photos/s)",
                f1(build["build_photos_per_second"]),
                f"{f1(build['plain_loop_photos_per_second'])} (plain embedding loop)",
                _bar_cell(build["build_over_forward"], f2),
            ],
            [
                f"gallery build, {count(build['photos'])} photos (photos/s)",
                f1(build["build_photos_per_second"]),
                f"{f1(build['forward_alone_photos_per_second'])} (forward alone, decoded)",
                f2(build["build_over_forward_alone"]),
            ],
            [
                f"gallery add, {count(add['photos'])} 150 px files (photos/s)",
                f1(add["photos_per_second"]),
                "-",
                "-",
            ],
            [
                f"predict, hybrid over {count(big['gallery_rows'])} embeddings (ms/photo)",
                f2(big["predict_hybrid_ms_per_photo"]),
                f"{f2(big['predict_softmax_ms_per_photo'])} (predict, softmax)",
                "+" + _bar_cell(big["knn_added_fraction"]),
            ],
            [
                f"kNN step over {count(big['gallery_rows'])} embeddings (ms/photo)",
                f2(big["knn_ms_per_photo"]),
                f"{f1(big['forward_ms_per_photo'])} (Lite0 forward pass)",
                f3(big["knn_over_forward"]),
            ],
        ],
    )
    if "measured_separately" in big:
        float16 = speed["knn_big_gallery_float16_search"]
        lines += [
            "The predict and kNN rows come from a second run of that part on the same model "
            "and gallery;",
            "in the first, the gallery was searched in float16 (cast a few MiB at a time): "
            f"predict +{f3(float16['knn_added_fraction']['value'])},",
            f"kNN step {f2(float16['knn_ms_per_photo'])} ms/photo, "
            f"{f3(float16['knn_over_forward'])} of the forward pass.",
            "",
        ]
    memory = big["bytes_per_row_over_2d"]
    lines += [
        f"The gallery holds {f1(big['gallery_megabytes_float16'])} MB of embeddings "
        f"({big['dimension']} dimensions) on disk and as loaded: {f2(memory)} x (2 bytes x "
        "dimension x rows); the Recognizer (evaluate, predict) searches a float32 copy of a "
        "gallery up to 1 GiB, twice that.",
        "",
    ]
    return lines


# --- GPS as evidence -----------------------------------------------------------------


def geo_prior_section() -> list[str]:
    source = "geo_prior_vietnam_landmarks_lite0_cpu2.json"
    if not os.path.isfile(os.path.join(RESULTS, source)):
        return []
    result = load(source)
    settings, photos = result["settings"], result["photos"]
    regions = ", ".join(f"{name} {n}" for name, n in photos["far_regions"].items())
    thresholds = "; ".join(
        f"{name}: {t['open_set_score']} below {t['reject_threshold']:g}"
        for name, t in result["thresholds"].items()
    )
    paragraph = (
        f"`{result['config']}` and its gallery, with the class locations of "
        f"`{result['locations_file']}` in a copy's labels.json. The {photos['count']} "
        "vn_landmarks test photos are decoded once and saved three times as JPEG with the "
        "same pixels, differing only in their EXIF GPS: none (`no_gps`), at their landmark "
        f"moved by up to {settings['true_gps_jitter_m']:.0f} m (`true_gps`), and at a random "
        f"point on another continent (`far_gps`: {regions}; the nearest "
        f"{count(round(photos['nearest_far_gps_to_a_landmark_km']))} km from a landmark). "
        "Each folder is tagged by `lmrec.predict.predict`; accuracy counts the labels equal "
        "to the class folder, `no landmark` and `GPS note` are the fractions of rows "
        'labelled "no landmark" and with a `gps_note`. Every landmark reaches at least '
        f"{settings['geo_prior_min_radius_m'] / 1000:g} km (`--geo_prior_min_radius_m`); "
        f"soft decays over {settings['geo_prior_scale_km']:g} km past that. Reject "
        f"thresholds as predict resolves them: {thresholds}; a photo that GPS leaves "
        'without any class is "no landmark" whatever the threshold.'
    )
    lines = [
        "## GPS as evidence: `--geo_prior`",
        "",
        *textwrap.wrap(paragraph, 88, break_on_hyphens=False, break_long_words=False),
        "",
        *header(result, result["command"], source),
    ]
    lines += table(
        ["classifier", "photos' GPS", "geo prior", "accuracy", "no landmark", "GPS note"],
        [
            [
                r["classifier"],
                r["photos_gps"],
                r["geo_prior"],
                f3(r["accuracy"]),
                f3(r["no_landmark"]),
                f3(r["with_gps_note"]),
            ]
            for r in result["runs"]
        ],
        right_from=3,
    )
    descriptions = {
        "true_gps_accuracy_gain": "accuracy with true GPS minus without",
        "far_gps_no_landmark": '"no landmark" with far GPS',
        "no_gps_rows_differing_from_off": "rows without GPS differing from `off`",
    }
    lines += [
        "Bars (`no_gps` rows are compared with `--geo_prior=off` in label, score and top-k):",
        "",
    ]
    lines += table(
        ["classifier", "geo prior", "figure", "bar", "measured"],
        [
            [
                b["classifier"],
                b["geo_prior"],
                descriptions.get(b["name"], b["name"]),
                b["bar"],
                _bar_cell(b, count if isinstance(b["value"], int) else f3),
            ]
            for b in result["bars"]
        ],
        right_from=4,
    )
    without = [r["accuracy"] for r in result["runs"] if r["photos_gps"] == "no_gps"]
    if without and min(without) == 1.0:
        lines += [
            "Without GPS every classifier already labels every test photo right, so true GPS",
            "can only keep that accuracy here: the first bar shows that it costs none.",
            "",
        ]
    return lines


def render() -> str:
    lines = [
        "# lmrec benchmarks",
        "",
        "<!-- Rendered by benchmarks/render_readme.py from benchmarks/results/; "
        "do not edit by hand. -->",
        "",
        "Measurements of lmrec against the plain way of doing the same thing, each from",
        "one result file in [`results/`](results/). A result file is named by its setting",
        "and machine (`cpu2`: a 2-core CPU without GPU, shared with other jobs, so a",
        "rate moves by several percent between runs). Regenerate this page after adding",
        "or replacing a result file:",
        "",
        "```bash",
        "python benchmarks/render_readme.py          # rewrite this page",
        "python benchmarks/render_readme.py --check  # exit 1 if it is out of date",
        "```",
        "",
    ]
    for section in (
        transfer_section,
        compare_section,
        feature_cache_section,
        throughput_section,
        pipeline_section,
        predict_section,
        prepare_section,
        open_set_section,
        geo_prior_section,
    ):
        lines += section()
    while lines and lines[-1] == "":
        lines.pop()
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--check",
        action="store_true",
        help="exit 1 when benchmarks/README.md differs from what would be rendered",
    )
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        try:
            with open(README, encoding="utf-8") as f:
                current = f.read()
        except FileNotFoundError:
            current = None
        if current != text:
            print(
                "benchmarks/README.md is out of date: run python benchmarks/render_readme.py",
                file=sys.stderr,
            )
            return 1
        return 0
    with open(README, "w", encoding="utf-8") as f:
        f.write(text)
    print(f"wrote {os.path.relpath(README)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
