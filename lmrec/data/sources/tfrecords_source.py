"""Existing TFRecord shards in the Model Garden / DELF layout as a prepare source.

`--source=tfrecords --input_dir=DIR` reads every file in DIR named like a shard,
NAME-NNNNN-of-NNNNN with or without a suffix (train-00000-of-00128,
validation-00003-of-00008.tfrecord, val-00000-of-00002.tfrecord.gz): train, validation
and test shards alike, because prepare makes its own stratified split. To use only some
shards, give prepare a folder that holds only those (links are fine). Hidden files and
files not named like a shard are not read.

Each record is a tf.train.Example with image/encoded and image/class/label (int64);
--tfrecords_label_offset is subtracted from the label (1 for 1-based sets). The image
id is image/id, else image/filename, else "<shard>#<record index>". Labels need not
be contiguous: prepare renumbers the classes it keeps.

Class names, in label order, come from the first of:
  1. labels.json in DIR, lmrec's own format ([{"index", "name", "landmark_id"}]), whose
     index is the label after the offset (so a folder made by lmrec.prepare reads as is);
  2. label_map.csv in DIR with a header `label,name` (and optionally `landmark_id`), whose
     label is the number stored in the records, before the offset;
  3. the records themselves: image/class/text, else image/class/landmark_id, else the
     label number; this costs one extra read of the shards when the source is opened.
Two labels with the same name are told apart as "NAME (LABEL)".

Nothing is dropped silently: a shard that cannot be read to its end (truncated,
corrupt, not a TFRecord file) and a record that cannot be used (no image, no label,
a negative label, a label missing from the label map) are listed in stats.json with
the reason, and the records before a damaged spot are kept.
"""

from __future__ import annotations

import collections
import csv
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

import tensorflow as tf
from google.protobuf.message import DecodeError

from lmrec.data import records
from lmrec.data.sources.base import Source, SourceItem
from lmrec.errors import UserError
from lmrec.settings import setting

if TYPE_CHECKING:  # annotations only: lmrec.config imports the sources
    from lmrec.config import PrepareConfig

SHARD_NAME = re.compile(r"-\d{5}-of-\d{5}(?!\d)")
LABEL_MAP_CSV = "label_map.csv"
CLASS_TEXT = "image/class/text"
FILENAME = "image/filename"


class _Record(NamedTuple):
    where: str  # "<shard>#<record index>"
    image_id: str
    label: int  # after the offset
    encoded: bytes
    text: str
    landmark_id: str


def find_shards(input_dir: str) -> list[str]:
    """The shard files in input_dir, sorted by name.

    Raises:
      UserError: input_dir is not given, not a folder, or holds no shard.
    """
    if not input_dir:
        raise UserError(
            "--input_dir is required for --source=tfrecords: a folder of TFRecord shards "
            "named like train-00000-of-00004"
        )
    if not os.path.isdir(input_dir):
        raise UserError(f"--input_dir={input_dir!r} is not a folder")
    names = sorted(os.listdir(input_dir))
    shards = [
        os.path.join(input_dir, name)
        for name in names
        if not name.startswith(".")
        and SHARD_NAME.search(name)
        and os.path.isfile(os.path.join(input_dir, name))
    ]
    if not shards:
        seen = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "") or "nothing"
        raise UserError(
            f"--input_dir={input_dir!r} holds no TFRecord shards: expected files named "
            "NAME-NNNNN-of-NNNNN with an optional suffix (train-00000-of-00004, "
            f"validation-00000-of-00002.tfrecord); found {seen}"
        )
    return shards


@dataclass(frozen=True)
class TfrecordsOptions:
    """--source=tfrecords's options (it reads the shards in --input_dir)."""

    tfrecords_label_offset: int = setting(
        0, "For --source=tfrecords: subtracted from stored labels (1 for 1-based label sets)."
    )


def source(config: PrepareConfig, options: TfrecordsOptions) -> Source:
    """Opens the shards in config.input_dir (see the module docstring for the layout).

    Returns:
      A streaming Source: items() reads the shards in name order, the same every time.
      Source.rejected holds damaged shards and unusable records once one read has
      passed over them (when names come from the records, already on return).

    Raises:
      UserError: no shards, or a malformed label map.
    """
    shards = find_shards(config.input_dir)
    offset = options.tfrecords_label_offset
    rejected: list[tuple[str, str]] = []
    reported: set[tuple[str, str]] = set()

    def report(what: str, reason: str) -> None:
        # Both reads of prepare meet the same damage; it is listed once.
        if (what, reason) not in reported:
            reported.add((what, reason))
            rejected.append((what, reason))

    def read() -> Iterator[_Record]:
        return _read(shards, offset, report)

    names, landmarks, names_from = _label_map(config.input_dir, offset)
    if names is None:
        names, landmarks = _names_from_records(read())
        names_from = "the records"
    names = _unique(names)
    class_names = [names[label] for label in sorted(names)]

    def items() -> Iterator[SourceItem]:
        for record in read():
            if record.label not in names:
                report(record.where, f"label {record.label} is not in {names_from}")
                continue
            yield SourceItem(
                image_id=record.image_id,
                class_name=names[record.label],
                load=_returning(record.encoded),
                landmark_id=record.landmark_id or landmarks.get(record.label, ""),
            )

    return Source(
        name="tfrecords",
        class_names=class_names,
        items=items,
        rejected=rejected,
        landmark_ids={names[label]: lid for label, lid in landmarks.items() if label in names},
        streaming=True,
        info={
            "shards": [os.path.basename(path) for path in shards],
            "label_offset": offset,
            "class_names_from": names_from,
        },
    )


def _read(shards: list[str], offset: int, report: Callable[[str, str], None]) -> Iterator[_Record]:
    """Every usable record of every shard, in order; reports the rest."""
    for path in shards:
        shard = os.path.basename(path)
        compression = "GZIP" if shard.endswith(".gz") else ""
        count = 0
        try:
            dataset = tf.data.TFRecordDataset(path, compression_type=compression)
            for serialized in dataset.as_numpy_iterator():
                where = f"{shard}#{count}"
                count += 1
                record = _parse(serialized, where, offset)
                if isinstance(record, str):
                    report(where, record)
                else:
                    yield record
        except tf.errors.DataLossError as error:
            # TFRecord framing cannot be resynchronised after a damaged spot: keep what
            # came before it and go on with the next shard.
            report(shard, f"stopped reading after {count} records: {_tf_message(error)}")


def _parse(serialized: bytes, where: str, offset: int) -> _Record | str:
    """One record, or the reason it cannot be used."""
    try:
        example = tf.train.Example.FromString(serialized)
    except DecodeError:
        return "not a tf.train.Example"
    feature = example.features.feature
    encoded = feature[records.ENCODED].bytes_list.value if records.ENCODED in feature else []
    if not encoded:
        return f"no {records.ENCODED}"
    stored = _first(feature, records.LABEL)
    if stored is None:
        return f"no {records.LABEL}"
    if not isinstance(stored, int):
        return f"{records.LABEL} is not an int64 ({stored!r})"
    label = stored - offset
    if label < 0:
        return (
            f"label {stored} minus --tfrecords_label_offset={offset} is negative "
            "(an unlabeled record, or the wrong offset)"
        )
    image_id = _text(_first(feature, records.IMAGE_ID)) or _text(_first(feature, FILENAME))
    return _Record(
        where=where,
        image_id=image_id or where,
        label=label,
        encoded=encoded[0],
        text=_text(_first(feature, CLASS_TEXT)),
        landmark_id=_text(_first(feature, records.LANDMARK_ID)),
    )


def _first(feature: Any, key: str) -> Any:
    """The first value of a feature of any kind (bytes, int or float), or None."""
    if key not in feature:
        return None
    kind = feature[key].WhichOneof("kind")
    values = getattr(feature[key], kind).value if kind else []
    return values[0] if values else None


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace").strip()
    return str(value)


def _label_map(input_dir: str, offset: int) -> tuple[dict[int, str] | None, dict[int, str], str]:
    """(names by label, landmark ids by label, file name) from a label map, or (None, {}, "")."""
    if os.path.isfile(os.path.join(input_dir, records.LABELS_FILE)):
        entries = records.read_labels(input_dir)
        names = {entry["index"]: entry["name"] for entry in entries}
        landmarks = {e["index"]: str(e["landmark_id"]) for e in entries if e.get("landmark_id")}
        return names, landmarks, records.LABELS_FILE
    path = os.path.join(input_dir, LABEL_MAP_CSV)
    if not os.path.isfile(path):
        return None, {}, ""
    names, landmarks = {}, {}
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        if not {"label", "name"} <= set(reader.fieldnames or []):
            raise UserError(
                f"{path} must start with a header line `label,name` (optionally ,landmark_id); "
                f"it has {reader.fieldnames}"
            )
        for row in reader:
            try:
                label = int(row["label"]) - offset
            except (TypeError, ValueError):
                raise UserError(
                    f"{path} line {reader.line_num}: label {row['label']!r} is not an integer"
                ) from None
            if not row["name"] or label in names:
                raise UserError(
                    f"{path} line {reader.line_num}: "
                    + ("empty name" if not row["name"] else f"label {row['label']} repeats")
                )
            names[label] = row["name"]
            if row.get("landmark_id"):
                landmarks[label] = row["landmark_id"]
    return names, landmarks, LABEL_MAP_CSV


def _names_from_records(stream: Iterator[_Record]) -> tuple[dict[int, str], dict[int, str]]:
    """Names by label from image/class/text (else landmark id, else the label), one read."""
    names: dict[int, str] = {}
    landmarks: dict[int, str] = {}
    for record in stream:
        if record.label not in names or not names[record.label]:
            names[record.label] = record.text
        if record.landmark_id:
            landmarks.setdefault(record.label, record.landmark_id)
    return {
        label: name or landmarks.get(label) or str(label) for label, name in names.items()
    }, landmarks


def _unique(names: dict[int, str]) -> dict[int, str]:
    counts = collections.Counter(names.values())
    return {
        label: name if counts[name] == 1 else f"{name} ({label})" for label, name in names.items()
    }


def _returning(data: bytes) -> Callable[[], bytes]:
    """The item's load(): the bytes were already read from the shard."""
    return lambda: data


def _tf_message(error: tf.errors.OpError) -> str:
    """A TF runtime error without its op/function decorations."""
    message = re.sub(r"\{\{.*?\}\}\s*", "", error.message)
    return re.sub(r"\s*\[Op:.*$", "", message, flags=re.S).strip()
