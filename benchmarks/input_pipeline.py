"""Input pipeline speed: lmrec's make_dataset against the bare decode + resize rate, in one run.

    python benchmarks/input_pipeline.py [--images=640] [--rounds=3] [--backbone=efficientnet_lite0]

Builds, in a temporary folder (never inside the repo), 800x600 JPEG copies of the
real photos in ../shared/data/vn_landmarks (three differently framed copies of
each, so a pass holds several hundred images) and writes them to TFRecord shards
with lmrec's own writer (records.ShardWriter). Then, in one process and on the
same cores, it times as images/s:

  (a)  bare:       TFRecords -> parse -> decode_jpeg -> resize to the model size,
                   AUTOTUNE, batched: the plain decode + resize rate of these files.
  (a2) bare, decode_jpeg(ratio=2) (DCT downscaling) -> resize.
  (a3) bare, lmrec's own eval decode (pipeline.decode_and_resize).
  (a4) bare, lmrec's own training decode (pipeline.random_crop_and_resize).
  (b)  train:      lmrec make_dataset(training=True, augment_policy="light").
  (c)  eval:       lmrec make_dataset(training=False), one ordered pass.

and reports b/a and c/a (checked against TARGETS), and b/a4 and c/a3: the same
decoding with and without the rest of make_dataset (interleave, shuffle, flip,
batching, normalization), i.e. what the pipeline's structure costs. Resizing is
the pipeline's (bilinear with antialiasing) everywhere. Besides images/s (wall
clock) it reports the process's CPU time per image, which other jobs on the
machine disturb less.

(d) Large photos (2400x1800 copies, in memory): full decode + resize, full decode
+ random crop + resize (the plain random-resized crop), decode_and_crop_jpeg +
resize, and decode_jpeg(ratio=2|4) (DCT downscaling) + resize, with the gain over
the full decode and, for DCT, the mean absolute difference of the model input
from the full-decode one (0-255 levels), next to the difference between two
ordinary resizes of the full decode (area vs antialiased bilinear) for scale.

Measurements are interleaved over --rounds rounds (a, a2, ..., c, then again)
and the median of each is reported, so load from other jobs on the machine hits
every path alike. Prints Markdown tables and writes
benchmarks/results/input_pipeline_lite0_224px_cpu2.json.
"""

from __future__ import annotations

import argparse
import datetime
import io
import json
import os
import random
import resource
import shutil
import statistics
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

import machine_info  # noqa: E402 - benchmarks/ is on sys.path when run as a script

PHOTOS = os.path.join(REPO, "..", "shared", "data", "vn_landmarks")
RESULT = os.path.join(REPO, "benchmarks", "results", "input_pipeline_lite0_224px_cpu2.json")
# Three framings per photo (ImageOps.fit centering): distinct bytes, same content statistics.
FRAMINGS = ((0.5, 0.5), (0.3, 0.4), (0.7, 0.6))
TARGETS = {"train": 0.85, "eval": 0.9}


def photo_paths(root: str) -> list[tuple[str, str]]:
    """(class name, path) for every file under <root>/{train,test}/<class>/."""
    found = []
    for split in ("train", "test"):
        split_dir = os.path.join(root, split)
        if not os.path.isdir(split_dir):
            continue
        for class_name in sorted(os.listdir(split_dir)):
            class_dir = os.path.join(split_dir, class_name)
            if os.path.isdir(class_dir):
                for name in sorted(os.listdir(class_dir)):
                    found.append((class_name, os.path.join(class_dir, name)))
    return found


def resized_jpegs(paths, size: tuple[int, int], framings=FRAMINGS) -> list[tuple[str, bytes]]:
    """(class name, JPEG bytes at size) per photo and framing; unreadable files are skipped."""
    from PIL import Image, ImageOps

    out = []
    for class_name, path in paths:
        try:
            with Image.open(path) as image:
                image = ImageOps.exif_transpose(image).convert("RGB")
                for centering in framings:
                    buffer = io.BytesIO()
                    fitted = ImageOps.fit(
                        image, size, Image.Resampling.LANCZOS, centering=centering
                    )
                    fitted.save(buffer, "JPEG", quality=90)
                    out.append((class_name, buffer.getvalue()))
        except OSError as error:
            print(f"skipped {path}: {error}", file=sys.stderr)
    return out


def write_shards(photos: list[tuple[str, bytes]], directory: str, size, per_shard: int) -> int:
    """Writes the photos, shuffled (seeded), as train-* shards with lmrec's ShardWriter."""
    from lmrec.data import records

    classes = sorted({c for c, _ in photos})
    order = list(range(len(photos)))
    random.Random(0).shuffle(order)
    writer = records.ShardWriter(directory, "train", per_shard)
    for n, index in enumerate(order):
        class_name, encoded = photos[index]
        writer.write(
            records.Record(
                image_id=f"{class_name}/{n:05d}.jpg",
                label=classes.index(class_name),
                encoded=encoded,
                height=size[1],
                width=size[0],
            )
        )
    writer.finish()
    return writer.count


# --- the paths measured ---------------------------------------------------------------------


def _resize(image, image_size: int):
    import tensorflow as tf

    image = tf.image.resize(image, [image_size, image_size], method="bilinear", antialias=True)
    return tf.clip_by_value(image, 0.0, 255.0)


def _random_window(encoded, seed: int | None = None):
    """A random crop window (40-100% of the area, aspect 3/4-4/3) from the JPEG header."""
    import tensorflow as tf

    begin, size, _ = tf.image.sample_distorted_bounding_box(
        tf.io.extract_jpeg_shape(encoded),
        bounding_boxes=tf.constant([0.0, 0.0, 1.0, 1.0], shape=[1, 1, 4]),
        min_object_covered=0.0,
        aspect_ratio_range=(3 / 4, 4 / 3),
        area_range=(0.4, 1.0),
        max_attempts=10,
        use_image_if_no_bounding_boxes=True,
    )
    return tf.stack([begin[0], begin[1], size[0], size[1]])


def decode_functions(image_size: int) -> dict:
    """encoded JPEG -> float32 [S, S, 3], one per way of decoding measured."""
    import tensorflow as tf

    def full(encoded):
        return _resize(tf.io.decode_jpeg(encoded, channels=3), image_size)

    def full_then_crop(encoded):
        window = _random_window(encoded)
        image = tf.io.decode_jpeg(encoded, channels=3)
        image = tf.image.crop_to_bounding_box(image, window[0], window[1], window[2], window[3])
        return _resize(image, image_size)

    def crop_decode(encoded):
        return _resize(
            tf.io.decode_and_crop_jpeg(encoded, _random_window(encoded), channels=3), image_size
        )

    def dct(ratio):
        return lambda encoded: _resize(
            tf.io.decode_jpeg(encoded, channels=3, ratio=ratio), image_size
        )

    return {
        "full": full,
        "full_then_crop": full_then_crop,
        "crop_decode": crop_decode,
        "dct2": dct(2),
        "dct4": dct(4),
        "dct8": dct(8),
    }


def bare_dataset(files: list[str], decode, batch_size: int):
    """TFRecords -> parse -> decode + resize -> batch, AUTOTUNE everywhere, order not kept."""
    import tensorflow as tf

    from lmrec.data import records

    def parse_and_decode(serialized):
        example = records.parse_example(serialized)
        return decode(example[records.ENCODED]), tf.cast(example[records.LABEL], tf.int32)

    dataset = tf.data.TFRecordDataset(files, num_parallel_reads=tf.data.AUTOTUNE).repeat()
    dataset = dataset.map(
        parse_and_decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=False
    )
    return dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def in_memory_dataset(encoded: list[bytes], decode, batch_size: int):
    import tensorflow as tf

    dataset = tf.data.Dataset.from_tensor_slices(encoded).repeat()
    dataset = dataset.map(decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=False)
    return dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)  # every thread of this process
    return usage.ru_utime + usage.ru_stime


def measure(dataset, warmup_batches: int, timed_batches: int) -> tuple[float, float]:
    """(images/s, CPU ms per image) after warmup_batches untimed (thread pools, autotuning,
    shuffle buffer)."""
    iterator = iter(dataset)
    for _ in range(warmup_batches):
        next(iterator)
    images = 0
    started, cpu_started = time.perf_counter(), _cpu_seconds()
    for _ in range(timed_batches):
        batch = next(iterator)
        images += int((batch[0] if isinstance(batch, tuple) else batch).shape[0])
    seconds, cpu = time.perf_counter() - started, _cpu_seconds() - cpu_started
    return images / seconds, 1000 * cpu / images


def dct_differences(encoded: list[bytes], image_size: int) -> dict[str, float]:
    """Mean |model input - full-decode model input| in 0-255 levels, for DCT-downscaled
    decodes and, for scale, for an area resize of the full decode."""
    import numpy as np
    import tensorflow as tf

    functions = decode_functions(image_size)
    functions["area_resize"] = lambda e: tf.image.resize(
        tf.io.decode_jpeg(e, channels=3), [image_size, image_size], method="area"
    )
    reference = [functions["full"](e).numpy() for e in encoded]

    def difference(name):
        pairs = zip(encoded, reference, strict=True)
        values = [np.abs(functions[name](e).numpy() - r).mean() for e, r in pairs]
        return round(float(np.mean(values)), 2)

    return {name: difference(name) for name in ("dct2", "dct4", "dct8", "area_resize")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=640, help="images timed per measurement")
    parser.add_argument("--large_images", type=int, default=160, help="per large-photo measurement")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--photos", default=PHOTOS)
    parser.add_argument("--output", default=RESULT)
    args = parser.parse_args(argv)

    paths = photo_paths(args.photos)
    if not paths:
        print(
            f"Skipped: no photos in {os.path.normpath(args.photos)} "
            "(see ../shared/data/README.md).",
            file=sys.stderr,
        )
        return 0
    import tensorflow as tf

    from lmrec.data import augment, pipeline, records
    from lmrec.models import backbones

    spec = backbones.get_spec(args.backbone)
    size = spec.default_size
    info = machine_info.machine()
    tmp = tempfile.mkdtemp(prefix="lmrec-input-bench-")
    try:
        started = time.time()
        photos = resized_jpegs(paths, (800, 600))
        count = write_shards(photos, tmp, (800, 600), per_shard=100)
        large = [
            e
            for _, e in resized_jpegs(
                paths[:: max(1, len(paths) // 48)][:48], (2400, 1800), FRAMINGS[:1]
            )
        ]
        print(
            f"{count} 800x600 JPEGs in {tmp} ({time.time() - started:.0f} s), {len(large)} "
            f"2400x1800 in memory; model input {size} px ({args.backbone}); "
            f"{info['cpus_usable']} usable CPU cores.",
            file=sys.stderr,
        )
        files = sorted(tf.io.gfile.glob(records.shard_pattern(tmp, "train")))
        batch = args.batch_size
        timed = max(1, args.images // batch)
        eval_timed = min(timed, count // batch - 3)
        functions = decode_functions(size)
        light = augment.get_policy("light")

        def train():
            return pipeline.make_dataset(
                records.shard_pattern(tmp, "train"),
                size,
                spec.preprocess,
                batch,
                training=True,
                augment_policy="light",
                seed=None,
            )

        def evaluation():
            return pipeline.make_dataset(
                records.shard_pattern(tmp, "train"),
                size,
                spec.preprocess,
                batch,
                training=False,
                num_examples=count,
            )

        pipelines = {
            "bare": (lambda: bare_dataset(files, functions["full"], batch), timed),
            "bare_dct2": (lambda: bare_dataset(files, functions["dct2"], batch), timed),
            "bare_lmrec_eval_decode": (
                lambda: bare_dataset(files, lambda e: pipeline.decode_and_resize(e, size), batch),
                timed,
            ),
            "bare_lmrec_train_decode": (
                lambda: bare_dataset(
                    files,
                    lambda e: pipeline.random_crop_and_resize(e, size, light, None),
                    batch,
                ),
                timed,
            ),
            "train": (train, timed),
            "eval": (evaluation, eval_timed),
        }
        large_batch = 16
        large_timed = max(1, args.large_images // large_batch)
        large_paths = {
            f"large_{name}": (
                lambda f=functions[name]: in_memory_dataset(large, f, large_batch),
                large_timed,
            )
            for name in ("full", "full_then_crop", "crop_decode", "dct2", "dct4", "dct8")
        }
        large_paths["large_lmrec_eval_decode"] = (
            lambda: in_memory_dataset(
                large, lambda e: pipeline.decode_and_resize(e, size), large_batch
            ),
            large_timed,
        )
        large_paths["large_lmrec_train_decode"] = (
            lambda: in_memory_dataset(
                large,
                lambda e: pipeline.random_crop_and_resize(e, size, light, None),
                large_batch,
            ),
            large_timed,
        )
        rates: dict[str, list[float]] = {name: [] for name in [*pipelines, *large_paths]}
        cpu_ms: dict[str, list[float]] = {name: [] for name in rates}
        for round_index in range(args.rounds):
            for name, (make, batches) in [*pipelines.items(), *large_paths.items()]:
                rate, cpu = measure(make(), warmup_batches=3, timed_batches=batches)
                rates[name].append(round(rate, 1))
                cpu_ms[name].append(round(cpu, 2))
                print(
                    f"round {round_index + 1}: {name:24s} {rate:7.1f} images/s "
                    f"{cpu:6.2f} CPU ms/image",
                    file=sys.stderr,
                )
        differences = dct_differences(large[:16], size)
        differences_800 = dct_differences([e for _, e in photos[:96:3]], size)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    median = {name: round(statistics.median(values), 1) for name, values in rates.items()}
    median_cpu = {name: round(statistics.median(values), 2) for name, values in cpu_ms.items()}
    ratios = {
        "train_vs_bare": round(median["train"] / median["bare"], 3),
        "eval_vs_bare": round(median["eval"] / median["bare"], 3),
        "train_vs_same_decode": round(median["train"] / median["bare_lmrec_train_decode"], 3),
        "eval_vs_same_decode": round(median["eval"] / median["bare_lmrec_eval_decode"], 3),
        "bare_dct2_vs_bare": round(median["bare_dct2"] / median["bare"], 3),
    }
    large_gain = {
        name: round(median[name] / median["large_full"], 2)
        for name in large_paths
        if name != "large_full"
    }
    large_gain["large_crop_decode_vs_full_then_crop"] = round(
        median["large_crop_decode"] / median["large_full_then_crop"], 2
    )
    info["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    result = {
        "date": datetime.date.today().isoformat(),
        "machine": info,
        "backbone": args.backbone,
        "image_size": size,
        "batch_size": batch,
        "photos": f"{count} 800x600 JPEG copies (quality 90) of ../shared/data/vn_landmarks",
        "large_photos": f"{len(large)} 2400x1800 JPEG copies (quality 90), in memory",
        # The DCT scale lmrec's eval decode picks for them.
        "lmrec_dct_scale_2400x1800": max(s for s in pipeline.DCT_SCALES if 1800 >= s * size),
        "rounds": args.rounds,
        "images_timed": {
            "800x600": timed * batch,
            "eval": eval_timed * batch,
            "large": large_timed * large_batch,
        },
        "images_per_second": rates,
        "cpu_ms_per_image": cpu_ms,
        "median_images_per_second": median,
        "median_cpu_ms_per_image": median_cpu,
        "ratios": ratios,
        "targets": TARGETS,
        "meets_targets": {
            "train": ratios["train_vs_bare"] >= TARGETS["train"],
            "eval": ratios["eval_vs_bare"] >= TARGETS["eval"],
        },
        "large_photo_gain_vs_full_decode": large_gain,
        "mean_abs_difference_from_full_decode_0_255": {
            "2400x1800": differences,
            "800x600": differences_800,
        },
    }
    os.makedirs(os.path.dirname(args.output), exist_ok=True)
    with open(args.output, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=2)
        f.write("\n")
    print(table(result))
    print(f"\nWrote {args.output}", file=sys.stderr)
    return 0


def table(result: dict) -> str:
    m, c, r = (
        result["median_images_per_second"],
        result["median_cpu_ms_per_image"],
        result["ratios"],
    )
    g = result["large_photo_gain_vs_full_decode"]
    d = result["mean_abs_difference_from_full_decode_0_255"]
    size = result["image_size"]
    scale = result["lmrec_dct_scale_2400x1800"]

    def row(label, name, ratio):
        return f"| {label} | {m[name]:.0f} | {c[name]:.1f} | {ratio} |"

    lines = [
        f"800x600 JPEGs -> {size} px, batch {result['batch_size']}, "
        f"{result['machine']['cpus_usable']} CPU cores, median of {result['rounds']} rounds",
        "",
        "| path | images/s | CPU ms/image | ratio to (a) |",
        "|---|---:|---:|---:|",
        row("(a) bare: parse + decode_jpeg + resize", "bare", "1.00"),
        row(
            "(a2) bare, decode_jpeg(ratio=2) + resize",
            "bare_dct2",
            f"{r['bare_dct2_vs_bare']:.2f}",
        ),
        row(
            "(a3) bare, lmrec eval decode",
            "bare_lmrec_eval_decode",
            f"{m['bare_lmrec_eval_decode'] / m['bare']:.2f}",
        ),
        row(
            "(a4) bare, lmrec training decode (crop)",
            "bare_lmrec_train_decode",
            f"{m['bare_lmrec_train_decode'] / m['bare']:.2f}",
        ),
        row(
            "(b) make_dataset, training (light)",
            "train",
            f"**{r['train_vs_bare']:.2f}** (target {TARGETS['train']}; "
            f"{r['train_vs_same_decode']:.2f} of a4)",
        ),
        row(
            "(c) make_dataset, evaluation",
            "eval",
            f"**{r['eval_vs_bare']:.2f}** (target {TARGETS['eval']}; "
            f"{r['eval_vs_same_decode']:.2f} of a3)",
        ),
        "",
        f"2400x1800 JPEGs -> {size} px (mean abs difference from the full decode, 0-255 "
        f"levels; an area resize of the full decode differs by {d['2400x1800']['area_resize']}; "
        f"at 800x600 ratio=2 differs by {d['800x600']['dct2']}, area by "
        f"{d['800x600']['area_resize']})",
        "",
        "| decode | images/s | CPU ms/image | gain vs full decode | mean abs difference |",
        "|---|---:|---:|---:|---:|",
        f"| full decode + resize | {m['large_full']:.0f} | {c['large_full']:.1f} | 1.00 | 0 |",
        f"| full decode + random crop + resize | {m['large_full_then_crop']:.0f} | "
        f"{c['large_full_then_crop']:.1f} | {g['large_full_then_crop']:.2f} | (crop) |",
        f"| decode_and_crop_jpeg (random crop) + resize | {m['large_crop_decode']:.0f} | "
        f"{c['large_crop_decode']:.1f} | {g['large_crop_decode']:.2f} "
        f"({g['large_crop_decode_vs_full_then_crop']:.2f} of the plain crop) | (crop) |",
        f"| decode_jpeg(ratio=2) + resize | {m['large_dct2']:.0f} | {c['large_dct2']:.1f} | "
        f"{g['large_dct2']:.2f} | {d['2400x1800']['dct2']} |",
        f"| decode_jpeg(ratio=4) + resize | {m['large_dct4']:.0f} | {c['large_dct4']:.1f} | "
        f"{g['large_dct4']:.2f} | {d['2400x1800']['dct4']} |",
        f"| decode_jpeg(ratio=8) + resize | {m['large_dct8']:.0f} | {c['large_dct8']:.1f} | "
        f"{g['large_dct8']:.2f} | {d['2400x1800']['dct8']} |",
        f"| lmrec eval decode (decode_and_resize) | {m['large_lmrec_eval_decode']:.0f} | "
        f"{c['large_lmrec_eval_decode']:.1f} | {g['large_lmrec_eval_decode']:.2f} | "
        f"{d['2400x1800'].get(f'dct{scale}', 0)} (ratio={scale}) |",
        f"| lmrec training decode (crop, DCT) | {m['large_lmrec_train_decode']:.0f} | "
        f"{c['large_lmrec_train_decode']:.1f} | {g['large_lmrec_train_decode']:.2f} | (crop) |",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
