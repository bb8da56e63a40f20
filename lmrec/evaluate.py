"""Measures a trained model_dir: accuracy, top-5, F1, GAP, per-class scores, confusion matrix.

    python -m lmrec.evaluate --model_dir=runs/demo [--data=DIR | --data='DIR/train-*.tfrecord']

--data may be a prepared dataset (its val shards), a glob of shards, or a
folder of photos with one subfolder per class. Classes are matched to the
model's labels by name. Results go to <model_dir>/report/.
"""

from __future__ import annotations

import csv
import io
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import tensorflow as tf
from tqdm import tqdm

from lmrec import atomic, metrics, plots
from lmrec import model_dir as run_files
from lmrec.data import images, pipeline, prepare, records
from lmrec.data.sources import folders
from lmrec.errors import UserError

MOST_CONFUSED = 10


@dataclass
class EvalData:
    """A dataset of (preprocessed images, model labels, ids) and what it is."""

    dataset: tf.data.Dataset
    description: str
    skipped: list[dict[str, str]] = field(default_factory=list)


@dataclass
class EvaluationResult:
    metrics: dict
    report_dir: str


def _label_map(data_labels: list[str], model_labels: list[str]) -> tuple[np.ndarray, list[str]]:
    """Maps dataset label indices to model indices by class name; -1 for unknown classes."""
    index = {name: i for i, name in enumerate(model_labels)}
    mapping = np.array([index.get(name, -1) for name in data_labels], dtype=np.int32)
    unknown = [name for name in data_labels if name not in index]
    return mapping, unknown


def _shard_data(
    trained, pattern: str, label_dir: str, batch_size: int, num_examples: int | None = None
) -> EvalData:
    data_labels = records.label_names(records.read_labels(label_dir))
    mapping, unknown = _label_map(data_labels, trained.class_names)
    if len(unknown) == len(data_labels):
        raise UserError(f"None of the classes in {label_dir}/labels.json is known to the model")
    dataset = pipeline.make_dataset(
        pattern,
        trained.image_size,
        trained.preprocess,
        batch_size,
        training=False,
        with_ids=True,
        num_examples=None if unknown else num_examples,
    )
    if not np.array_equal(mapping, np.arange(len(mapping))):
        table = tf.constant(mapping)
        dataset = dataset.map(lambda x, y, i: (x, tf.gather(table, y), i))
        if unknown:
            dataset = dataset.unbatch().filter(lambda x, y, i: y >= 0).batch(batch_size)
    skipped = [{"class": name, "reason": "class unknown to the model"} for name in unknown]
    return EvalData(dataset, pattern, skipped)


def _folder_data(trained, folder: str, batch_size: int) -> EvalData:
    class_names, found, rejected = folders.list_class_folder(folder)
    model_index = {name: i for i, name in enumerate(trained.class_names)}
    skipped = [{"file": path, "reason": reason} for path, reason in rejected]
    skipped += [
        {"class": name, "reason": "class unknown to the model"}
        for name in class_names
        if name not in model_index
    ]
    usable = [(rel, path, model_index[c]) for rel, path, c in found if c in model_index]
    if not usable:
        raise UserError(f"--data={folder} has no photos in folders named after the model's classes")
    max_side = trained.config.prepare.max_image_side

    def generate() -> Iterator[tuple[bytes, int, str]]:
        for relative, path, label in usable:
            try:
                encoded, _, _ = images.to_jpeg(images.read_file(path), path, max_side)
            except images.BadImage as error:
                skipped.append({"file": relative, "reason": str(error)})
                continue
            yield encoded, label, relative

    signature = (
        tf.TensorSpec([], tf.string),
        tf.TensorSpec([], tf.int32),
        tf.TensorSpec([], tf.string),
    )
    size, preprocess = trained.image_size, trained.preprocess
    dataset = (
        tf.data.Dataset.from_generator(generate, output_signature=signature)
        .map(
            lambda b, y, i: (pipeline.decode_and_resize(b, size), y, i),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
        .batch(batch_size)
        .map(lambda x, y, i: (preprocess(x), y, i))
        .prefetch(tf.data.AUTOTUNE)
    )
    return EvalData(dataset, folder, skipped)


def _val_split(trained, data_dir: str, batch_size: int) -> EvalData:
    pattern = records.shard_pattern(data_dir, "val")
    if not tf.io.gfile.glob(pattern):
        raise UserError(f"{data_dir} has no validation shards; pass --data=... to evaluate")
    count = prepare.read_stats(data_dir)["totals"]["val"]
    return _shard_data(trained, pattern, data_dir, batch_size, num_examples=count)


def eval_data(trained, data: str, batch_size: int) -> EvalData:
    """Resolves --data (see module docstring) into a dataset in the model's label space."""
    if not data:
        return _val_split(trained, trained.config.data.data_dir, batch_size)
    if any(ch in data for ch in "*?["):
        return _shard_data(trained, data, os.path.dirname(data), batch_size)
    if not os.path.isdir(data):
        raise UserError(f"--data={data!r} is neither a folder nor a shard pattern")
    if prepare.is_prepared(data):
        return _val_split(trained, data, batch_size)
    return _folder_data(trained, data, batch_size)


def run_model(model, dataset: tf.data.Dataset, verbose: bool = True):
    """Runs the model over (images, labels, ids) batches; returns numpy probs, labels, ids."""
    probabilities, labels, ids = [], [], []
    for batch_images, batch_labels, batch_ids in tqdm(
        dataset, desc="evaluate", unit="batch", disable=not verbose
    ):
        probabilities.append(model(batch_images, training=False).numpy())
        labels.append(batch_labels.numpy())
        ids.extend(i.decode("utf-8") for i in batch_ids.numpy())
    if not labels:
        raise UserError("No images to evaluate")
    return np.concatenate(probabilities), np.concatenate(labels), ids


def evaluate(
    model_dir: str, data: str = "", batch_size: int = 32, verbose: bool = True, trained=None
) -> EvaluationResult:
    """Evaluates the best checkpoint of model_dir and writes <model_dir>/report/.

    Args:
      model_dir: a finished lmrec.train run.
      data: see the module docstring; "" means the validation shards used in training.
      batch_size: images per forward pass.
      verbose: progress bar and a summary line on stderr.
      trained: an already loaded run_files.TrainedModel (skips reloading).

    Returns:
      The metrics (also in report/metrics.json) and the report folder.
    """
    trained = trained or run_files.load(model_dir)
    source = eval_data(trained, data, batch_size)
    probabilities, labels, ids = run_model(trained.model, source.dataset, verbose)
    report = metrics.classification_report(labels, probabilities)
    names = trained.class_names
    report_dir = os.path.join(model_dir, run_files.REPORT_DIR)
    summary = _summary(report, names, source)
    atomic.write_json(os.path.join(report_dir, "metrics.json"), summary)
    _write_predictions(
        os.path.join(report_dir, "predictions.csv"), ids, labels, probabilities, names
    )
    plots.confusion_matrix_png(
        report["confusion_matrix"],
        names,
        os.path.join(report_dir, "confusion_matrix.png"),
        title=f"{os.path.basename(os.path.normpath(model_dir))}: accuracy "
        f"{report['accuracy']:.3f} on {len(labels)} images",
    )
    if verbose:
        print(
            f"Evaluated {len(labels)} images from {source.description}: accuracy "
            f"{summary['accuracy']:.3f}, top-5 {summary['top5_accuracy']:.3f}, macro-F1 "
            f"{summary['macro_f1']:.3f}, GAP {summary['gap']:.3f}. Report: {report_dir}/",
            file=sys.stderr,
        )
        for entry in source.skipped[:10]:
            print(f"  skipped {entry}", file=sys.stderr)
    return EvaluationResult(metrics=summary, report_dir=report_dir)


def _summary(report: dict, names: list[str], source: EvalData) -> dict:
    scores = report["per_class"]
    counts = report["confusion_matrix"]
    off_diagonal = counts - np.diag(np.diag(counts))
    pairs = np.dstack(np.unravel_index(np.argsort(-off_diagonal, axis=None), counts.shape))[0]
    confused = [
        {"true": names[t], "predicted": names[p], "count": int(counts[t, p])}
        for t, p in pairs[:MOST_CONFUSED]
        if counts[t, p] > 0
    ]
    return {
        "data": source.description,
        "num_images": report["num_images"],
        "accuracy": report["accuracy"],
        "top5_accuracy": report["top5_accuracy"],
        "macro_f1": report["macro_f1"],
        "micro_f1": report["micro_f1"],
        "gap": report["gap"],
        "per_class": [
            {
                "class": name,
                "precision": float(scores["precision"][i]),
                "recall": float(scores["recall"][i]),
                "f1": float(scores["f1"][i]),
                "support": int(scores["support"][i]),
            }
            for i, name in enumerate(names)
        ],
        "most_confused": confused,
        "confusion_matrix": counts.tolist(),
        "skipped": source.skipped,
    }


def _write_predictions(path, ids, labels, probabilities, names) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["id", "true", "predicted", "confidence", "correct"])
    predicted = np.argmax(probabilities, axis=1)
    for image_id, true, guess, row in zip(ids, labels, predicted, probabilities, strict=True):
        writer.writerow(
            [image_id, names[true], names[guess], f"{row[guess]:.4f}", int(true == guess)]
        )
    atomic.write_text(path, buffer.getvalue())


def main(argv: list[str]) -> int:
    from absl import flags

    from lmrec import config as config_lib

    model_dir = config_lib.from_flags(config_lib.TrainConfig, flags.FLAGS).model_dir
    data = config_lib.from_flags(config_lib.EvaluateConfig, flags.FLAGS).data
    batch_size = config_lib.from_flags(config_lib.DataConfig, flags.FLAGS).batch_size
    evaluate(model_dir, data, batch_size)
    return 0


def run() -> None:
    from lmrec import cli, flags  # noqa: F401 - defines the flags.

    cli.run_stage(main, positional=False)


if __name__ == "__main__":
    run()
