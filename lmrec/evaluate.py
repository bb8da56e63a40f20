"""Measures a trained model_dir: accuracy, top-5, F1, GAP, per-class scores, confusion matrix.

    python -m lmrec.evaluate --model_dir=runs/demo [--data=DIR | --data='DIR/train-*.tfrecord']

--data may be a prepared dataset (its val shards), a glob of shards, or a
folder of photos with one subfolder per class. Classes are matched to the
model's labels by name. --distractors=FOLDER adds photos without landmarks as
non-landmark queries; an open-set score below the threshold answers "no landmark".

Every photo is answered by a lmrec.recognizer.Recognizer, as predict and the export
answer it: --classifier=softmax|knn|hybrid, and the open-set score and threshold of
lmrec.recognizer.resolve (<model_dir>/open_set.json, or --reject_threshold on the top
probability). When the model_dir has a gallery (python -m lmrec.gallery build), the
same forward pass is also answered by softmax, knn and hybrid side by side
("classifiers" in metrics.json), the landmark photos are searched in the gallery
("retrieval": mAP@100, recall@1/5), and the highest-loss photos are shown with their
nearest gallery photos. --choose_threshold picks the open-set score and threshold of
--classifier on the evaluated photos plus --distractors and stores them in
<model_dir>/open_set.json.

Results go to <model_dir>/report/: report.html (one self-contained page: metrics,
confusion matrix ordered so confusions cluster, most-confused pairs, per-class
table, highest-loss photos, reliability diagram and ECE, precision vs coverage,
the classifiers side by side), metrics.json, predictions.csv and the PNGs; the
figures also go to TensorBoard (<model_dir>/logs/evaluate).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import os
from dataclasses import dataclass

import numpy as np
import tensorflow as tf
from absl import flags
from tqdm import tqdm

from lmrec import (
    atomic,
    cli,
    config,
    console,
    embeddings,
    gallery,
    gradcam,
    knn,
    metrics,
    plots,
    recognizer,
    report,
    run_files,
    run_lock,
)
from lmrec.config import ClassifierConfig
from lmrec.data import held_out
from lmrec.errors import UserError
from lmrec.gallery import photos as gallery_photos
from lmrec.gallery import store as gallery_store

MOST_CONFUSED = 10
# Highest-loss photos shown in the report.
WORST_SIZE = 24
# Their grid's file name in report/ (and its TensorBoard image).
WORST_PNG = "gallery.png"
# Nearest gallery photos shown for each of the first NEIGHBOUR_ROWS highest-loss photos.
NEIGHBOURS = 3
NEIGHBOUR_ROWS = 12
# mAP@100 is the Google Landmarks v2 retrieval metric.
RETRIEVAL_K = 100
# Points kept of each classifier's precision-vs-coverage curve in metrics.json.
CURVE_POINTS = 101
REPORT_HTML = "report.html"
DEFAULT_CLASSIFIER = ClassifierConfig()  # the trained softmax, as predict and export default


@dataclass
class EvaluationResult:
    metrics: dict
    report_dir: str


@dataclass
class Predictions:
    """What the recognizer said about every evaluated photo.

    Attributes:
      probabilities: float [N, classes] of the classifier, over Recognizer.class_names.
      labels: int [N]; metrics.NO_LANDMARK for distractors.
      ids: a file or record id per photo.
      worst: the WORST_SIZE highest-loss photos, most wrong first:
        {"image": uint8 [S, S, 3], "index": row in the arrays, "loss"}.
      scores: float [N], the open-set score; rejected: bool [N], score below the threshold.
      softmax: float [N, trained classes], the trained head's probabilities.
      embeddings: float [N, D], L2-normalized (lmrec.embeddings).
      crop_probabilities: with cam_crop, the softmax of each photo's Grad-CAM crop
        (gradcam.cam_crop_probabilities).
    """

    probabilities: np.ndarray
    labels: np.ndarray
    ids: list[str]
    worst: list[dict]
    scores: np.ndarray
    rejected: np.ndarray
    softmax: np.ndarray
    embeddings: np.ndarray
    crop_probabilities: np.ndarray | None = None


def run_model(
    rec: recognizer.Recognizer,
    dataset: tf.data.Dataset,
    verbose: bool = True,
    worst_size: int = 0,
    cam_crop: bool = False,
) -> Predictions:
    """Answers (pixels, labels, ids) batches, keeping the highest-loss photos.

    The loss of a photo is -log p(true class); a distractor's is -log(1 - top
    probability), high when the model is sure of a landmark that is not there.
    With cam_crop, each photo's Grad-CAM crop is classified by the softmax too.
    """
    parts: dict[str, list[np.ndarray]] = {
        key: []
        for key in ("probabilities", "labels", "scores", "rejected", "softmax", "embeddings")
    }
    ids, crops = [], []
    kept: list[tuple[float, int, np.ndarray]] = []
    seen = 0
    trained = rec.trained
    for pixels, batch_labels, batch_ids in tqdm(
        dataset, desc="evaluate", unit="batch", disable=not verbose
    ):
        answer = rec(pixels)
        if cam_crop:
            _, cropped = gradcam.cam_crop_probabilities(trained.model, pixels, trained.preprocess)
            crops.append(cropped)
        truth = batch_labels.numpy()
        for key, value in (
            ("probabilities", answer.probabilities),
            ("labels", truth),
            ("scores", answer.scores),
            ("rejected", answer.rejected),
            ("softmax", answer.softmax),
            ("embeddings", answer.embeddings),
        ):
            parts[key].append(value)
        ids.extend(i.decode("utf-8") for i in batch_ids.numpy())
        if worst_size:
            losses = _losses(answer.probabilities, truth)
            pixel_array = pixels.numpy()
            for row in np.argsort(-losses)[:worst_size]:
                kept.append((float(losses[row]), seen + int(row), pixel_array[row]))
            kept = sorted(kept, key=lambda entry: -entry[0])[:worst_size]
        seen += len(truth)
    if not ids:
        raise UserError("No images to evaluate")
    worst = [
        {"image": np.clip(image, 0, 255).astype(np.uint8), "index": index, "loss": loss}
        for loss, index, image in kept
    ]
    joined = {key: np.concatenate(value) for key, value in parts.items()}
    return Predictions(
        ids=ids,
        worst=worst,
        crop_probabilities=np.concatenate(crops) if crops else None,
        **joined,
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
    classifier: ClassifierConfig = DEFAULT_CLASSIFIER,
    choose_threshold: bool = False,
    max_landmarks_rejected: float = knn.DEFAULT_MAX_LANDMARKS_REJECTED,
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
      reject_threshold: answer "no landmark" below this open-set score; None takes
        the model's stored choice (recognizer.resolve: open_set.json, or the stored
        --reject_threshold on the top probability; 0: never).
      cam_crop: also classify each photo's Grad-CAM crop and report the accuracy of the
        whole photo, the crop and their mean ("cam_crop" in metrics.json), all by the
        softmax; the other metrics stay those of the whole photo.
      classifier: --classifier, its kNN parameters and --open_set_score.
      choose_threshold: choose the open-set score and threshold of the classifier on
        these photos plus the distractors and store them in <model_dir>/open_set.json
        (choose_open_set); the report then uses them.
      max_landmarks_rejected: for choose_threshold, the largest fraction of landmark
        photos the threshold may reject.

    Returns:
      The metrics (also in report/metrics.json) and the report folder.

    Raises:
      UserError: among others, another process (a training) writing model_dir, knn or
        hybrid without a gallery, choose_threshold without distractors.
    """
    # report/ and logs/ belong to the run: no evaluation while another process writes it.
    with run_lock.folder(model_dir, flag="", verbose=verbose, create=False):
        return _evaluate(
            model_dir,
            data,
            batch_size,
            verbose,
            trained,
            distractors,
            reject_threshold,
            cam_crop,
            classifier,
            choose_threshold,
            max_landmarks_rejected,
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
    classifier: ClassifierConfig,
    choose_threshold: bool,
    max_landmarks_rejected: float,
) -> EvaluationResult:
    """evaluate()'s work, done while holding the model_dir's lock."""
    if reject_threshold is not None:
        metrics.check_threshold(reject_threshold)
    if choose_threshold and not distractors:
        raise UserError(
            "--choose_threshold needs --distractors=FOLDER: photos without a landmark, which "
            "the threshold should reject"
        )
    if choose_threshold and reject_threshold is not None:
        raise UserError("Give --choose_threshold or --reject_threshold, not both")
    trained = trained or run_files.load(model_dir)
    stored_threshold = trained.config.evaluate.reject_threshold
    settings = recognizer.resolve(model_dir, classifier, reject_threshold, stored_threshold)
    the_gallery = _load_gallery(model_dir, trained, settings.uses_gallery)
    rec = recognizer.Recognizer(trained, settings, the_gallery)
    if cam_crop and settings.classifier != "softmax":
        console.warn(
            f"--cam_crop classifies whole photos and crops by the softmax only; "
            f"--classifier={settings.classifier} answers the rest of the report"
        )
    names = rec.class_names
    # Class folders named after landmarks added to the gallery are evaluated too.
    source = held_out.eval_data(_with_class_names(trained, names), data, batch_size)
    found = run_model(rec, source.dataset, verbose, WORST_SIZE, cam_crop)
    distractor_count = 0
    if distractors:
        extra = held_out.distractor_data(trained, distractors, batch_size)
        more = run_model(rec, extra.dataset, verbose, WORST_SIZE, cam_crop)
        found = _joined(found, more)
        distractor_count = len(more.labels)
        source.skipped.extend(extra.skipped)
        source.description += f" + {distractor_count} distractors from {distractors}"
    if choose_threshold:
        choice = choose_open_set(
            rec, the_gallery, found, classifier, max_landmarks_rejected, source.description
        )
        path = recognizer.write_choice(model_dir, choice)
        if verbose:
            console.say(_choice_table(choice) + f"\nStored in {path}")
        settings = recognizer.resolve(model_dir, classifier, None, stored_threshold)
        found = _rescored(found, recognizer.Recognizer(trained, settings, the_gallery))
    summary = summarize(found, names, source, settings, distractor_count)
    neighbours: list[dict] = []
    side_by_side: dict[str, dict] = {}
    if the_gallery is not None:
        summary["classifiers"], side_by_side = compare_classifiers(
            trained, the_gallery, found, classifier, reject_threshold, distractor_count
        )
        summary["retrieval"] = retrieval(the_gallery, names, found.embeddings, found.labels)
        neighbours = worst_neighbours(model_dir, the_gallery, found, names)
        summary["highest_loss_neighbours"] = [
            {
                "id": entry["id"],
                "neighbours": [
                    {k: n[k] for k in ("photo_id", "label", "similarity")}
                    for n in entry["neighbours"]
                ],
            }
            for entry in neighbours
        ]
    report_dir = os.path.join(model_dir, run_files.REPORT_DIR)
    atomic.write_json(os.path.join(report_dir, "metrics.json"), summary)
    _write_predictions(os.path.join(report_dir, "predictions.csv"), found, names)
    name = os.path.basename(os.path.normpath(model_dir))
    figures = _figures(found, summary, names, report_dir, name)
    if side_by_side:
        figures["classifiers"] = plots.coverage_png(
            side_by_side,
            os.path.join(report_dir, "classifiers.png"),
            title=f"{name}: precision vs coverage by classifier",
        )
    report.write(os.path.join(report_dir, REPORT_HTML), summary, figures, name, neighbours)
    _to_tensorboard(os.path.join(model_dir, "logs", "evaluate"), figures, summary)
    if verbose:
        console.say(
            f"Evaluated {summary['num_images']} images from {source.description}: accuracy "
            f"{summary['accuracy']:.3f}, top-5 {summary['top5_accuracy']:.3f}, macro-F1 "
            f"{summary['macro_f1']:.3f}, GAP {summary['gap']:.3f}, ECE {summary['ece']:.3f}. "
            f"Report: {os.path.join(report_dir, REPORT_HTML)}"
        )
        for entry in source.skipped[:10]:
            console.say(f"  skipped {entry}")
    return EvaluationResult(metrics=summary, report_dir=report_dir)


def _joined(first: Predictions, second: Predictions) -> Predictions:
    """Both runs' predictions in one, the highest-loss photos merged by loss."""
    offset = len(first.labels)
    worst = first.worst + [dict(entry, index=entry["index"] + offset) for entry in second.worst]
    crops = None
    if first.crop_probabilities is not None and second.crop_probabilities is not None:
        crops = np.concatenate([first.crop_probabilities, second.crop_probabilities])
    arrays = ("probabilities", "labels", "scores", "rejected", "softmax", "embeddings")
    return Predictions(
        ids=first.ids + second.ids,
        worst=sorted(worst, key=lambda entry: -entry["loss"])[:WORST_SIZE],
        crop_probabilities=crops,
        **{key: np.concatenate([getattr(first, key), getattr(second, key)]) for key in arrays},
    )


def _with_class_names(trained: run_files.TrainedModel, names: list[str]):
    """trained, its labels extended by the gallery's added landmarks (for held_out)."""
    extra = [
        {"index": i, "name": name, "landmark_id": ""}
        for i, name in enumerate(names)
        if i >= len(trained.labels)
    ]
    return dataclasses.replace(trained, labels=[*trained.labels, *extra]) if extra else trained


def _load_gallery(model_dir: str, trained, required: bool) -> gallery.Gallery | None:
    """The model's gallery; None when it has none, or when a softmax run cannot read it."""
    index = os.path.join(gallery_store.gallery_dir(model_dir), gallery_store.INDEX_FILE)
    if not required and not os.path.isfile(index):
        return None
    try:
        return gallery.load(model_dir, trained)
    except UserError as error:
        if required:
            raise
        console.warn(f"No classifiers side by side: {error}")
        return None


def _rescored(found: Predictions, rec: recognizer.Recognizer) -> Predictions:
    """found with the open-set scores and rejections of rec's settings."""
    answer = rec.answer_embeddings(found.softmax, found.embeddings)
    return dataclasses.replace(found, scores=answer.scores, rejected=answer.rejected)


def choose_open_set(
    rec: recognizer.Recognizer,
    the_gallery: gallery.Gallery | None,
    found: Predictions,
    classifier: ClassifierConfig,
    max_landmarks_rejected: float,
    description: str = "",
) -> recognizer.OpenSetChoice:
    """The open-set score and threshold of rec's classifier that reject the most distractors.

    Every score kind that applies is measured (top_probability and margin; with a
    gallery also top_similarity and vote_share; only --open_set_score when it is
    set): knn.choose_threshold picks its threshold on the landmark photos of found,
    and the kind whose threshold rejects the largest share of found's distractors
    wins (the first in OPEN_SET_SCORES order on a tie).

    Raises:
      UserError: found has no landmark photos or no distractors.
    """
    landmark = found.labels != metrics.NO_LANDMARK
    if landmark.all():
        raise UserError("Choosing the threshold needs distractors: photos without a landmark")
    # Scores from the gallery need its votes, whatever the classifier.
    with_votes = dataclasses.replace(rec.settings, score="top_similarity")
    scoring = recognizer.Recognizer(rec.trained, with_votes, the_gallery) if the_gallery else rec
    answer = scoring.answer_embeddings(found.softmax, found.embeddings)
    kinds = [
        kind
        for kind, spec in knn.OPEN_SET_SCORES.items()
        if (not spec.uses_gallery or answer.knn is not None)
        and classifier.open_set_score in ("", kind)
    ]
    if not kinds:
        knn.open_set_score(classifier.open_set_score, answer.probabilities, answer.knn)
    measured = {}
    for kind in kinds:
        scores = np.asarray(knn.open_set_score(kind, answer.probabilities, answer.knn))
        chosen = knn.choose_threshold(scores[landmark], scores[~landmark], max_landmarks_rejected)
        measured[kind] = {
            "threshold": chosen.value,
            "landmarks_rejected": chosen.landmarks_rejected,
            "distractors_rejected": chosen.distractors_rejected,
        }
    best = max(kinds, key=lambda kind: measured[kind]["distractors_rejected"])
    settings = rec.settings
    uses_gallery = dataclasses.replace(settings, score=best).uses_gallery
    return recognizer.OpenSetChoice(
        classifier=settings.classifier,
        score=best,
        threshold=measured[best]["threshold"],
        knn_k=settings.knn_k,
        knn_power=settings.knn_power,
        knn_weight=settings.knn_weight,
        gallery_fingerprint=the_gallery.fingerprint if uses_gallery and the_gallery else "",
        model_fingerprint=_fingerprint_or_empty(rec.trained.model_dir),
        measured={
            "data": description,
            "landmarks": int(landmark.sum()),
            "distractors": int((~landmark).sum()),
            "max_landmarks_rejected": max_landmarks_rejected,
            "scores": measured,
        },
    )


def _fingerprint_or_empty(model_dir: str) -> str:
    try:
        return embeddings.fingerprint(model_dir)
    except UserError:  # a model handed in without its run files
        return ""


def _choice_table(choice: recognizer.OpenSetChoice) -> str:
    """The open-set scores measured by choose_open_set, the chosen one starred."""
    measured = choice.measured
    lines = [
        f"No-landmark threshold of --classifier={choice.classifier}, chosen on "
        f"{measured['landmarks']} landmark photos and {measured['distractors']} distractors "
        f"(at most {measured['max_landmarks_rejected']:.0%} of landmarks rejected):",
        f"  {'score':<16} {'threshold':>10} {'landmarks rejected':>19} "
        f"{'distractors rejected':>21}",
    ]
    for kind, entry in measured["scores"].items():
        star = "*" if kind == choice.score else " "
        lines.append(
            f"{star} {kind:<16} {entry['threshold']:>10.4f} {entry['landmarks_rejected']:>19.3f} "
            f"{entry['distractors_rejected']:>21.3f}"
        )
    return "\n".join(lines)


def compare_classifiers(
    trained: run_files.TrainedModel,
    the_gallery: gallery.Gallery,
    found: Predictions,
    classifier: ClassifierConfig,
    reject_threshold: float | None,
    distractors: int,
) -> tuple[dict, dict[str, dict]]:
    """softmax, knn and hybrid on the same forward pass, each at its own threshold.

    Each classifier's open-set score and threshold are recognizer.resolve's for it
    (its stored choice, else --open_set_score and the stored --reject_threshold;
    reject_threshold overrides all). Accuracy is over the landmark photos without
    rejection; the rest applies the threshold.

    Returns:
      ({classifier: metrics}, {legend: full coverage curve}) for metrics.json and the plot.
    """
    stored = trained.config.evaluate.reject_threshold
    result, curves = {}, {}
    labels = found.labels
    landmark = labels != metrics.NO_LANDMARK
    for name in knn.CLASSIFIERS.names():
        settings = recognizer.resolve(
            trained.model_dir,
            dataclasses.replace(classifier, classifier=name),
            reject_threshold,
            stored,
        )
        answer = recognizer.Recognizer(trained, settings, the_gallery).answer_embeddings(
            found.softmax, found.embeddings
        )
        predictions = answer.probabilities.argmax(axis=1)
        entry = {
            "score": settings.score,
            "threshold": settings.threshold,
            "accuracy": _mean(predictions[landmark] == labels[landmark]),
            **_rejection_metrics(labels, predictions, answer.scores, answer.rejected, distractors),
        }
        curve = metrics.coverage_curve(answer.scores, predictions == labels)
        entry["coverage_curve"] = _thinned(curve)
        result[name] = entry
        curves[f"{name} ({settings.score})"] = curve
    return result, curves


def _mean(values: np.ndarray) -> float | None:
    return float(np.mean(values)) if len(values) else None


def _finite(value: float) -> float | None:
    return None if value is None or math.isnan(value) else float(value)


def _thinned(curve: dict, points: int = CURVE_POINTS) -> dict:
    """A coverage curve at up to `points` evenly spaced ranks (the last one kept)."""
    size = len(curve["coverage"])
    rows = np.unique(np.linspace(0, size - 1, min(points, size)).round().astype(int))
    return {key: [float(v) for v in np.asarray(values)[rows]] for key, values in curve.items()}


def _rejection_metrics(labels, predictions, scores, rejected, distractors: int) -> dict:
    """GAP with and without distractors, accuracy and the shares rejected, at a threshold.

    A rejected photo has no prediction (NO_LANDMARK, confidence -inf); the others are
    ranked by their open-set score, so ranking and rejection agree.
    """
    landmark = labels != metrics.NO_LANDMARK
    predicted = np.where(rejected, metrics.NO_LANDMARK, predictions)
    confidences = np.where(rejected, -np.inf, np.asarray(scores, np.float64))
    return {
        "gap": metrics.global_average_precision(labels, predicted, confidences),
        "gap_without_distractors": metrics.global_average_precision(
            labels[landmark], predicted[landmark], confidences[landmark]
        ),
        "open_set_accuracy": float(np.mean(predicted == labels)),
        "landmarks_rejected": _mean(rejected[landmark]),
        "distractors_rejected": _mean(rejected[~landmark]) if distractors else None,
    }


def _gallery_labels(the_gallery: gallery.Gallery, class_names: list[str]) -> np.ndarray:
    """[N] each gallery photo's column in class_names; NO_LANDMARK for distractors.

    A landmark the classifier does not know (added to the gallery, evaluated by the
    softmax) gets a column after class_names: no evaluated photo has it.
    """
    column = {name: i for i, name in enumerate(class_names)}
    for label in the_gallery.labels:
        column.setdefault(label.name, len(column))
    lookup = np.array(
        [
            metrics.NO_LANDMARK if label.origin == "distractor" else column[label.name]
            for label in the_gallery.labels
        ],
        np.int64,
    )
    return lookup[the_gallery.label_ids] if len(lookup) else np.zeros(0, np.int64)


def retrieval(
    the_gallery: gallery.Gallery, class_names: list[str], embeddings: np.ndarray, labels
) -> dict:
    """mAP@100 and recall@1/5 of the landmark photos searched in the gallery.

    The queries are the evaluated landmark photos; a gallery photo is relevant to a
    query when it has the query's label (distractors never are).
    """
    landmark = labels != metrics.NO_LANDMARK
    gallery_labels = _gallery_labels(the_gallery, class_names)
    result = {
        "queries": int(landmark.sum()),
        "gallery_photos": int(len(gallery_labels)),
        "map_at_100": None,
        "recall_at_1": None,
        "recall_at_5": None,
    }
    if not landmark.any() or not len(gallery_labels):
        return result
    query_labels = labels[landmark]
    _, indices = knn.search(embeddings[landmark], the_gallery.embeddings, RETRIEVAL_K)
    retrieved = gallery_labels[indices]
    relevant = metrics.count_relevant(query_labels, gallery_labels)
    result["map_at_100"] = _finite(
        metrics.mean_average_precision_at_k(retrieved, query_labels, relevant, RETRIEVAL_K)
    )
    result["recall_at_1"] = _finite(metrics.recall_at_k(retrieved, query_labels, 1))
    result["recall_at_5"] = _finite(metrics.recall_at_k(retrieved, query_labels, 5))
    return result


def worst_neighbours(
    model_dir: str, the_gallery: gallery.Gallery, found: Predictions, names: list[str]
) -> list[dict]:
    """The first NEIGHBOUR_ROWS highest-loss photos with their NEIGHBOURS nearest gallery photos.

    Returns:
      [{"id", "image": JPEG bytes, "true", "predicted", "confidence", "neighbours":
      [{"photo_id", "label", "similarity", "image": JPEG bytes or None (unreadable)}]}].
    """
    rows = found.worst[:NEIGHBOUR_ROWS]
    if not rows or not len(the_gallery.label_ids):
        return []
    indices = [entry["index"] for entry in rows]
    similarities, nearest = knn.search(
        found.embeddings[indices], the_gallery.embeddings, NEIGHBOURS
    )
    gallery_names = the_gallery.class_names()
    thumbnails = gallery_photos.photo_thumbnails(
        model_dir, [the_gallery.photo_ids[i] for i in nearest.ravel()]
    )
    result = []
    for entry, row_similarities, row_nearest in zip(rows, similarities, nearest, strict=True):
        probabilities = found.probabilities[entry["index"]]
        guess = int(np.argmax(probabilities))
        neighbours = []
        for similarity, i in zip(row_similarities, row_nearest, strict=True):
            photo_id = the_gallery.photo_ids[i]
            neighbours.append(
                {
                    "photo_id": photo_id,
                    "label": gallery_names[the_gallery.label_ids[i]],
                    "similarity": float(similarity),
                    "image": thumbnails.get(photo_id),
                }
            )
        result.append(
            {
                "id": found.ids[entry["index"]],
                "image": gallery_photos.pixels_thumbnail(entry["image"]),
                "true": _label_name(int(found.labels[entry["index"]]), names),
                "predicted": names[guess],
                "confidence": float(probabilities[guess]),
                "neighbours": neighbours,
            }
        )
    return result


def _label_name(index: int, names: list[str]) -> str:
    return metrics.NO_LANDMARK_NAME if index == metrics.NO_LANDMARK else names[index]


def summarize(
    found: Predictions,
    names: list[str],
    source: held_out.EvalData,
    settings: recognizer.Settings,
    distractors: int,
) -> dict:
    """metrics.json: closed-set metrics on landmark photos, calibration, and the open set.

    Accuracy, F1, the confusion matrix and calibration are over the photos of
    known classes, without rejection; "open_set" applies the open-set threshold and
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
    summary["open_set"] = _open_set(found, settings, distractors)
    if found.crop_probabilities is not None:
        summary["cam_crop"] = _cam_crop(
            labels[landmark], found.softmax[landmark], found.crop_probabilities[landmark]
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


def _open_set(found: Predictions, settings: recognizer.Settings, distractors: int) -> dict:
    """The classifier's answers with "no landmark" below the open-set threshold."""
    measured = _rejection_metrics(
        found.labels,
        found.probabilities.argmax(axis=1),
        found.scores,
        found.rejected,
        distractors,
    )
    result = {
        "classifier": settings.classifier,
        "score": settings.score,
        "threshold": settings.threshold,
        "distractors": distractors,
        "gap": measured["gap"],
        "gap_without_distractors": measured["gap_without_distractors"],
        "accuracy": measured["open_set_accuracy"],
        "landmarks_rejected": measured["landmarks_rejected"],
        "distractors_rejected": measured["distractors_rejected"],
    }
    # Thresholds of the open-set score for a wanted precision of the tags given, on
    # every evaluated photo (distractors included).
    every_photo = list(coverage_curves(found).values())[-1]
    result["thresholds_for_precision"] = metrics.thresholds_for_precision(every_photo)
    return result


def coverage_curves(found: Predictions) -> dict[str, dict]:
    """Precision against coverage for the landmark photos, then with distractors if any.

    Photos are kept by falling open-set score (the top probability by default).
    """
    labels, scores = found.labels, found.scores
    right = found.probabilities.argmax(axis=1) == labels
    landmark = labels != metrics.NO_LANDMARK
    curves = {"landmark photos": metrics.coverage_curve(scores[landmark], right[landmark])}
    if not landmark.all():
        curves["with distractors"] = metrics.coverage_curve(scores, right)
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
    if found.worst:
        rows = [found.probabilities[entry["index"]] for entry in found.worst]
        png = plots.prediction_grid_png(
            np.stack([entry["image"] for entry in found.worst]),
            [_label_name(int(found.labels[entry["index"]]), names) for entry in found.worst],
            [names[int(np.argmax(row))] for row in rows],
            [float(np.max(row)) for row in rows],
        )
        atomic.write_bytes(os.path.join(report_dir, WORST_PNG), png)
        figures["highest_loss"] = png
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


def _write_predictions(path, found: Predictions, names) -> None:
    """One row per photo: its top class and probability, whether the open-set score
    rejected it, and that score."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(
        ["id", "true", "predicted", "confidence", "correct", "rejected", "open_set_score"]
    )
    predicted = np.argmax(found.probabilities, axis=1)
    for image_id, true, guess, row, rejected, score in zip(
        found.ids,
        found.labels,
        predicted,
        found.probabilities,
        found.rejected,
        found.scores,
        strict=True,
    ):
        writer.writerow(
            [
                image_id,
                _label_name(int(true), names),
                names[guess],
                f"{row[guess]:.4f}",
                int(true == guess),
                int(rejected),
                f"{score:.4f}",
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
        classifier=config.from_flags(config.ClassifierConfig, flags.FLAGS),
        choose_threshold=settings.choose_threshold,
        max_landmarks_rejected=settings.max_landmarks_rejected,
    )
    return 0


def run() -> None:
    cli.run_stage("evaluate", main, positional=False)


if __name__ == "__main__":
    run()
