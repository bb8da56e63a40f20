"""The TFRecord Example schema: how a Record is serialized and parsed.

Keys follow the TensorFlow Model Garden / DELF convention so lmrec shards are
interchangeable with theirs: image/encoded (JPEG bytes), image/class/label
(int64, contiguous 0..N-1), image/id, plus image/class/landmark_id,
image/format, image/height and image/width.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

import tensorflow as tf

from lmrec.errors import UserError

ENCODED = "image/encoded"
LABEL = "image/class/label"
IMAGE_ID = "image/id"
LANDMARK_ID = "image/class/landmark_id"
FORMAT = "image/format"
HEIGHT = "image/height"
WIDTH = "image/width"

SPLITS = ("train", "val")
LABELS_FILE = "labels.json"
STATS_FILE = "stats.json"
STATS_PLOT_FILE = "stats.png"
SHARD_SUFFIX = ".tfrecord"


@dataclass(frozen=True)
class Record:
    """One validated image ready to be written."""

    image_id: str
    label: int
    encoded: bytes  # JPEG
    height: int
    width: int
    landmark_id: str = ""


def to_example_bytes(record: Record) -> bytes:
    """Serializes a Record as a tf.train.Example."""

    def _bytes(value: bytes):
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))

    def _int(value: int):
        return tf.train.Feature(int64_list=tf.train.Int64List(value=[value]))

    feature = {
        ENCODED: _bytes(record.encoded),
        LABEL: _int(record.label),
        IMAGE_ID: _bytes(record.image_id.encode("utf-8")),
        LANDMARK_ID: _bytes(record.landmark_id.encode("utf-8")),
        FORMAT: _bytes(b"jpeg"),
        HEIGHT: _int(record.height),
        WIDTH: _int(record.width),
    }
    example = tf.train.Example(features=tf.train.Features(feature=feature))
    return example.SerializeToString()


def feature_spec() -> dict[str, Any]:
    """The parsing spec; optional keys have defaults so Model Garden shards also parse."""
    return {
        ENCODED: tf.io.FixedLenFeature([], tf.string),
        LABEL: tf.io.FixedLenFeature([], tf.int64),
        IMAGE_ID: tf.io.FixedLenFeature([], tf.string, default_value=""),
        LANDMARK_ID: tf.io.FixedLenFeature([], tf.string, default_value=""),
    }


def parse_example(serialized):
    """Parses one serialized Example into a dict of tensors keyed as above."""
    return tf.io.parse_single_example(serialized, feature_spec())


def shard_name(split: str, index: int, count: int) -> str:
    return f"{split}-{index:05d}-of-{count:05d}{SHARD_SUFFIX}"


def shard_pattern(data_dir: str, split: str) -> str:
    return os.path.join(data_dir, f"{split}-*{SHARD_SUFFIX}")


class ShardWriter:
    """Streams Records already in memory into rolling shards of one split.

    For tests and benchmarks that make their own Records. lmrec.prepare does not
    use it: it plans its shards up front and writes each with
    lmrec.data.shards.write_shard, so worker processes and Beam can share the work.
    Shards get their final `<split>-NNNNN-of-MMMMM.tfrecord` names in finish(),
    once the count is known.
    """

    def __init__(self, directory: str, split: str, images_per_shard: int):
        if images_per_shard < 1:
            raise ValueError(f"images_per_shard must be >= 1, got {images_per_shard}")
        self._directory = directory
        self._split = split
        self._per_shard = images_per_shard
        self._writer = None
        self._provisional: list[str] = []
        self._in_current = 0
        self.count = 0

    def write(self, record: Record) -> None:
        if self._writer is None or self._in_current >= self._per_shard:
            self._close_current()
            name = f".{self._split}-{len(self._provisional):05d}.inprogress"
            self._provisional.append(name)
            self._writer = tf.io.TFRecordWriter(os.path.join(self._directory, name))
        self._writer.write(to_example_bytes(record))
        self._in_current += 1
        self.count += 1

    def _close_current(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
            self._in_current = 0

    def finish(self) -> list[str]:
        """Closes the last shard and renames all to their final names; returns those names."""
        self._close_current()
        total = len(self._provisional)
        final = []
        for index, name in enumerate(self._provisional):
            final_name = shard_name(self._split, index, total)
            os.rename(
                os.path.join(self._directory, name), os.path.join(self._directory, final_name)
            )
            final.append(final_name)
        return final


def read_labels(directory: str) -> list[dict[str, Any]]:
    """Reads labels.json: a list of {"index", "name", "landmark_id"} ordered by index."""
    path = os.path.join(directory, LABELS_FILE)
    if not os.path.exists(path):
        raise UserError(f"{path} is missing: every dataset and model_dir carries its labels.json")
    with open(path, encoding="utf-8") as f:
        labels = json.load(f)
    for expected, entry in enumerate(labels):
        if entry.get("index") != expected or not entry.get("name"):
            raise UserError(f"{path}: entry {expected} is malformed: {entry!r}")
    return labels


def label_names(labels: list[dict[str, Any]]) -> list[str]:
    return [entry["name"] for entry in labels]
