"""Trains several models on the same data and compares them in one table.

    python -m lmrec.compare --flagfile=configs/compare/vietnam_landmarks.cfg

The command line (or flagfile) holds the shared settings: the data, the schedule,
--compare_dir, and --models, a comma-separated list of entries. Each entry is a
flagfile, optionally followed by space-separated overrides, e.g.
    --models=configs/recipes/lite0_transfer.cfg,configs/recipes/lite0_transfer.cfg --head=gem
An entry's flags go on top of the shared ones, but the data is the shared
command line's for every entry (prepare settings, --data_dir and --data), so all
models see the same photos. Each entry trains in <compare_dir>/<name>/ and its
row is kept in <compare_dir>/rows/<name>.json, so a killed comparison resumes
with the entries it had not finished. The table (Markdown, CSV, JSON) and a bar
chart go to <compare_dir>/comparison.{md,csv,json,png}.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import sys
import time
from dataclasses import dataclass

from absl import flags

from lmrec import atomic, cli, console, plots, run_lock, training
from lmrec import config as config_lib
from lmrec import flags as lmrec_flags
from lmrec.config import ExperimentConfig
from lmrec.errors import UserError
from lmrec.models import backbones

ROWS_DIR = "rows"
OUTPUT_STEM = "comparison"

# (row key, column title, format) in table order.
COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("name", "model", "{}"),
    ("backbone", "backbone", "{}"),
    ("weights", "weights", "{}"),
    ("head", "head", "{}"),
    ("loss", "loss", "{}"),
    ("image_size", "px", "{}"),
    ("params_trainable", "trainable params", "{:,}"),
    ("params_non_trainable", "non-trainable params", "{:,}"),
    ("params_total", "total params", "{:,}"),
    ("train_accuracy", "train acc", "{:.3f}"),
    ("val_accuracy", "val acc", "{:.3f}"),
    ("accuracy", "test acc", "{:.3f}"),
    ("macro_f1", "macro-F1", "{:.3f}"),
    ("gap", "GAP", "{:.3f}"),
    ("seconds_per_epoch_frozen", "s/epoch phase 1", "{:.1f}"),
    ("seconds_per_epoch_finetune", "s/epoch phase 2", "{:.1f}"),
    ("seconds_total", "total s", "{:.0f}"),
)


@dataclass(frozen=True)
class Entry:
    """One model of the comparison: its name and its full experiment config."""

    name: str
    config: ExperimentConfig


def split_entries(models: str) -> list[list[str]]:
    """'a.cfg --head=gem,b.cfg' -> [['--flagfile=a.cfg', '--head=gem'], ['--flagfile=b.cfg']]."""
    entries = []
    for text in models.split(","):
        words = text.split()
        if not words:
            continue
        path, overrides = words[0], words[1:]
        if not os.path.isfile(path):
            raise UserError(f"--models entry {text.strip()!r}: no flagfile at {path}")
        bad = [word for word in overrides if not word.startswith("--")]
        if bad:
            raise UserError(
                f"--models entry {text.strip()!r}: overrides must be --name=value flags, got {bad}"
            )
        entries.append([f"--flagfile={path}", *overrides])
    if not entries:
        raise UserError("--models is empty: give a comma-separated list of flagfiles to compare")
    return entries


def entry_name(config: ExperimentConfig) -> str:
    """backbone_head_loss, plus _scratch when the backbone starts from random weights."""
    model = config.model
    parts = [model.backbone, model.head, model.loss]
    if not backbones.uses_pretrained_weights(model.weights):
        parts.append("scratch")
    return "_".join(parts)


def build_entries(shared_args: list[str], models: str, compare_dir: str) -> list[Entry]:
    """Parses every entry on top of the shared flags, with the shared data forced on it."""
    shared = config_lib.experiment_from_flags(lmrec_flags.parse(shared_args))
    entries: list[Entry] = []
    names: dict[str, int] = {}
    for entry_args in split_entries(models):
        config = config_lib.experiment_from_flags(lmrec_flags.parse([*shared_args, *entry_args]))
        name = entry_name(config)
        names[name] = names.get(name, 0) + 1
        if names[name] > 1:
            name = f"{name}_{names[name]}"
        config = config.replace(
            prepare=dataclasses.asdict(shared.prepare),
            data={"data_dir": shared.data.data_dir, "seed": shared.data.seed},
            evaluate={"data": shared.evaluate.data},
            train={"model_dir": os.path.join(compare_dir, name), "evaluate_after": True},
        )
        entries.append(Entry(name, config))
    return entries


def _mean_epoch_seconds(history: list[dict], phase: str) -> float | None:
    seconds = [row["seconds"] for row in history if row["phase"] == phase]
    return round(sum(seconds) / len(seconds), 2) if seconds else None


def _selected_row(history: list[dict], best_epoch: int | None) -> dict:
    for row in history:
        if row["epoch"] == best_epoch:
            return row
    return history[-1]


def row_from_result(entry: Entry, result, seconds: float) -> dict:
    """The comparison's columns for one trained entry (metrics on the evaluation data)."""
    history = result.history
    selected = _selected_row(history, result.best_epoch)
    parameters = result.parameters.get("finetune") or result.parameters.get("frozen") or {}
    metrics = result.metrics or {}
    model = entry.config.model
    return {
        "name": entry.name,
        "backbone": model.backbone,
        "weights": model.weights or "none",
        "head": model.head,
        "loss": model.loss,
        "image_size": backbones.resolve_image_size(model.backbone, entry.config.data.image_size),
        "params_trainable": parameters.get("trainable"),
        "params_non_trainable": parameters.get("non_trainable"),
        "params_total": parameters.get("total"),
        "train_accuracy": selected.get("accuracy"),
        "val_accuracy": selected.get("val_accuracy"),
        "selected_epoch": selected["epoch"],
        "accuracy": metrics.get("accuracy"),
        "macro_f1": metrics.get("macro_f1"),
        "gap": metrics.get("gap"),
        "evaluated_images": metrics.get("num_images"),
        "seconds_per_epoch_frozen": _mean_epoch_seconds(history, "frozen"),
        "seconds_per_epoch_finetune": _mean_epoch_seconds(history, "finetune"),
        "seconds_total": round(seconds, 1),
        "model_dir": entry.config.train.model_dir,
        "data_dir": result.data_dir,
    }


def result_data_dir(rows: list[dict], compare_dir: str) -> str:
    """The prepared dataset every row trained on (the same for all, by construction)."""
    return rows[0]["data_dir"] if rows else compare_dir


def _cell(row: dict, key: str, fmt: str) -> str:
    value = row.get(key)
    return "-" if value is None else fmt.format(value)


def markdown(rows: list[dict]) -> str:
    lines = [
        "| " + " | ".join(title for _, title, _ in COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
    ]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row, key, fmt) for key, _, fmt in COLUMNS) + " |")
    return "\n".join(lines)


def csv_text(rows: list[dict]) -> str:
    buffer = io.StringIO()
    keys = list(rows[0]) if rows else [key for key, _, _ in COLUMNS]
    writer = csv.DictWriter(buffer, fieldnames=keys, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def _row_path(compare_dir: str, name: str) -> str:
    return os.path.join(compare_dir, ROWS_DIR, f"{name}.json")


def _finished_row(entry: Entry, compare_dir: str) -> dict | None:
    """The row an earlier (maybe killed) comparison wrote for this entry, if its config matches."""
    path = _row_path(compare_dir, entry.name)
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        saved = json.load(f)
    if saved.get("config") != entry.config.to_dict():
        return None  # the entry changed since: train it again
    return saved["row"]


def write_outputs(rows: list[dict], compare_dir: str, title: str) -> dict[str, str]:
    """comparison.md/.csv/.json/.png in compare_dir; returns the paths by kind."""
    paths = {
        kind: os.path.join(compare_dir, f"{OUTPUT_STEM}.{kind}")
        for kind in ("md", "csv", "json", "png")
    }
    table = markdown(rows)
    atomic.write_text(paths["md"], f"# {title}\n\n{table}\n")
    atomic.write_text(paths["csv"], csv_text(rows))
    atomic.write_json(paths["json"], {"title": title, "rows": rows, "markdown": table})
    plots.comparison_png(rows, paths["png"], title)
    return paths


def compare(
    shared_args: list[str], models: str, compare_dir: str, verbose: bool = True
) -> list[dict]:
    """Trains (or reuses) every entry and writes the comparison; returns its rows.

    Args:
      shared_args: lmrec flags every entry starts from, e.g. ["--flagfile=configs/x.cfg"];
        their data settings apply to every entry.
      models: the --models list (see the module docstring).
      compare_dir: where runs, rows and the table go.
      verbose: training progress and a line per entry; False is lmrec.console's quiet
        mode for this call. The table goes to stdout either way.
    """
    if not compare_dir:
        raise UserError("--compare_dir is empty: say where the comparison's runs and table go")
    entries = build_entries(shared_args, models, compare_dir)
    with console.quiet(console.is_quiet() or not verbose):
        # One comparison per compare_dir (its rows and table); each entry's run locks its
        # own model_dir inside it.
        with run_lock.folder(compare_dir, "compare_dir", "--compare_dir", not console.is_quiet()):
            return _compare_holding_lock(entries, compare_dir)


def _compare_holding_lock(entries: list[Entry], compare_dir: str) -> list[dict]:
    """compare()'s work, done while holding the compare_dir's lock."""
    rows = []
    for number, entry in enumerate(entries, start=1):
        row = _finished_row(entry, compare_dir)
        if row is not None:
            console.say(f"[{number}/{len(entries)}] {entry.name}: done earlier, reused")
            rows.append(row)
            continue
        console.say(f"[{number}/{len(entries)}] training {entry.name} ...")
        started = time.time()
        result = training.train_and_evaluate(entry.config)
        row = row_from_result(entry, result, time.time() - started)
        atomic.write_json(
            _row_path(compare_dir, entry.name), {"config": entry.config.to_dict(), "row": row}
        )
        rows.append(row)
        console.say(markdown([row]).splitlines()[-1])
    title = f"{len(rows)} models on {result_data_dir(rows, compare_dir)}"
    paths = write_outputs(rows, compare_dir, title)
    print(markdown(rows))
    console.say("wrote " + ", ".join(paths.values()))
    return rows


def main(argv: list[str]) -> int:
    settings = config_lib.from_flags(config_lib.CompareConfig, flags.FLAGS)
    # Every entry re-parses the same command line (its --models is ignored there) plus its own.
    compare(sys.argv[1:], settings.models, settings.compare_dir, verbose=True)
    return 0


def run() -> None:
    cli.run_stage("compare", main, positional=False)


if __name__ == "__main__":
    run()
