"""Measures a trained model_dir: accuracy, top-5, F1, GAP, per-class scores, confusion matrix.

    python -m lmrec.evaluate --model_dir=runs/demo [--data=DIR | --data='DIR/train-*.tfrecord']

--data may be a prepared dataset (its val shards), a glob of shards, or a
folder of photos with one subfolder per class. Classes are matched to the
model's labels by name. --distractors=FOLDER adds photos without landmarks as
non-landmark queries; --reject_threshold answers "no landmark" below a top
probability.

Results go to <model_dir>/report/: report.html (one self-contained page: metrics,
confusion matrix ordered so confusions cluster, most-confused pairs, per-class
table, highest-loss photos, reliability diagram and ECE, precision vs coverage),
metrics.json, predictions.csv and the PNGs; the figures also go to TensorBoard
(<model_dir>/logs/evaluate).
"""

from __future__ import annotations

import csv
import io
import os
import sys
from dataclasses import dataclass

import numpy as np
import tensorflow as tf
from absl import flags
from tqdm import tqdm

from lmrec import atomic, cli, config, gradcam, metrics, plots, report, run_files, run_lock
from lmrec.data import held_out
from lmrec.errors import UserError

MOST_CONFUSED = 10
# Highest-loss photos shown in the report.
GALLERY_SIZE = 24
REPORT_HTML = "report.html"


@dataclass
class EvaluationResult:
    metrics: dict
    report_dir: str


@dataclass
class Predictions:
    """What the model said about every evaluated photo.

    Attributes:
      probabilities: float [N, classes].
      labels: int [N]; metrics.NO_LANDMARK for distractors.
      ids: a file or record id per photo.
      gallery: the GALLERY_SIZE highest-loss photos, most wrong first:
        {"image": uint8 [S, S, 3], "index": row in the arrays, "loss"}.
      crop_probabilities: with cam_crop, the probabilities of each photo's
        Grad-CAM crop (gradcam.cam_crop_probabilities).
    """

    probabilities: np.ndarray
    labels: np.ndarray
    ids: list[str]
    gallery: list[dict]
    crop_probabilities: np.ndarray | None = None


def run_model(
    model,
    dataset: tf.data.Dataset,
    preprocess,
    verbose: bool = True,
    gallery_size: int = 0,
    cam_crop: bool = False,
) -> Predictions:
    """Runs the model over (pixels, labels, ids) batches, keeping the highest-loss photos.

    The loss of a photo is -log p(true class); a distractor's is -log(1 - top
    probability), high when the model is sure of a landmark that is not there.
    With cam_crop, each photo's Grad-CAM crop is classified too.
    """
    probabilities, labels, ids, crops = [], [], [], []
    kept: list[tuple[float, int, np.ndarray]] = []
    seen = 0
    for pixels, batch_labels, batch_ids in tqdm(
        dataset, desc="evaluate", unit="batch", disable=not verbose
    ):
        if cam_crop:
            batch, cropped = gradcam.cam_crop_probabilities(model, pixels, preprocess)
            crops.append(cropped)
        else:
            batch = model(preprocess(pixels), training=False).numpy()
        truth = batch_labels.numpy()
        probabilities.append(batch)
        labels.append(truth)
        ids.extend(i.decode("utf-8") for i in batch_ids.numpy())
        if gallery_size:
            losses = _losses(batch, truth)
            pixel_array = pixels.numpy()
            for row in np.argsort(-losses)[:gallery_size]:
                kept.append((float(losses[row]), seen + int(row), pixel_array[row]))
            kept = sorted(kept, key=lambda entry: -entry[0])[:gallery_size]
        seen += len(truth)
    if not labels:
        raise UserError("No images to evaluate")
    gallery = [
        {"image": np.clip(image, 0, 255).astype(np.uint8), "index": index, "loss": loss}
        for loss, index, image in kept
    ]
    return Predictions(
        np.concatenate(probabilities),
        np.concatenate(labels),
        ids,
        gallery,
        np.concatenate(crops) if crops else None,
    )


def _losses(probabilities: np.ndarray, labels: np.ndarray) -> np.ndarray:
    rows = np.arange(len(labels))
    landmark = labels != metrics.NO_LANDMARK
    truth = np.where(landmark, probabilities[rows, np.maximum(labels, 0)], 0.0)
    top = probabilities.max(axis=1)
    return np.where(
        landmark, -np.log(np.maximum(truth, 1e-12)), -np.log(np.maximum(1 - top, 1e-12))
    )


def evaluate(
    model_dir: str,
    data: str = "",
    batch_size: int = 32,
    verbose: bool = True,
    trained=None,
    distractors: str = "",
    reject_threshold: float | None = None,
    cam_crop: bool = False,
) -> EvaluationResult:
    """Evaluates the best checkpoint of model_dir and writes <model_dir>/report/.

    Args:
      model_dir: a finished lmrec.train run.
      data: see the module docstring; "" means the validation shards used in training.
      batch_size: images per forward pass.
      verbose: progress bar and a summary line on stderr.
      trained: an already loaded run_files.TrainedModel (skips reloading).
      distractors: a folder of photos without landmarks, evaluated as non-landmark
        queries (they count in GAP's ranking, not in its M).
      reject_threshold: answer "no landmark" below this top probability; None takes the
        model's stored --reject_threshold (0: never).
      cam_crop: also classify each photo's Grad-CAM crop and report the accuracy of the
        whole photo, the crop and their mean ("cam_crop" in metrics.json); the other
        metrics stay those of the whole photo.

    Returns:
      The metrics (also in report/metrics.json) and the report folder.

    Raises:
      UserError: among others, another process (a training) writing model_dir.
    """
    # report/ and logs/ belong to the run: no evaluation while another process writes it.
    with run_lock.folder(model_dir, flag="", verbose=verbose, create=False):
        return _evaluate(
            model_dir, data, batch_size, verbose, trained, distractors, reject_threshold, cam_crop
        )


def _evaluate(
    model_dir: str,
    data: str,
    batch_size: int,
    verbose: bool,
    trained,
    distractors: str,
    reject_threshold: float | None,
    cam_crop: bool,
) -> EvaluationResult:
    """evaluate()'s work, done while holding the model_dir's lock."""
    trained = trained or run_files.load(model_dir)
    if reject_threshold is None:
        reject_threshold = trained.config.evaluate.reject_threshold
    metrics.check_threshold(reject_threshold)
    source = held_out.eval_data(trained, data, batch_size)
    found = run_model(
        trained.model, source.dataset, trained.preprocess, verbose, GALLERY_SIZE, cam_crop
    )
    distractor_count = 0
    if distractors:
        extra = held_out.distractor_data(trained, distractors, batch_size)
        more = run_model(
            trained.model, extra.dataset, trained.preprocess, verbose, GALLERY_SIZE, cam_crop
        )
        found = _joined(found, more)
        distractor_count = len(more.labels)
        source.skipped.extend(extra.skipped)
        source.description += f" + {distractor_count} distractors from {distractors}"
    names = trained.class_names
    summary = summarize(found, names, source, reject_threshold, distractor_count)
    report_dir = os.path.join(model_dir, run_files.REPORT_DIR)
    atomic.write_json(os.path.join(report_dir, "metrics.json"), summary)
    _write_predictions(os.path.join(report_dir, "predictions.csv"), found, names, reject_threshold)
    name = os.path.basename(os.path.normpath(model_dir))
    figures = _figures(found, summary, names, report_dir, name)
    report.write(os.path.join(report_dir, REPORT_HTML), summary, figures, name)
    _to_tensorboard(os.path.join(model_dir, "logs", "evaluate"), figures, summary)
    if verbose:
        print(
            f"Evaluated {summary['num_images']} images from {source.description}: accuracy "
            f"{summary['accuracy']:.3f}, top-5 {summary['top5_accuracy']:.3f}, macro-F1 "
            f"{summary['macro_f1']:.3f}, GAP {summary['gap']:.3f}, ECE {summary['ece']:.3f}. "
            f"Report: {os.path.join(report_dir, REPORT_HTML)}",
            file=sys.stderr,
        )
        for entry in source.skipped[:10]:
            print(f"  skipped {entry}", file=sys.stderr)
    return EvaluationResult(metrics=summary, report_dir=report_dir)


def _joined(first: Predictions, second: Predictions) -> Predictions:
    """Both runs' predictions in one, the galleries merged by loss."""
    offset = len(first.labels)
    gallery = first.gallery + [
        dict(entry, index=entry["index"] + offset) for entry in second.gallery
    ]
    crops = None
    if first.crop_probabilities is not None and second.crop_probabilities is not None:
        crops = np.concatenate([first.crop_probabilities, second.crop_probabilities])
    return Predictions(
        np.concatenate([first.probabilities, second.probabilities]),
        np.concatenate([first.labels, second.labels]),
        first.ids + second.ids,
        sorted(gallery, key=lambda entry: -entry["loss"])[:GALLERY_SIZE],
        crops,
    )


def summarize(
    found: Predictions,
    names: list[str],
    source: held_out.EvalData,
    threshold: float,
    distractors: int,
) -> dict:
    """metrics.json: closed-set metrics on landmark photos, calibration, and the open set.

    Accuracy, F1, the confusion matrix and calibration are over the photos of
    known classes, without rejection; "open_set" applies the reject threshold and
    counts the distractors.
    """
    labels, probabilities = found.labels, found.probabilities
    landmark = labels != metrics.NO_LANDMARK
    closed = metrics.classification_report(labels[landmark], probabilities[landmark])
    top = probabilities[landmark].max(axis=1)
    correct = probabilities[landmark].argmax(axis=1) == labels[landmark]
    calibration = metrics.calibration(top, correct)
    summary = _summary(closed, names, source)
    summary["ece"] = calibration["ece"]
    summary["calibration"] = calibration["bins"]
    summary["open_set"] = _open_set(found, threshold, distractors)
    if found.crop_probabilities is not None:
        summary["cam_crop"] = _cam_crop(
            labels[landmark], probabilities[landmark], found.crop_probabilities[landmark]
        )
    return summary


def _cam_crop(labels, whole, crops) -> dict:
    """Accuracy and GAP of the whole photo, its Grad-CAM crop, and their mean probabilities."""
    result = {}
    for name, probabilities in (
        ("whole", whole),
        ("crop", crops),
        ("mean", (whole + crops) / 2),
    ):
        predictions = probabilities.argmax(axis=1)
        result[name] = {
            "accuracy": float(np.mean(predictions == labels)),
            "gap": metrics.global_average_precision(labels, predictions, probabilities.max(axis=1)),
        }
    return result


def _open_set(found: Predictions, threshold: float, distractors: int) -> dict:
    labels, probabilities = found.labels, found.probabilities
    landmark = labels != metrics.NO_LANDMARK
    predictions, confidences = metrics.apply_rejection(probabilities, threshold)
    rejected = predictions == metrics.NO_LANDMARK
    result = {
        "threshold": threshold,
        "distractors": distractors,
        "gap": metrics.global_average_precision(labels, predictions, confidences),
        "gap_without_distractors": metrics.global_average_precision(
            labels[landmark], predictions[landmark], confidences[landmark]
        ),
        "accuracy": float(np.mean(predictions == labels)),
        "landmarks_rejected": float(np.mean(rejected[landmark])) if landmark.any() else None,
        "distractors_rejected": float(np.mean(rejected[~landmark])) if distractors else None,
    }
    # Thresholds to pass as --reject_threshold for a wanted precision of the tags given,
    # on every evaluated photo (distractors included).
    every_photo = list(coverage_curves(found).values())[-1]
    result["thresholds_for_precision"] = metrics.thresholds_for_precision(every_photo)
    return result


def coverage_curves(found: Predictions) -> dict[str, dict]:
    """Precision against coverage for the landmark photos, then with distractors if any."""
    labels, probabilities = found.labels, found.probabilities
    top = probabilities.max(axis=1)
    right = probabilities.argmax(axis=1) == labels
    landmark = labels != metrics.NO_LANDMARK
    curves = {"landmark photos": metrics.coverage_curve(top[landmark], right[landmark])}
    if not landmark.all():
        curves["with distractors"] = metrics.coverage_curve(top, right)
    return curves


def _figures(found: Predictions, summary: dict, names, report_dir: str, name: str) -> dict:
    """Writes the report's PNGs; returns their bytes by name."""
    counts = np.asarray(summary["confusion_matrix"])
    figures = {
        "confusion_matrix": plots.confusion_matrix_png(
            counts,
            names,
            os.path.join(report_dir, "confusion_matrix.png"),
            title=f"{name}: accuracy {summary['accuracy']:.3f} on {counts.sum()} images",
            order=metrics.confusion_order(counts),
        ),
        "reliability": plots.reliability_png(
            {"ece": summary["ece"], "bins": summary["calibration"]},
            os.path.join(report_dir, "reliability.png"),
            title=f"{name}: calibration",
        ),
        "coverage": plots.coverage_png(
            coverage_curves(found),
            os.path.join(report_dir, "coverage.png"),
            title=f"{name}: precision vs coverage",
        ),
    }
    if found.gallery:

        def label_name(index: int) -> str:
            return metrics.NO_LANDMARK_NAME if index == metrics.NO_LANDMARK else names[index]

        rows = [found.probabilities[entry["index"]] for entry in found.gallery]
        png = plots.prediction_grid_png(
            np.stack([entry["image"] for entry in found.gallery]),
            [label_name(found.labels[entry["index"]]) for entry in found.gallery],
            [names[int(np.argmax(row))] for row in rows],
            [float(np.max(row)) for row in rows],
        )
        atomic.write_bytes(os.path.join(report_dir, "gallery.png"), png)
        figures["gallery"] = png
    return figures


def _to_tensorboard(log_dir: str, figures: dict[str, bytes], summary: dict) -> None:
    """The report's figures and headline numbers as TensorBoard images and scalars."""
    writer = tf.summary.create_file_writer(log_dir)
    with writer.as_default():
        for name, png in figures.items():
            image = tf.image.decode_png(png, channels=4)[None]
            tf.summary.image(f"evaluate/{name}", image, step=0)
        for key in ("accuracy", "top5_accuracy", "macro_f1", "gap", "ece"):
            tf.summary.scalar(f"evaluate/{key}", summary[key], step=0)
    writer.close()


def _summary(report: dict, names: list[str], source: held_out.EvalData) -> dict:
    scores = report["per_class"]
    counts = report["confusion_matrix"]
    off_diagonal = counts - np.diag(np.diag(counts))
    pairs = np.dstack(np.unravel_index(np.argsort(-off_diagonal, axis=None), counts.shape))[0]
    confused = [
        {"true": names[t], "predicted": names[p], "count": int(counts[t, p])}
        for t, p in pairs[:MOST_CONFUSED]
        if off_diagonal[t, p] > 0
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


def _write_predictions(path, found: Predictions, names, threshold: float) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["id", "true", "predicted", "confidence", "correct", "rejected"])
    predicted = np.argmax(found.probabilities, axis=1)
    for image_id, true, guess, row in zip(
        found.ids, found.labels, predicted, found.probabilities, strict=True
    ):
        rejected = row[guess] < threshold
        writer.writerow(
            [
                image_id,
                metrics.NO_LANDMARK_NAME if true == metrics.NO_LANDMARK else names[true],
                names[guess],
                f"{row[guess]:.4f}",
                int(true == guess),
                int(rejected),
            ]
        )
    atomic.write_text(path, buffer.getvalue())


def main(argv: list[str]) -> int:
    model_dir = flags.FLAGS.model_dir
    settings = config.from_flags(config.EvaluateConfig, flags.FLAGS)
    batch_size = flags.FLAGS.batch_size
    threshold = settings.reject_threshold if flags.FLAGS["reject_threshold"].present else None
    evaluate(
        model_dir,
        settings.data,
        batch_size,
        distractors=settings.distractors,
        reject_threshold=threshold,
        cam_crop=settings.cam_crop,
    )
    return 0


def run() -> None:
    cli.run_stage("evaluate", main, positional=False)


if __name__ == "__main__":
    run()
