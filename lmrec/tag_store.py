"""predict's output, safe to interrupt and resume.

Every batch of tags is appended to a journal beside the output
(<output>.partial.jsonl, flushed and fsynced), and the CSV or JSON output is
written atomically from all rows at the end, or on Ctrl-C. A re-run with the
same --output reads both, skips the photos already tagged (photos that failed
are tried again) and finishes the file. A kill loses at most the batch in flight.
"""

from __future__ import annotations

import csv
import io
import json
import os
import weakref
from dataclasses import dataclass, field

from lmrec import atomic, run_lock
from lmrec.errors import UserError

JOURNAL_SUFFIX = ".partial.jsonl"
FORMATS = (".csv", ".json")


@dataclass
class Row:
    """One photo's outcome: tagged (label, score, top) or failed (error)."""

    file: str
    label: str = ""
    score: float = 0.0
    top: list[tuple[str, float]] = field(default_factory=list)
    error: str = ""
    tagged_from: str = ""  # a RAW file's twin the tags come from
    # Where the photo is: its own GPS (located_from "photo" or "sidecar"), or its
    # landmark's location ("landmark") when it had none; None/"" when neither.
    latitude: float | None = None
    longitude: float | None = None
    located_from: str = ""
    gps_note: str = ""  # how the photo's GPS changed the answer; "" when it did not

    def as_json(self) -> dict:
        payload = {"file": self.file}
        if self.error:
            payload["error"] = self.error
            return payload
        payload.update(
            label=self.label,
            score=self.score,
            top=[{"label": label, "score": score} for label, score in self.top],
        )
        if self.tagged_from:
            payload["tagged_from"] = self.tagged_from
        if self.located_from:
            payload.update(lat=self.latitude, lon=self.longitude, located_from=self.located_from)
        if self.gps_note:
            payload["gps_note"] = self.gps_note
        return payload

    @classmethod
    def from_json(cls, payload: dict) -> Row:
        return cls(
            file=payload["file"],
            label=payload.get("label", ""),
            score=float(payload.get("score", 0.0)),
            top=[(item["label"], float(item["score"])) for item in payload.get("top", [])],
            error=payload.get("error", ""),
            tagged_from=payload.get("tagged_from", ""),
            latitude=_float_or_none(payload.get("lat")),
            longitude=_float_or_none(payload.get("lon")),
            located_from=payload.get("located_from", ""),
            gps_note=payload.get("gps_note", ""),
        )


def _float_or_none(value) -> float | None:
    return None if value in (None, "") else float(value)


def _key(path: str) -> str:
    return os.path.normcase(os.path.abspath(path))


def check_output(output: str) -> None:
    if output and not output.lower().endswith(FORMATS):
        raise UserError(f"--output={output!r} must end with .csv or .json")


class TagStore:
    """The rows of one --output: those from earlier runs, and the new ones as they come.

    The store holds the output's lock (<output>.lock, lmrec.run_lock) from its creation
    until finish() or close(), so two predicts never write one --output. Use it in a
    with block to release the lock on every path; a store dropped without close()
    releases it when collected, or at exit.
    """

    def __init__(self, output: str, model: str, verbose: bool = True):
        check_output(output)
        self.output = output
        self.model = model
        self.journal = output + JOURNAL_SUFFIX if output else ""
        self._rows: dict[str, Row] = {}
        self.resumed = 0
        self._release = lambda: None
        if not output:
            return
        holding = run_lock.output_file(output, verbose=verbose)
        self._release = weakref.finalize(self, holding.release)
        try:
            self._load()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Releases the output's lock (finish() does too); safe to call again."""
        self._release()

    def __enter__(self) -> TagStore:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def _load(self) -> None:
        if os.path.isfile(self.output):
            for row in self._read_output():
                self._rows[_key(row.file)] = row
        if os.path.isfile(self.journal):
            for row in self._read_journal():
                self._rows[_key(row.file)] = row
        self.resumed = sum(1 for row in self._rows.values() if not row.error)

    def _read_output(self) -> list[Row]:
        try:
            with open(self.output, encoding="utf-8", newline="") as f:
                text = f.read()
            if self.output.lower().endswith(".json"):
                payload = json.loads(text)
                self._check_model(payload.get("model"), self.output)
                return [Row.from_json(p) for p in payload.get("predictions", [])]
            records = csv.DictReader(io.StringIO(text))
            # Ignored files are listed anew from each run's scan, not carried over.
            return [_csv_row(r) for r in records if not r["error"].startswith(IGNORED_PREFIX)]
        except (ValueError, KeyError, TypeError) as error:
            raise UserError(
                f"--output={self.output} exists but is not an lmrec predict output ({error}); "
                "name a new file or move it away"
            ) from None

    def _read_journal(self) -> list[Row]:
        rows = []
        with open(self.journal, encoding="utf-8") as f:
            for number, line in enumerate(f):
                try:
                    payload = json.loads(line)
                except ValueError:
                    continue  # the line a kill cut short: its photo is tagged again.
                if number == 0 and "model" in payload and "file" not in payload:
                    self._check_model(payload["model"], self.journal)
                    continue
                rows.append(Row.from_json(payload))
        return rows

    def _check_model(self, found: str | None, path: str) -> None:
        if found and found != self.model:
            raise UserError(
                f"{path} holds tags from {found}, not {self.model}; name a new --output "
                "(or delete it) to tag with this model"
            )

    def is_done(self, path: str) -> bool:
        row = self._rows.get(_key(path))
        return row is not None and not row.error

    def add(self, rows: list[Row], journal: bool = True) -> None:
        """Records a batch: in memory, and appended to the journal before returning."""
        for row in rows:
            self._rows[_key(row.file)] = row
        if not (self.journal and journal and rows):
            return
        new_journal = not os.path.exists(self.journal)
        with open(self.journal, "a", encoding="utf-8") as f:
            if new_journal:
                f.write(json.dumps({"model": self.model}) + "\n")
            f.write("".join(json.dumps(row.as_json(), ensure_ascii=False) + "\n" for row in rows))
            f.flush()
            os.fsync(f.fileno())
        if new_journal:  # the journal's name, not only its data, must survive a power cut
            atomic.fsync_directory(os.path.dirname(os.path.abspath(self.journal)))

    def rows(self, order: list[str]) -> list[Row]:
        """All rows: those of order first (in that order), then earlier rows not in it."""
        ranked = {_key(path): i for i, path in enumerate(order)}
        return sorted(self._rows.values(), key=lambda r: ranked.get(_key(r.file), len(ranked)))

    def finish(self, rows: list[Row], ignored: list[dict[str, str]], k: int) -> None:
        """Writes the output atomically from rows, drops the journal, releases the lock."""
        if not self.output:
            return
        if self.output.lower().endswith(".json"):
            atomic.write_json(
                self.output,
                {
                    "model": self.model,
                    "predictions": [r.as_json() for r in rows if not r.error],
                    "failures": [{"file": r.file, "reason": r.error} for r in rows if r.error],
                    "ignored": ignored,
                },
            )
        else:
            atomic.write_text(self.output, _csv_text(rows, ignored, k))
        if os.path.exists(self.journal):
            os.remove(self.journal)
        self.close()


CSV_HEADER = [
    "file",
    "label",
    "score",
    "error",
    "tagged_from",
    "lat",
    "lon",
    "located_from",
    "gps_note",
]
IGNORED_PREFIX = "ignored: "


def _csv_text(rows: list[Row], ignored: list[dict[str, str]], k: int) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    header = list(CSV_HEADER)
    for rank in range(1, k + 1):
        header += [f"label_{rank}", f"score_{rank}"]
    writer.writerow(header)
    for r in rows:
        if r.error:
            writer.writerow([r.file, "", "", r.error, "", "", "", "", ""])
            continue
        tops = [value for label, score in r.top[:k] for value in (label, f"{score:.4f}")]
        where = (
            [f"{r.latitude:.7f}", f"{r.longitude:.7f}", r.located_from]
            if r.located_from
            else ["", "", ""]
        )
        writer.writerow(
            [r.file, r.label, f"{r.score:.4f}", "", r.tagged_from, *where, r.gps_note, *tops]
        )
    for item in ignored:
        writer.writerow([item["file"], "", "", IGNORED_PREFIX + item["reason"], "", "", "", "", ""])
    return buffer.getvalue()


def _csv_row(record: dict) -> Row:
    """A CSV line back into a Row (failed photos come back as errors, tried again)."""
    if record.get("error"):
        return Row(file=record["file"], error=record["error"])
    top = []
    rank = 1
    while record.get(f"label_{rank}"):
        top.append((record[f"label_{rank}"], float(record[f"score_{rank}"])))
        rank += 1
    return Row(
        file=record["file"],
        label=record["label"],
        score=float(record["score"]),
        top=top,
        tagged_from=record.get("tagged_from", ""),
        latitude=_float_or_none(record.get("lat")),
        longitude=_float_or_none(record.get("lon")),
        located_from=record.get("located_from") or "",
        gps_note=record.get("gps_note") or "",
    )
