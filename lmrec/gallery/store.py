"""A gallery on disk: <model_dir>/gallery/gallery.json and immutable segment files.

    gallery/
      gallery.json          {"format", "fingerprint", "dimension", "built_from",
                             "labels": [{"id", "name", "origin", "count"}], "next_label_id",
                             "segments": [{"name", "count", "labels": [label ids]}],
                             "next_segment"}
      segments/<name>.npz   "embeddings" float16 [n, D] (L2-normalized), "label_ids" int32 [n]
                            (label "id"s of gallery.json), "photo_ids" (UTF-8 bytes of every id,
                            uint8) and "photo_id_offsets" int64 [n + 1] (where each id starts)

A segment is written once under a new name and never changed; gallery.json, rewritten
atomically, is the one list of the segments that make the gallery. A writer adds or
replaces segments first, then gallery.json, then deletes the segments it no longer
lists, so a reader of gallery.json finds every segment it names (or, if a writer
deleted one in between, reads gallery.json again: the old gallery or the new, never a
mix). Label ids are stable: removing a label rewrites only the segments holding it.
Photo ids are stored as bytes plus offsets, not as a pickled or fixed-width array: no
pickle is ever loaded, and a long path costs its own length only.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass

import numpy as np

from lmrec import atomic
from lmrec.errors import UserError
from lmrec.metrics import NO_LANDMARK

GALLERY_DIR = "gallery"  # <model_dir>/gallery
INDEX_FILE = "gallery.json"
SEGMENTS_DIR = "segments"
SEGMENT_SUFFIX = ".npz"
FORMAT = 1
ORIGINS = ("trained", "added", "distractor")
READ_ATTEMPTS = 5  # reads of gallery.json + segments while a writer replaces them
READ_RETRY_SECONDS = 0.1


@dataclass
class Segment:
    """One segment file's rows."""

    embeddings: np.ndarray  # float16 [n, D]
    label_ids: np.ndarray  # int32 [n]: gallery.json label ids
    photo_ids: list[str]


@dataclass(frozen=True)
class Label:
    """A gallery label: its name, where it came from, and how many photos it has."""

    name: str
    origin: str  # "trained" | "added" | "distractor"
    count: int


@dataclass
class Gallery:
    """A whole gallery in memory, label ids made contiguous (indices into labels)."""

    embeddings: np.ndarray  # float16 [N, D], L2-normalized
    label_ids: np.ndarray  # int32 [N], indices into labels
    photo_ids: list[str]
    labels: list[Label]
    fingerprint: str  # lmrec.embeddings.fingerprint of the model that embedded them

    def class_names(self) -> list[str]:
        return [label.name for label in self.labels]

    def origins(self) -> list[str]:
        return [label.origin for label in self.labels]

    @property
    def dimension(self) -> int:
        return int(self.embeddings.shape[1])

    @property
    def distractor_id(self) -> int | None:
        """The index of the "no landmark" label, or None when no distractors were added."""
        found = [i for i, label in enumerate(self.labels) if label.origin == "distractor"]
        return found[0] if found else None

    def vote_labels(self) -> np.ndarray:
        """label_ids with the distractor rows as metrics.NO_LANDMARK (-1): the labels kNN
        voting takes (lmrec.knn), where a "no landmark" neighbour votes for no class."""
        if self.distractor_id is None:
            return self.label_ids
        return np.where(self.label_ids == self.distractor_id, NO_LANDMARK, self.label_ids).astype(
            np.int32
        )


def gallery_dir(model_dir: str) -> str:
    return os.path.join(model_dir, GALLERY_DIR)


def segment_path(directory: str, name: str) -> str:
    return os.path.join(directory, SEGMENTS_DIR, name + SEGMENT_SUFFIX)


def write_segment(
    directory: str,
    name: str,
    embeddings: np.ndarray,
    label_ids: np.ndarray,
    photo_ids: list[str],
    durable: bool = True,
) -> dict:
    """Writes segments/<name>.npz atomically; returns its gallery.json entry.

    The embeddings (L2-normalized by lmrec.embeddings) are stored rounded to float16:
    half the memory of float32, and a cosine similarity off by about 1e-3 at most.
    """
    if not (len(embeddings) == len(label_ids) == len(photo_ids)):
        raise ValueError("a segment needs as many label ids and photo ids as embeddings")
    encoded = [photo_id.encode("utf-8") for photo_id in photo_ids]
    offsets = np.zeros(len(encoded) + 1, np.int64)
    offsets[1:] = np.cumsum([len(e) for e in encoded])
    path = segment_path(directory, name)
    with atomic.replacing(path, durable=durable) as tmp, open(tmp, "wb") as f:
        np.savez(
            f,
            embeddings=np.asarray(embeddings, np.float16),
            label_ids=np.asarray(label_ids, np.int32),
            photo_ids=np.frombuffer(b"".join(encoded), np.uint8),
            photo_id_offsets=offsets,
        )
    return {
        "name": name,
        "count": len(photo_ids),
        "labels": sorted({int(i) for i in np.asarray(label_ids)}),
    }


def read_segment(directory: str, name: str, with_embeddings: bool = True) -> Segment:
    """Reads segments/<name>.npz (never unpickling); with_embeddings=False skips them.

    Raises:
      FileNotFoundError: no such segment (a writer may have just replaced it).
      UserError: the file is not a segment.
    """
    path = segment_path(directory, name)
    try:
        with np.load(path, allow_pickle=False) as data:
            embeddings = data["embeddings"] if with_embeddings else np.zeros((0, 0), np.float16)
            label_ids = data["label_ids"].astype(np.int32)
            raw = data["photo_ids"].tobytes()
            offsets = data["photo_id_offsets"]
    except FileNotFoundError:
        raise
    except (OSError, KeyError, ValueError) as error:
        raise UserError(f"{path} is not a readable gallery segment ({error}); rebuild it") from None
    bounds = zip(offsets[:-1].tolist(), offsets[1:].tolist(), strict=True)
    photo_ids = [raw[start:end].decode("utf-8") for start, end in bounds]
    if len(photo_ids) != len(label_ids) or (with_embeddings and len(embeddings) != len(label_ids)):
        raise UserError(f"{path} holds rows of different lengths; rebuild the gallery")
    return Segment(embeddings, label_ids, photo_ids)


def read_index(directory: str) -> dict:
    """gallery.json as a dict; FileNotFoundError when there is none."""
    path = os.path.join(directory, INDEX_FILE)
    with open(path, encoding="utf-8") as f:
        try:
            index = json.load(f)
        except ValueError as error:
            raise UserError(f"{path} is not valid JSON ({error}); rebuild the gallery") from None
    if not isinstance(index, dict) or index.get("format") != FORMAT:
        raise UserError(f"{path} is not a gallery of format {FORMAT}; rebuild the gallery")
    return index


def write_index(directory: str, index: dict) -> None:
    atomic.write_json(os.path.join(directory, INDEX_FILE), index)


def remove_unlisted_segments(directory: str, index: dict) -> list[str]:
    """Deletes segment files gallery.json no longer lists. Only while holding the gallery's
    lock: a reader that still wanted one re-reads gallery.json (read_gallery)."""
    listed = {segment["name"] + SEGMENT_SUFFIX for segment in index["segments"]}
    folder = os.path.join(directory, SEGMENTS_DIR)
    removed = []
    if os.path.isdir(folder):
        for name in os.listdir(folder):
            if name.endswith(SEGMENT_SUFFIX) and not name.startswith(".") and name not in listed:
                os.remove(os.path.join(folder, name))
                removed.append(name)
    return removed


def new_segment_name(index: dict, kind: str) -> str:
    """A name no segment of this gallery had (gallery.json counts them)."""
    number = int(index.get("next_segment", 0))
    index["next_segment"] = number + 1
    return f"{kind}-{number:05d}"


def read_gallery(directory: str) -> tuple[dict, list[Segment]]:
    """gallery.json and every segment it lists, consistent with each other.

    A writer may replace gallery.json and delete the segments it dropped between the
    two reads; then gallery.json is read again.

    Raises:
      FileNotFoundError: there is no gallery.json.
      UserError: a listed segment stays missing, or a file is damaged.
    """
    for attempt in range(READ_ATTEMPTS):
        try:
            index = read_index(directory)
            return index, [read_segment(directory, s["name"]) for s in index["segments"]]
        except FileNotFoundError as error:
            last = error
            if attempt + 1 < READ_ATTEMPTS:
                time.sleep(READ_RETRY_SECONDS)
    if os.path.isfile(os.path.join(directory, INDEX_FILE)):
        raise UserError(f"{last.filename} is missing; rebuild the gallery")
    raise last


def to_gallery(index: dict, segments: list[Segment]) -> Gallery:
    """The in-memory Gallery: segments concatenated, label ids made contiguous."""
    labels = [Label(e["name"], e["origin"], int(e["count"])) for e in index["labels"]]
    position = {int(entry["id"]): i for i, entry in enumerate(index["labels"])}
    dimension = int(index["dimension"])
    if segments:
        embeddings = np.concatenate([s.embeddings for s in segments]).astype(np.float16, copy=False)
        stored = np.concatenate([s.label_ids for s in segments])
    else:
        embeddings = np.zeros((0, dimension), np.float16)
        stored = np.zeros(0, np.int32)
    lookup = np.full(max(position, default=-1) + 1, -1, np.int32)
    for stored_id, i in position.items():
        lookup[stored_id] = i
    known = (stored >= 0) & (stored < len(lookup))
    label_ids = lookup[np.where(known, stored, 0)] if len(lookup) else stored
    if not np.all(known) or np.any(label_ids < 0):
        raise UserError(
            "The gallery's segments hold a label gallery.json does not list; rebuild it"
        )
    if embeddings.shape[1:] != (dimension,):
        raise UserError(
            f"The gallery's embeddings have shape {embeddings.shape[1:]}, gallery.json says "
            f"({dimension},); rebuild it"
        )
    photo_ids = [photo_id for s in segments for photo_id in s.photo_ids]
    return Gallery(embeddings, label_ids.astype(np.int32), photo_ids, labels, index["fingerprint"])
