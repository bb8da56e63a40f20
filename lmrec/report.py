"""The evaluation report as one self-contained HTML file (figures embedded as data URIs).

It opens from disk in any browser, with no server and no other files, so it can
be mailed, attached to an issue, or opened from Colab's file browser.
"""

from __future__ import annotations

import base64
import datetime
import html

from lmrec import atomic

# Section ids, in page order; tests check that each one is present.
SECTIONS = (
    "summary",
    "confusion",
    "most-confused",
    "per-class",
    "highest-loss",
    "calibration",
    "open-set",
    "classifiers",
    "skipped",
)

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; font-size: 0.9em; }
td, th { padding: 3px 10px; border-bottom: 1px solid #eee; text-align: right; }
td:first-child, th:first-child { text-align: left; }
img { max-width: 100%; border: 1px solid #ddd; }
.weak { color: #b00; }
.note { color: #666; font-size: 0.9em; }
.neighbours td { vertical-align: top; text-align: center; font-size: 0.8em; }
.neighbours img { display: block; margin: 0 auto 2px; max-height: 112px; }
.missing { width: 112px; height: 84px; margin: 0 auto 2px; background: #eee; color: #888;
  display: flex; align-items: center; justify-content: center; }
"""


def _image(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _thumbnail(jpeg: bytes | None, alt: str) -> str:
    """A JPEG thumbnail as an <img>; a grey placeholder when the photo could not be read."""
    if not jpeg:
        return f'<div class="missing" title="{html.escape(alt)}">photo unavailable</div>'
    data = base64.b64encode(jpeg).decode("ascii")
    label = html.escape(alt)
    return f'<img alt="{label}" title="{label}" src="data:image/jpeg;base64,{data}">'


def _table(header: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{_cell(value)}</td>" for value in row) + "</tr>" for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    return html.escape(str(value))


def _section(anchor: str, title: str, body: str) -> str:
    return f'<section id="{anchor}"><h2>{html.escape(title)}</h2>{body}</section>'


def render(
    summary: dict, figures: dict[str, bytes], title: str, neighbours: list[dict] | None = None
) -> str:
    """The report page.

    Args:
      summary: evaluate's metrics.json content.
      figures: PNG bytes by name: confusion_matrix, highest_loss, reliability, coverage,
        and classifiers when the model has a gallery.
      title: the page heading (the model_dir's name).
      neighbours: evaluate.worst_neighbours: highest-loss photos with their nearest
        gallery photos (JPEG thumbnails), shown under the highest-loss grid.
    """
    figure = {name: _image(png, name) for name, png in figures.items()}
    open_set = summary.get("open_set", {})
    headline = [
        ["photos evaluated", summary["num_images"]],
        ["accuracy", summary["accuracy"]],
        ["top-5 accuracy", summary["top5_accuracy"]],
        ["macro F1", summary["macro_f1"]],
        ["micro F1", summary["micro_f1"]],
        ["GAP", summary["gap"]],
        ["expected calibration error", summary["ece"]],
    ]
    if open_set.get("distractors"):
        headline.append(["GAP with distractors", open_set["gap"]])
    parts = [
        _section(
            "summary",
            "Summary",
            f'<p class="note">Data: {html.escape(summary["data"])}</p>'
            + _table(["metric", "value"], headline),
        ),
        _section(
            "confusion",
            "Confusion matrix",
            '<p class="note">Rows: true class, normalized; classes ordered so that confusions '
            "cluster; the largest confusions are circled.</p>" + figure.get("confusion_matrix", ""),
        ),
        _section(
            "most-confused",
            "Most-confused pairs",
            _table(
                ["true", "predicted as", "photos"],
                [[c["true"], c["predicted"], c["count"]] for c in summary["most_confused"]],
            )
            if summary["most_confused"]
            else "<p>No confusions.</p>",
        ),
        _section(
            "per-class",
            "Per class",
            _table(
                ["class", "precision", "recall", "F1", "photos"],
                [
                    [c["class"], c["precision"], c["recall"], c["f1"], c["support"]]
                    for c in sorted(summary["per_class"], key=lambda c: c["f1"])
                ],
            )
            + '<p class="note">Weakest classes first.</p>',
        ),
        _section(
            "highest-loss",
            "Highest-loss photos",
            '<p class="note">The photos the model got most wrong: true and predicted label '
            "with the predicted probability (red: misclassified).</p>"
            + figure.get("highest_loss", "<p>No photos.</p>")
            + _neighbours(neighbours or []),
        ),
        _section(
            "calibration",
            "Calibration",
            f'<p class="note">Expected calibration error {summary["ece"]:.3f} over '
            f"{len(summary['calibration'])} confidence bins: how far the model's confidence is "
            "from its accuracy.</p>" + figure.get("reliability", ""),
        ),
        _section("open-set", "Non-landmark photos and rejection", _open_set(open_set, figure)),
        _section(
            "classifiers",
            "Classifiers side by side",
            _classifiers(summary.get("classifiers"), summary.get("retrieval"), figure),
        ),
        _cam_crop(summary.get("cam_crop")),
        _section(
            "skipped",
            "Skipped",
            _table(
                ["file or class", "reason"],
                [[e.get("file", e.get("class", "")), e["reason"]] for e in summary["skipped"]],
            )
            if summary["skipped"]
            else "<p>Nothing was skipped.</p>",
        ),
    ]
    when = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}: evaluation</title><style>{_STYLE}</style></head><body>"
        f"<h1>{html.escape(title)}: evaluation report</h1>"
        f'<p class="note">lmrec.evaluate, {when}</p>' + "".join(parts) + "</body></html>"
    )


def _cam_crop(cam_crop: dict | None) -> str:
    if not cam_crop:
        return ""
    rows = [[name, cam_crop[name]["accuracy"], cam_crop[name]["gap"]] for name in cam_crop]
    return _section(
        "cam-crop",
        "CAM-guided crop",
        '<p class="note">Each photo classified whole, cropped to its Grad-CAM region, and '
        "by the mean of both probabilities.</p>" + _table(["input", "accuracy", "GAP"], rows),
    )


def _open_set(open_set: dict, figure: dict[str, str]) -> str:
    rows = [
        ["reject threshold", open_set.get("threshold", 0.0)],
        ["distractor photos", open_set.get("distractors", 0)],
        ["GAP (landmark photos only)", open_set.get("gap_without_distractors")],
        ["GAP (with distractors)", open_set.get("gap")],
        ["accuracy (a distractor is right when rejected)", open_set.get("accuracy")],
        ["landmark photos rejected", open_set.get("landmarks_rejected")],
        ["distractors rejected", open_set.get("distractors_rejected")],
    ]
    for target, threshold in open_set.get("thresholds_for_precision", {}).items():
        if threshold is not None:
            rows.append([f"threshold giving precision {target} on this data", threshold])
    rows = [row for row in rows if row[1] is not None]
    return (
        '<p class="note">Photos whose top probability is below the threshold are answered '
        '"no landmark". The curve shows the precision of the tags given against the share '
        "of photos tagged, for every threshold.</p>"
        + _table(["", "value"], rows)
        + figure.get("coverage", "")
    )


def _neighbours(rows: list[dict]) -> str:
    """Each highest-loss photo beside its nearest gallery photos, label and similarity."""
    if not rows:
        return ""
    body = []
    for row in rows:
        cells = [
            _thumbnail(row["image"], row["id"])
            + f"true: {html.escape(row['true'])}<br>"
            + f"pred: {html.escape(row['predicted'])} ({row['confidence']:.2f})"
        ]
        for near in row["neighbours"]:
            cells.append(
                _thumbnail(near["image"], near["photo_id"])
                + f"{html.escape(near['label'])}<br>similarity {near['similarity']:.3f}"
            )
        body.append("<tr>" + "".join(f"<td>{cell}</td>" for cell in cells) + "</tr>")
    columns = max(len(row["neighbours"]) for row in rows)
    head = "<th>photo</th>" + "".join(f"<th>gallery #{i + 1}</th>" for i in range(columns))
    return (
        '<p class="note">Nearest photos of the embedding gallery (cosine similarity): '
        "when they show the predicted landmark, they explain the mistake.</p>"
        f'<table class="neighbours"><tr>{head}</tr>{"".join(body)}</table>'
    )


def _classifiers(classifiers: dict | None, retrieval: dict | None, figure: dict[str, str]) -> str:
    if not classifiers:
        return (
            '<p class="note">The model has no embedding gallery; build one with python -m '
            "lmrec.gallery build to compare softmax, knn and hybrid.</p>"
        )
    names = list(classifiers)
    rows = [
        ["open-set score", *[classifiers[n]["score"] for n in names]],
        ["threshold", *[classifiers[n]["threshold"] for n in names]],
        ["accuracy (landmark photos)", *[classifiers[n]["accuracy"] for n in names]],
        ["GAP without distractors", *[classifiers[n]["gap_without_distractors"] for n in names]],
    ]
    if any(classifiers[n]["distractors_rejected"] is not None for n in names):
        rows.append(["GAP with distractors", *[classifiers[n]["gap"] for n in names]])
    rows.append(
        ["landmark photos rejected", *[classifiers[n]["landmarks_rejected"] for n in names]]
    )
    if any(classifiers[n]["distractors_rejected"] is not None for n in names):
        rows.append(
            ["distractors rejected", *[classifiers[n]["distractors_rejected"] for n in names]]
        )
    rows = [[row[0], *["" if v is None else v for v in row[1:]]] for row in rows]
    parts = [
        '<p class="note">The same photos answered by the trained softmax, by the votes of '
        "the nearest gallery photos (knn), and by both (hybrid), each rejecting below its "
        "own open-set score and threshold.</p>",
        _table(["", *names], rows),
        figure.get("classifiers", ""),
    ]
    if retrieval:
        parts.append(
            f'<p class="note">Retrieval: the {retrieval["queries"]} landmark photos searched '
            f"among the {retrieval['gallery_photos']} gallery photos.</p>"
            + _table(
                ["metric", "value"],
                [
                    [name, "" if retrieval[key] is None else retrieval[key]]
                    for name, key in (
                        ("mAP@100", "map_at_100"),
                        ("recall@1", "recall_at_1"),
                        ("recall@5", "recall_at_5"),
                    )
                ],
            )
        )
    return "".join(parts)


def write(
    path: str,
    summary: dict,
    figures: dict[str, bytes],
    title: str,
    neighbours: list[dict] | None = None,
) -> None:
    """Writes the page atomically."""
    atomic.write_text(path, render(summary, figures, title, neighbours))
