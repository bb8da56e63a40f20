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
    "gallery",
    "calibration",
    "open-set",
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
"""


def _image(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


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


def render(summary: dict, figures: dict[str, bytes], title: str) -> str:
    """The report page.

    Args:
      summary: evaluate's metrics.json content.
      figures: PNG bytes by name: confusion_matrix, gallery, reliability, coverage.
      title: the page heading (the model_dir's name).
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
            "gallery",
            "Highest-loss photos",
            '<p class="note">The photos the model got most wrong: true and predicted label '
            "with the predicted probability (red: misclassified).</p>"
            + figure.get("gallery", "<p>No photos.</p>"),
        ),
        _section(
            "calibration",
            "Calibration",
            f'<p class="note">Expected calibration error {summary["ece"]:.3f} over '
            f"{len(summary['calibration'])} confidence bins: how far the model's confidence is "
            "from its accuracy.</p>" + figure.get("reliability", ""),
        ),
        _section("open-set", "Non-landmark photos and rejection", _open_set(open_set, figure)),
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


def write(path: str, summary: dict, figures: dict[str, bytes], title: str) -> None:
    """Writes the page atomically."""
    atomic.write_text(path, render(summary, figures, title))
