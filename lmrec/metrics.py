"""Classification metrics on numpy arrays: accuracy, top-k, F1, confusion matrix, GAP.

Written against plain arrays (not Keras metrics) so the same numbers come out
of evaluate, the comparison table and the tests, and GAP follows the Kaggle
landmark-recognition definition exactly.
"""

from __future__ import annotations

import numpy as np

from lmrec.errors import UserError

NO_LANDMARK = -1  # ground-truth label of a query that shows no landmark
NO_LANDMARK_NAME = "no landmark"  # how reports, predictions and tags name it


def top_k_accuracy(labels: np.ndarray, probabilities: np.ndarray, k: int) -> float:
    """Fraction of rows whose true label is among the k highest probabilities."""
    labels = np.asarray(labels)
    if labels.size == 0:
        return float("nan")
    k = min(k, probabilities.shape[1])
    top = np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
    return float(np.mean(np.any(top == labels[:, None], axis=1)))


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
    """counts[true, predicted]."""
    counts = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(counts, (np.asarray(labels), np.asarray(predictions)), 1)
    return counts


def per_class_scores(counts: np.ndarray) -> dict[str, np.ndarray]:
    """Precision, recall, F1 and support per class from a confusion matrix (0 where undefined)."""
    true_positive = np.diag(counts).astype(np.float64)
    predicted = counts.sum(axis=0).astype(np.float64)
    support = counts.sum(axis=1).astype(np.float64)
    precision = np.divide(
        true_positive, predicted, out=np.zeros_like(true_positive), where=predicted > 0
    )
    recall = np.divide(true_positive, support, out=np.zeros_like(true_positive), where=support > 0)
    denominator = precision + recall
    f1 = np.divide(
        2 * precision * recall, denominator, out=np.zeros_like(denominator), where=denominator > 0
    )
    return {"precision": precision, "recall": recall, "f1": f1, "support": support.astype(np.int64)}


def macro_f1(counts: np.ndarray) -> float:
    """Unweighted mean F1 over the classes that occur in the ground truth."""
    scores = per_class_scores(counts)
    present = scores["support"] > 0
    return float(np.mean(scores["f1"][present])) if present.any() else float("nan")


def micro_f1(counts: np.ndarray) -> float:
    """Pooled F1; equals accuracy for single-label predictions over known classes."""
    total = counts.sum()
    return float(np.trace(counts) / total) if total else float("nan")


def global_average_precision(
    true_labels: np.ndarray, predicted_labels: np.ndarray, confidences: np.ndarray
) -> float:
    """GAP (micro-AP) of the Kaggle Google Landmark Recognition challenges.

    Each query has one predicted label and a confidence. Sorted by confidence
    (highest first), GAP = (1/M) * sum_i P(i) * rel(i), where P(i) is the
    precision over the first i predictions, rel(i) is 1 when prediction i is
    correct, and M is the number of queries that show a landmark (true label
    != NO_LANDMARK). A query without a prediction should be passed with
    confidence -inf (it then never counts as correct, nor lowers precision of
    the predictions ranked above it). Equal confidences are ranked wrong
    predictions first, so a score that cannot tell two photos apart earns no
    GAP from their order (kNN vote shares are often exactly 1).
    """
    true_labels = np.asarray(true_labels)
    predicted_labels = np.asarray(predicted_labels)
    confidences = np.asarray(confidences, dtype=np.float64)
    m = int(np.sum(true_labels != NO_LANDMARK))
    if m == 0:
        return float("nan")
    right = (predicted_labels == true_labels) & (true_labels != NO_LANDMARK)
    order = np.lexsort((right, -confidences))  # by confidence, then wrong (False) first
    correct = right[order]
    precision_at_i = np.cumsum(correct) / np.arange(1, len(correct) + 1)
    return float(np.sum(precision_at_i * correct) / m)


def classification_report(labels: np.ndarray, probabilities: np.ndarray) -> dict:
    """All summary metrics of evaluate for known-class data."""
    labels = np.asarray(labels)
    num_classes = probabilities.shape[1]
    predictions = np.argmax(probabilities, axis=1)
    confidences = probabilities[np.arange(len(predictions)), predictions]
    counts = confusion_matrix(labels, predictions, num_classes)
    return {
        "num_images": int(len(labels)),
        "accuracy": float(np.mean(predictions == labels)) if len(labels) else float("nan"),
        "top5_accuracy": top_k_accuracy(labels, probabilities, 5),
        "macro_f1": macro_f1(counts),
        "micro_f1": micro_f1(counts),
        "gap": global_average_precision(labels, predictions, confidences),
        "confusion_matrix": counts,
        "per_class": per_class_scores(counts),
    }


def calibration(confidences: np.ndarray, correct: np.ndarray, bins: int = 15) -> dict:
    """Reliability table and expected calibration error (Guo et al. 2017).

    Predictions are put into `bins` equal-width confidence bins; ECE is the
    support-weighted mean of |accuracy - mean confidence| over the bins.

    Returns:
      {"ece", "bins": [{"low", "high", "count", "accuracy", "confidence"}]}
      (accuracy and confidence are None for an empty bin).
    """
    confidences = np.asarray(confidences, np.float64)
    correct = np.asarray(correct, bool)
    edges = np.linspace(0.0, 1.0, bins + 1)
    # Bin i holds (edges[i], edges[i + 1]]; a confidence of exactly 0 goes to the first.
    index = np.clip(np.searchsorted(edges, confidences, side="left") - 1, 0, bins - 1)
    rows, ece = [], 0.0
    for i in range(bins):
        members = index == i
        count = int(members.sum())
        row = {"low": float(edges[i]), "high": float(edges[i + 1]), "count": count}
        if count:
            accuracy = float(correct[members].mean())
            confidence = float(confidences[members].mean())
            ece += count * abs(accuracy - confidence)
            row.update(accuracy=accuracy, confidence=confidence)
        else:
            row.update(accuracy=None, confidence=None)
        rows.append(row)
    total = len(confidences)
    return {"ece": float(ece / total) if total else float("nan"), "bins": rows}


def confusion_order(counts: np.ndarray) -> np.ndarray:
    """A class order that puts classes confused with each other next to each other.

    Spectral seriation: classes linked by confusions (in either direction) form
    groups; within a group, classes are sorted by the Fiedler vector (second
    eigenvector of the normalized graph Laplacian) of the symmetric,
    row-normalized confusion rates, which places strongly confused classes close
    together. Groups follow each other; classes never confused come last, in
    their original order.
    """
    counts = np.asarray(counts, np.float64)
    totals = counts.sum(axis=1, keepdims=True)
    rates = np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)
    np.fill_diagonal(rates, 0.0)
    similarity = rates + rates.T
    linked = similarity.sum(axis=1) > 0
    order: list[int] = []
    for group in _components(similarity):
        if not linked[group[0]]:
            continue
        if len(group) > 2:
            block = similarity[np.ix_(group, group)]
            scale = 1.0 / np.sqrt(block.sum(axis=1))
            laplacian = np.eye(len(group)) - scale[:, None] * block * scale[None, :]
            fiedler = np.linalg.eigh(laplacian)[1][:, 1] * scale
            group = [group[i] for i in np.argsort(fiedler, kind="stable")]
        order.extend(group)
    order.extend(np.flatnonzero(~linked).tolist())
    return np.asarray(order, np.int64)


def _components(similarity: np.ndarray) -> list[list[int]]:
    """Connected components of a graph given by its weighted adjacency matrix."""
    n = len(similarity)
    seen = np.zeros(n, bool)
    groups = []
    for start in range(n):
        if seen[start]:
            continue
        stack, group = [start], []
        seen[start] = True
        while stack:
            node = stack.pop()
            group.append(node)
            for other in np.flatnonzero(similarity[node] > 0):
                if not seen[other]:
                    seen[other] = True
                    stack.append(other)
        groups.append(sorted(group))
    return groups


def coverage_curve(confidences: np.ndarray, correct: np.ndarray) -> dict:
    """Precision of the predictions kept against the share kept, over every threshold.

    Keeping the k most confident predictions gives coverage k/N and precision
    (correct among them)/k. A distractor (a photo without a landmark) counts as a
    wrong prediction whenever it is kept.

    Returns:
      {"coverage", "precision", "threshold"}: arrays ordered by falling threshold.
    """
    confidences = np.asarray(confidences, np.float64)
    order = np.argsort(-confidences, kind="stable")
    hits = np.cumsum(np.asarray(correct, bool)[order])
    kept = np.arange(1, len(order) + 1)
    return {
        "coverage": kept / max(len(order), 1),
        "precision": hits / kept,
        "threshold": confidences[order],
    }


def check_threshold(threshold: float) -> None:
    """Raises UserError unless the reject threshold is a probability."""
    if not 0.0 <= threshold <= 1.0:
        raise UserError(f"--reject_threshold must be within [0, 1], got {threshold}")


def thresholds_for_precision(curve: dict, targets=(0.9, 0.95, 0.99)) -> dict[str, float | None]:
    """The lowest reject threshold at which the kept predictions reach each target precision.

    curve: coverage_curve's result. None where no threshold reaches the target.
    """
    result: dict[str, float | None] = {}
    for target in targets:
        reaching = np.flatnonzero(curve["precision"] >= target)
        result[f"{target:g}"] = float(curve["threshold"][reaching[-1]]) if len(reaching) else None
    return result


def apply_rejection(probabilities: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Top-1 predictions and confidences, NO_LANDMARK where the confidence is below threshold.

    A confidence equal to the threshold is kept. Returns (predictions, confidences);
    a rejected query's confidence is -inf, so GAP treats it as no prediction.
    """
    predictions = np.argmax(probabilities, axis=1)
    confidences = probabilities[np.arange(len(predictions)), predictions].astype(np.float64)
    rejected = confidences < threshold
    return (
        np.where(rejected, NO_LANDMARK, predictions),
        np.where(rejected, -np.inf, confidences),
    )


def count_relevant(query_labels: np.ndarray, gallery_labels: np.ndarray) -> np.ndarray:
    """[Q] how many gallery items share each query's label (0 for a NO_LANDMARK query).

    The denominator of mean_average_precision_at_k. When the queries are gallery photos
    themselves, leave each query out of its own count (and out of its retrieved list).
    """
    query_labels = np.asarray(query_labels, np.int64)
    gallery_labels = np.asarray(gallery_labels, np.int64)
    gallery_labels = gallery_labels[gallery_labels != NO_LANDMARK]
    size = int(max(query_labels.max(initial=-1), gallery_labels.max(initial=-1))) + 1
    per_label = np.bincount(gallery_labels, minlength=size)
    return np.where(query_labels != NO_LANDMARK, per_label[np.maximum(query_labels, 0)], 0)


def mean_average_precision_at_k(
    retrieved_labels: np.ndarray,
    query_labels: np.ndarray,
    relevant_counts: np.ndarray,
    k: int = 100,
) -> float:
    """mAP@k of the Google Landmarks v2 retrieval challenge (k = 100 there).

    For each query q with m_q > 0 relevant gallery items (same label):

        AP@k(q) = 1 / min(m_q, k) * sum_{i <= k} P_q(i) * rel_q(i)

    where P_q(i) is the precision over the first i retrieved items and rel_q(i) is 1
    when item i is relevant. mAP@k is the mean over those queries; queries with no
    relevant item (NO_LANDMARK queries, classes absent from the gallery) are left out.
    A retrieved distractor (label NO_LANDMARK) is never relevant. Fewer than k retrieved
    items (a small gallery) count as they are; the denominator stays min(m_q, k).

    Args:
      retrieved_labels: [Q, K] labels of the gallery items retrieved for each query,
        most similar first.
      query_labels: [Q] each query's label.
      relevant_counts: [Q] m_q, e.g. from count_relevant.
      k: how many retrieved items count.

    Returns:
      mAP@k, or nan when no query has a relevant item.
    """
    retrieved_labels = np.asarray(retrieved_labels).reshape(len(query_labels), -1)[:, :k]
    query_labels = np.asarray(query_labels)
    relevant_counts = np.asarray(relevant_counts, np.int64)
    scored = (relevant_counts > 0) & (query_labels != NO_LANDMARK)
    if not scored.any():
        return float("nan")
    relevant = retrieved_labels[scored] == query_labels[scored, None]
    precision_at_i = np.cumsum(relevant, axis=1) / np.arange(1, relevant.shape[1] + 1)
    denominator = np.minimum(relevant_counts[scored], k)
    return float(np.mean(np.sum(precision_at_i * relevant, axis=1) / denominator))


def recall_at_k(retrieved_labels: np.ndarray, query_labels: np.ndarray, k: int) -> float:
    """Fraction of landmark queries with a correct label among their k first retrieved items.

    NO_LANDMARK queries are left out (they have no correct label); a query whose class is
    absent from the gallery counts as a miss. nan without landmark queries.
    """
    retrieved_labels = np.asarray(retrieved_labels).reshape(len(query_labels), -1)[:, :k]
    query_labels = np.asarray(query_labels)
    landmark = query_labels != NO_LANDMARK
    if not landmark.any():
        return float("nan")
    hits = np.any(retrieved_labels[landmark] == query_labels[landmark, None], axis=1)
    return float(np.mean(hits))
