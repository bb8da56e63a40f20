"""Figures people would rather look at than read: confusion matrix, training curves.

Uses matplotlib's Agg backend (no screen needed) and writes PNGs atomically.
"""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - the backend must be chosen first.
import numpy as np  # noqa: E402

from lmrec import atomic  # noqa: E402


def _png_bytes(figure, dpi: int = 110) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(figure)
    return buffer.getvalue()


def _save(figure, path: str) -> bytes:
    """Writes the figure as a PNG file atomically; returns the PNG bytes (for reports)."""
    png = _png_bytes(figure)
    atomic.write_bytes(path, png)
    return png


def confusion_matrix_png(
    counts: np.ndarray,
    class_names: list[str],
    path: str,
    title: str,
    order: np.ndarray | None = None,
    annotate_top: int = 10,
) -> bytes:
    """Row-normalized confusion matrix that stays readable with many classes.

    Classes are shown in `order` (metrics.confusion_order clusters confused
    classes); counts are written in every cell up to 30 classes, beyond that only
    on the diagonal's neighbours that matter: the `annotate_top` largest
    confusions are circled and labelled with their counts. Tick labels thin out
    above 60 classes.
    """
    n = len(class_names)
    order = np.arange(n) if order is None else np.asarray(order)
    counts = counts[np.ix_(order, order)]
    names = [class_names[i] for i in order]
    totals = counts.sum(axis=1, keepdims=True)
    normalized = np.divide(counts, totals, out=np.zeros(counts.shape), where=totals > 0)
    side = min(4 + 0.3 * n, 28)
    figure, axis = plt.subplots(figsize=(side, side * 0.9))
    image = axis.imshow(normalized, cmap="Blues", vmin=0.0, vmax=1.0)
    figure.colorbar(image, ax=axis, fraction=0.046, pad=0.04, label="fraction of true class")
    step = max(1, -(-n // 60))
    ticks = range(0, n, step)
    font = 8 if n <= 30 else max(4, 9 - n // 25)
    axis.set_xticks(ticks, labels=[names[i][:30] for i in ticks], rotation=60, ha="right")
    axis.set_yticks(ticks, labels=[names[i][:30] for i in ticks])
    axis.tick_params(labelsize=font)
    axis.set_xlabel("predicted")
    axis.set_ylabel("true")
    axis.set_title(title)
    if n <= 30:
        for true in range(n):
            for predicted in range(n):
                if counts[true, predicted]:
                    color = "white" if normalized[true, predicted] > 0.5 else "black"
                    axis.text(
                        predicted,
                        true,
                        str(counts[true, predicted]),
                        ha="center",
                        va="center",
                        fontsize=7,
                        color=color,
                    )
    off_diagonal = counts - np.diag(np.diag(counts))
    top = np.argsort(-off_diagonal, axis=None, kind="stable")[:annotate_top]
    for true, predicted in zip(*np.unravel_index(top, counts.shape), strict=True):
        if not off_diagonal[true, predicted]:
            continue
        axis.scatter(
            predicted, true, s=160, facecolors="none", edgecolors="tab:red", linewidths=1.2
        )
        if n > 30:
            axis.annotate(
                f"{counts[true, predicted]}: {names[true][:16]} -> {names[predicted][:16]}",
                (predicted, true),
                xytext=(6, -6),
                textcoords="offset points",
                fontsize=7,
                color="tab:red",
            )
    return _save(figure, path)


def reliability_png(calibration: dict, path: str, title: str) -> bytes:
    """Reliability diagram: accuracy per confidence bin against the diagonal, with ECE.

    Hatched: the gap between a bin's accuracy and its mean confidence.

    calibration: metrics.calibration's result. Bar widths are the bins; the bar
    under each shows how many predictions fell in it.
    """
    bins = [b for b in calibration["bins"] if b["count"]]
    figure, (axis, counts_axis) = plt.subplots(
        2, 1, figsize=(5, 6), gridspec_kw={"height_ratios": [3, 1]}, sharex=True
    )
    for b in bins:
        width = b["high"] - b["low"]
        axis.bar(
            b["low"],
            b["accuracy"],
            width=width,
            align="edge",
            color="tab:blue",
            alpha=0.8,
            edgecolor="white",
        )
        gap_low, gap_high = sorted((b["accuracy"], b["confidence"]))
        axis.bar(
            b["low"],
            gap_high - gap_low,
            bottom=gap_low,
            width=width,
            align="edge",
            fill=False,
            hatch="//",
            edgecolor="tab:red",
            linewidth=0.5,
        )
        counts_axis.bar(b["low"], b["count"], width=width, align="edge", color="tab:gray")
    axis.plot([0, 1], [0, 1], "k--", linewidth=1, label="perfect calibration")
    axis.bar(0, 0, color="tab:blue", label="accuracy")
    axis.bar(0, 0, fill=False, hatch="//", edgecolor="tab:red", label="gap to confidence")
    axis.set_ylabel("accuracy")
    axis.set_xlim(0, 1)
    axis.set_ylim(0, 1)
    axis.set_title(f"{title}\nECE {calibration['ece']:.3f}")
    axis.legend(loc="upper left", fontsize=8)
    counts_axis.set_xlabel("confidence of the top prediction")
    counts_axis.set_ylabel("predictions")
    return _save(figure, path)


def coverage_png(curves: dict[str, dict], path: str, title: str) -> bytes:
    """Precision of the kept predictions against coverage, one line per curve.

    curves: {label: metrics.coverage_curve(...)}, e.g. with and without distractors.
    """
    figure, axis = plt.subplots(figsize=(5.5, 4))
    for label, curve in curves.items():
        axis.plot(curve["coverage"], curve["precision"], label=label)
    axis.set_xlabel("coverage (share of photos given a landmark)")
    axis.set_ylabel("precision of the tags given")
    axis.set_xlim(0, 1)
    axis.set_ylim(0, 1.02)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    axis.set_title(title)
    return _save(figure, path)


def training_curves_png(history: list[dict], path: str) -> None:
    """Loss and accuracy per epoch, train and val, with the frozen -> fine-tune boundary marked."""
    epochs = [row["epoch"] for row in history]
    figure, axes = plt.subplots(1, 2, figsize=(11, 4))
    for axis, metric in zip(axes, ("loss", "accuracy"), strict=True):
        for prefix, style in (("", "-o"), ("val_", "--s")):
            values = [row.get(prefix + metric) for row in history]
            if any(v is not None for v in values):
                axis.plot(
                    epochs,
                    [np.nan if v is None else v for v in values],
                    style,
                    label=(prefix or "train_") + metric,
                    markersize=3,
                )
        boundaries = [
            row["epoch"] - 0.5
            for previous, row in zip(history, history[1:], strict=False)
            if row["phase"] != previous["phase"]
        ]
        for boundary in boundaries:
            axis.axvline(boundary, color="gray", linestyle=":", label="backbone unfrozen")
        axis.set_xlabel("epoch")
        axis.set_title(metric)
        axis.grid(alpha=0.3)
        if history:
            axis.legend(fontsize=8)
        else:  # A run stopped before its first epoch ended: say so, not a blank chart.
            axis.text(
                0.5, 0.5, "no epoch finished", ha="center", va="center", transform=axis.transAxes
            )
    _save(figure, path)


def prediction_grid_png(
    images: np.ndarray,
    true_names: list[str],
    predicted_names: list[str],
    confidences: list[float],
) -> bytes:
    """Photos (uint8 [N, H, W, 3]) in rows of 4, each titled true / predicted (probability).

    Right predictions are titled in green, wrong ones in red. Returns PNG bytes,
    for TensorBoard (lmrec.train's sample predictions) rather than a file.
    """
    columns = min(4, len(images))
    rows = -(-len(images) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(2.3 * columns, 2.5 * rows), squeeze=False)
    for axis in axes.flat:
        axis.axis("off")
    for axis, image, true, predicted, confidence in zip(
        axes.flat, images, true_names, predicted_names, confidences, strict=False
    ):
        axis.imshow(image)
        axis.set_title(
            f"true: {true[:22]}\npred: {predicted[:22]} ({confidence:.2f})",
            fontsize=8,
            color="tab:green" if true == predicted else "tab:red",
        )
    return _png_bytes(figure, dpi=80)


def explanation_grid_png(rows: list[dict], path: str) -> None:
    """Photo | Grad-CAM overlay | saliency, one row per photo (lmrec.gradcam).

    Each row: {"name", "title", "photo": uint8 [S, S, 3], "gradcam": uint8 [S, S, 3],
    "saliency": float [S, S] in [0, 1]}.
    """
    figure, axes = plt.subplots(len(rows), 3, figsize=(7.5, 2.6 * len(rows)), squeeze=False)
    for (photo_axis, cam_axis, saliency_axis), row in zip(axes, rows, strict=True):
        photo_axis.imshow(row["photo"])
        photo_axis.set_title(row["name"][:36], fontsize=8)
        cam_axis.imshow(row["gradcam"])
        cam_axis.set_title(f"Grad-CAM: {row['title']}", fontsize=8)
        saliency_axis.imshow(row["saliency"], cmap="gray", vmin=0.0, vmax=1.0)
        saliency_axis.set_title("saliency", fontsize=8)
        for axis in (photo_axis, cam_axis, saliency_axis):
            axis.axis("off")
    _save(figure, path)


def dataset_stats_png(stats: dict, path: str) -> None:
    """A prepared dataset at a glance: the long tail, photo sizes, and why files were skipped.

    Panel 1: images per class, sorted, on a log scale (GLDv2 subsets are long-tailed).
    Panel 2: original photo sizes (width x height, in 32-pixel buckets), dot area by count.
    Panel 3: skipped files by reason (the part before any detail in parentheses).
    """
    figure, axes = plt.subplots(1, 3, figsize=(16, 4.2))
    per_class = sorted(
        (c["train"] + c["val"] for c in stats["classes"] if c.get("index") is not None),
        reverse=True,
    )
    axis = axes[0]
    if per_class:
        axis.bar(range(len(per_class)), per_class, width=1.0, color="tab:blue")
        axis.set_yscale("log")
    axis.set_xlabel(f"class rank ({len(per_class)} classes)")
    axis.set_ylabel("images (train + val)")
    axis.set_title("images per class")
    axis.grid(alpha=0.3, axis="y")

    axis = axes[1]
    sizes = stats.get("image_sizes", {})
    if sizes:
        widths, heights, counts = zip(
            *((int(k.split("x")[0]), int(k.split("x")[1]), n) for k, n in sizes.items()),
            strict=True,
        )
        area = 400 * np.sqrt(np.asarray(counts) / max(counts))
        axis.scatter(widths, heights, s=area, alpha=0.5, color="tab:green")
    axis.set_xlabel("width (px)")
    axis.set_ylabel("height (px)")
    axis.set_title(f"photo sizes ({sum(sizes.values())} kept photos)")
    axis.grid(alpha=0.3)

    axis = axes[2]
    reasons: dict[str, int] = {}
    for entry in stats.get("skipped", []):
        reason = entry["reason"].split(" (")[0]
        reasons[reason] = reasons.get(reason, 0) + 1
    if reasons:
        ordered = sorted(reasons.items(), key=lambda kv: kv[1], reverse=True)[:12]
        axis.barh([r for r, _ in ordered][::-1], [n for _, n in ordered][::-1], color="tab:red")
    else:
        axis.text(0.5, 0.5, "no file skipped", ha="center", va="center", transform=axis.transAxes)
    axis.set_xlabel("files")
    axis.set_title(f"skipped files ({len(stats.get('skipped', []))})")
    _save(figure, path)


def comparison_png(rows: list[dict], path: str, title: str) -> None:
    """Accuracy, macro-F1 and GAP per model as grouped bars, and fine-tuning seconds per epoch."""
    names = [row["name"] for row in rows]
    positions = np.arange(len(rows))
    figure, (scores, seconds) = plt.subplots(
        1, 2, figsize=(max(9, 1.6 * len(rows) + 5), 4.5), gridspec_kw={"width_ratios": [3, 2]}
    )
    metrics = (("accuracy", "test accuracy"), ("macro_f1", "macro-F1"), ("gap", "GAP"))
    width = 0.8 / len(metrics)
    for index, (key, label) in enumerate(metrics):
        values = [np.nan if row.get(key) is None else row[key] for row in rows]
        bars = scores.bar(positions + (index - 1) * width, values, width, label=label)
        scores.bar_label(bars, fmt="%.2f", fontsize=6, padding=1)
    scores.set_ylim(0, 1.08)
    scores.set_title("scores (higher is better)")
    seconds_per_epoch = [
        row.get("seconds_per_epoch_finetune") or row.get("seconds_per_epoch_frozen") or np.nan
        for row in rows
    ]
    bars = seconds.bar(positions, seconds_per_epoch, 0.6, color="tab:gray")
    seconds.bar_label(bars, fmt="%.0f", fontsize=7, padding=1)
    seconds.set_title("seconds per fine-tuning epoch")
    for axis in (scores, seconds):
        axis.set_xticks(positions, names, rotation=30, ha="right", fontsize=8)
        axis.grid(axis="y", alpha=0.3)
    scores.legend(fontsize=8, loc="lower right")
    figure.suptitle(title, fontsize=10)
    _save(figure, path)


def lr_find_png(
    learning_rates: list[float],
    losses: list[float],
    smoothed: list[float],
    suggestion: float,
    path: str,
    title: str,
) -> None:
    """The learning-rate range test: loss against learning rate (log axis), suggestion marked."""
    figure, axis = plt.subplots(figsize=(7, 4.5))
    axis.plot(learning_rates, losses, color="tab:blue", alpha=0.3, label="loss per step")
    axis.plot(learning_rates, smoothed, color="tab:blue", label="smoothed loss")
    axis.axvline(suggestion, color="tab:red", linestyle="--", label=f"suggestion {suggestion:.2g}")
    finite = [v for v in smoothed if np.isfinite(v)]
    if finite:
        # Diverged steps would squash the interesting part of the curve.
        low, high = min(finite), min(max(finite), 4 * min(finite))
        axis.set_ylim(low - 0.05 * (high - low), high + 0.05 * (high - low) + 1e-6)
    axis.set_xscale("log")
    axis.set_xlabel("learning rate")
    axis.set_ylabel("training loss")
    axis.set_title(title)
    axis.grid(alpha=0.3, which="both")
    axis.legend(fontsize=8)
    _save(figure, path)
