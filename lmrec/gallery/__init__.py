"""A gallery per model: the embeddings of labelled photos, for kNN classification.

    python -m lmrec.gallery build  --model_dir=runs/demo [--data=photos/by_class]
    python -m lmrec.gallery add    --model_dir=runs/demo --label="Cầu Rồng" photos/cau_rong/
    python -m lmrec.gallery add    --model_dir=runs/demo --distractors=photos/no_landmarks/
    python -m lmrec.gallery remove --model_dir=runs/demo --label="Cầu Rồng"
    python -m lmrec.gallery list   --model_dir=runs/demo

build embeds the photos the model was trained on (its prepared train split, or class
folders) into <model_dir>/gallery/ (format: lmrec/gallery/store.py). add embeds more
photos under a label, a new landmark or one the model knows, without retraining; with
distractors=True they are "no landmark" photos, which kNN uses to reject photos of no
landmark. load() returns the whole gallery for search, refusing one that another model
(or an earlier checkpoint) embedded: the embeddings would not be comparable.

Every write holds <model_dir>/.gallery.lock. build writes one segment per chunk of
CHUNK_SIZE photos into <model_dir>/.gallery.inprogress/, so a killed build resumes from
its finished chunks, then replaces the gallery folder whole.
"""

from __future__ import annotations

import contextlib
import difflib
import json
import os
import shutil
import unicodedata
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from lmrec import atomic, console, embeddings, metrics, run_files, run_lock
from lmrec.data import held_out
from lmrec.errors import UserError
from lmrec.gallery import store
from lmrec.gallery.store import Gallery, Label

CHUNK_SIZE = 2048  # photos per segment a build writes: what a killed build loses at most
WORK_DIR = ".gallery.inprogress"  # <model_dir>/.gallery.inprogress: a build's finished chunks
PLAN_FILE = "plan.json"
LOCK_FILE = ".gallery.lock"  # beside the gallery folder, which a build replaces whole
DISTRACTOR_LABEL = metrics.NO_LANDMARK_NAME  # the label of distractors ("no landmark" photos)
BUILD_SEGMENT = "train"

__all__ = [
    "CHUNK_SIZE",
    "DISTRACTOR_LABEL",
    "AddResult",
    "BuildResult",
    "Gallery",
    "Label",
    "add",
    "build",
    "build_command",
    "list_labels",
    "load",
    "remove",
]


@dataclass
class BuildResult:
    directory: str  # <model_dir>/gallery
    photos: int  # embeddings in the gallery
    labels: int
    resumed_photos: int = 0  # photos a killed build had embedded already
    skipped: list[dict] = field(default_factory=list)  # unreadable photos, unknown classes
    carried_photos: int = 0  # photos added to the replaced gallery, embedded again


@dataclass
class AddResult:
    label: str
    added: int  # photos embedded and added
    already_present: int  # photos the label already held (skipped)
    failures: list[dict] = field(default_factory=list)  # {"file", "reason"}: not added
    ignored: list[dict] = field(default_factory=list)  # {"file", "reason"}: not photos


def build_command(model_dir: str) -> str:
    return f"python -m lmrec.gallery build --model_dir={model_dir}"


@contextlib.contextmanager
def _locked(model_dir: str, verbose: bool) -> Iterator[None]:
    """Holds <model_dir>/.gallery.lock; the first hold removes what killed writers left."""
    directory = store.gallery_dir(model_dir)
    with run_lock.acquire(os.path.join(model_dir, LOCK_FILE), f"the gallery {directory}") as hold:
        if hold.first and hold.locked:
            removed = atomic.remove_stale_partials(model_dir, store.GALLERY_DIR)
            for folder in (directory, os.path.join(model_dir, WORK_DIR)):
                removed += run_lock.remove_stale_temps(folder) if os.path.isdir(folder) else []
            if removed and verbose:
                console.say(f"Removed {len(removed)} leftovers of an interrupted gallery write")
        yield


def _read_index(model_dir: str) -> dict:
    """gallery.json, or a UserError saying how to build one."""
    try:
        return store.read_index(store.gallery_dir(model_dir))
    except FileNotFoundError:
        raise UserError(
            f"{model_dir} has no gallery; build it first: {build_command(model_dir)}"
        ) from None


def _check_fingerprint(index: dict, model_dir: str) -> None:
    current = embeddings.fingerprint(model_dir)
    if index["fingerprint"] != current:
        raise UserError(
            f"The gallery in {store.gallery_dir(model_dir)} was built by another model "
            f"(fingerprint {index['fingerprint']}) than the weights now in {model_dir} "
            f"(fingerprint {current}); rebuild it: {build_command(model_dir)}"
        )


def load(model_dir: str, trained: run_files.TrainedModel | None = None) -> Gallery:
    """Reads <model_dir>/gallery whole, for search.

    Args:
      model_dir: the trained model's folder.
      trained: the model loaded from it (run_files.load), if at hand: its model_dir's
        weights are the ones the gallery must have been built with.

    Raises:
      UserError: no gallery (the message gives the build command), a gallery built by
        other weights (naming both fingerprints), or damaged files.
    """
    directory = store.gallery_dir(model_dir)
    try:
        index, segments = store.read_gallery(directory)
    except FileNotFoundError:
        raise UserError(
            f"{model_dir} has no gallery; build it first: {build_command(model_dir)}"
        ) from None
    _check_fingerprint(index, trained.model_dir if trained is not None else model_dir)
    return store.to_gallery(index, segments)


def list_labels(model_dir: str) -> list[dict]:
    """Each label of the gallery: {"name", "count", "origin"} in gallery order."""
    index = _read_index(model_dir)
    return [{k: entry[k] for k in ("name", "count", "origin")} for entry in index["labels"]]


def _new_index(fingerprint: str, dimension: int, built_from: str) -> dict:
    return {
        "format": store.FORMAT,
        "fingerprint": fingerprint,
        "dimension": dimension,
        "built_from": built_from,
        "labels": [],
        "next_label_id": 0,
        "segments": [],
        "next_segment": 0,
    }


# build


def _chunk_name(number: int) -> str:
    return f"{BUILD_SEGMENT}-{number:05d}"


def _finished_chunks(work: str, plan: dict, verbose: bool) -> list[str]:
    """The chunks a killed build of the same plan finished; a different plan starts over."""
    plan_path = os.path.join(work, PLAN_FILE)
    old_plan = None
    if os.path.isfile(plan_path):
        with open(plan_path, encoding="utf-8") as f:
            with contextlib.suppress(ValueError):
                old_plan = json.load(f)
    if old_plan != plan:
        if os.path.isdir(work):
            if verbose:
                console.say(f"Discarding {work}: it was a build of another model or data")
            shutil.rmtree(work)
        os.makedirs(os.path.join(work, store.SEGMENTS_DIR))
        atomic.write_json(plan_path, plan)
        return []
    done = []
    while os.path.isfile(store.segment_path(work, _chunk_name(len(done)))):
        done.append(_chunk_name(len(done)))
    return done


def _write_chunks(
    trained, source, work: str, done: list[str], chunk_size: int, batch_size: int, verbose: bool
) -> tuple[list[str], int]:
    """Embeds what the finished chunks do not hold, one segment per chunk_size photos.

    The photos come in the same order on every run (shards and folders are read in
    order), so the finished chunks hold the first photos and the rest are skipped
    before the model runs (they are still read and decoded).
    """
    skip = sum(len(store.read_segment(work, name, False).label_ids) for name in done)
    dataset = source.dataset
    if skip:
        dataset = dataset.unbatch().skip(skip).batch(batch_size)
        if verbose:
            console.say(f"Resuming the gallery build: {skip} photos embedded already")
    chunks = list(done)
    pending: list[tuple[np.ndarray, np.ndarray, list[str]]] = []
    rows = 0

    def flush(count: int) -> None:
        nonlocal pending, rows
        vectors = np.concatenate([p[0] for p in pending])
        labels = np.concatenate([p[1] for p in pending])
        ids = [i for p in pending for i in p[2]]
        name = _chunk_name(len(chunks))
        store.write_segment(work, name, vectors[:count], labels[:count], ids[:count])
        chunks.append(name)
        rest = (vectors[count:], labels[count:], ids[count:])
        pending = [rest] if len(rest[0]) else []
        rows -= count

    total = source.count
    for batch in embeddings.embed_batches(trained, dataset, total, verbose, initial=skip):
        pending.append(batch)
        rows += len(batch[0])
        while rows >= chunk_size:
            flush(chunk_size)
    if rows:
        flush(rows)
    return chunks, skip


def build(
    model_dir: str,
    data: str = "",
    batch_size: int = 32,
    verbose: bool = True,
    chunk_size: int = CHUNK_SIZE,
) -> BuildResult:
    """Embeds the photos a model was trained on into <model_dir>/gallery/ (labels "trained").

    A killed build started again resumes from its finished chunks (same model and
    data); a finished build replaces the gallery whole. The photos `add` put into the
    old gallery (new landmarks, more photos of known ones, distractors) are carried
    over: embedded again from their files by this model, so a retrained model keeps
    its added landmarks; those no longer readable are listed in skipped.

    Args:
      model_dir: a trained lmrec model_dir.
      data: "" for the train split of the dataset the model was trained on; or a
        prepared dataset (its train split), a glob of shards, or a folder with one
        subfolder per class (named after the model's classes).
      batch_size: photos per forward pass.
      verbose: progress bar and messages.
      chunk_size: photos per segment (and per resumable unit).

    Raises:
      UserError: not a trained model_dir, data missing or without known classes,
        another process writing the gallery.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    trained = run_files.load(model_dir)
    directory = store.gallery_dir(model_dir)
    with _locked(model_dir, verbose):
        source = held_out.train_data(trained, data, batch_size)
        fingerprint = embeddings.fingerprint(model_dir)
        plan = {
            "format": store.FORMAT,
            "fingerprint": fingerprint,
            "data": source.description,
            "chunk_size": chunk_size,
            "class_names": trained.class_names,
        }
        work = os.path.join(model_dir, WORK_DIR)
        done = _finished_chunks(work, plan, verbose)
        chunks, resumed = _write_chunks(
            trained, source, work, done, chunk_size, batch_size, verbose
        )
        if not chunks:
            raise UserError(f"No photos to build a gallery from in {source.description}")
        index = _new_index(fingerprint, embeddings.embedding_dimension(trained), source.description)
        counts = np.zeros(len(trained.class_names), np.int64)
        for name in chunks:
            segment = store.read_segment(work, name, with_embeddings=False)
            counts += np.bincount(segment.label_ids, minlength=len(counts))
            index["segments"].append(
                {
                    "name": name,
                    "count": len(segment.label_ids),
                    "labels": sorted({int(i) for i in segment.label_ids}),
                }
            )
        index["labels"] = [
            {"id": i, "name": name, "origin": "trained", "count": int(counts[i])}
            for i, name in enumerate(trained.class_names)
            if counts[i]
        ]
        index["next_label_id"] = len(trained.class_names)
        carried = _embed_carried(trained, _photos_to_carry(model_dir), batch_size, verbose)
        with atomic.new_directory(directory, overwrite=True) as tmp:
            for name in chunks:
                atomic.link_or_copy(store.segment_path(work, name), store.segment_path(tmp, name))
            _add_carried(tmp, index, carried, trained.class_names)
            store.write_index(tmp, index)
        shutil.rmtree(work, ignore_errors=True)
    photos = sum(entry["count"] for entry in index["labels"])
    result = BuildResult(
        directory,
        photos,
        len(index["labels"]),
        resumed,
        list(source.skipped) + carried.failures,
        carried_photos=len(carried.found.ids),
    )
    if verbose:
        console.say(
            f"Gallery {directory}: {result.photos} photos of {result.labels} labels"
            + (f"; {len(result.skipped)} skipped" if result.skipped else "")
        )
    return result


@dataclass
class _Carried:
    """The photos added to the gallery a build replaces, embedded again by the new model."""

    labels: dict[str, tuple[str, str]]  # photo path -> (label name, label origin)
    found: embeddings.Embedded
    failures: list[dict] = field(default_factory=list)  # {"file", "reason"}: not carried


def _photos_to_carry(model_dir: str) -> dict[str, tuple[str, str]]:
    """{photo path: (label name, origin)} of the photos `gallery add` put into the gallery
    a build replaces: the rows whose photo id is an absolute path (built rows have record
    ids or paths relative to the folder they were built from)."""
    directory = store.gallery_dir(model_dir)
    try:
        index, segments = store.read_gallery(directory)
    except (FileNotFoundError, UserError):
        return {}
    names = {entry["id"]: (entry["name"], entry["origin"]) for entry in index["labels"]}
    carried: dict[str, tuple[str, str]] = {}
    for segment in segments:
        for photo_id, label_id in zip(segment.photo_ids, segment.label_ids, strict=True):
            if os.path.isabs(photo_id) and int(label_id) in names:
                carried.setdefault(photo_id, names[int(label_id)])
    return carried


def _embed_carried(trained, labels: dict, batch_size: int, verbose: bool) -> _Carried:
    """Embeds the carried photos again from their files; unreadable ones become failures."""
    if not labels:
        return _Carried({}, embeddings.embed_paths(trained, [], batch_size, False))
    if verbose:
        added = sorted({name for name, _ in labels.values()})
        console.say(
            f"Embedding again the {len(labels)} photos added to the old gallery "
            f"({', '.join(added)})"
        )
    found = embeddings.embed_paths(trained, list(labels), batch_size, verbose)
    failures = [
        {"file": entry["file"], "reason": f"added to the old gallery, now unreadable: "
         f"{entry['reason']}"}
        for entry in found.failures
    ]  # fmt: skip
    for entry in failures:
        console.warn(f"not carried over: {entry['file']}: {entry['reason']}")
    return _Carried(labels, found, failures)


def _add_carried(directory: str, index: dict, carried: _Carried, class_names: list[str]) -> None:
    """Writes the carried photos as segments of the new gallery, under their labels: a name
    the new model was trained on joins that class, distractors stay distractors, any other
    name is an added landmark."""
    by_label: dict[tuple[str, str], list[int]] = {}
    for row, path in enumerate(carried.found.ids):
        name, origin = carried.labels[path]
        if origin == "distractor":
            key = (DISTRACTOR_LABEL, "distractor")
        else:
            key = (name, "trained" if name in class_names else "added")
        by_label.setdefault(key, []).append(row)
    for (name, origin), rows in by_label.items():
        entry = _find_label(index, name)
        if entry is None:
            label_id = class_names.index(name) if origin == "trained" else index["next_label_id"]
            entry = {"id": label_id, "name": name, "origin": origin, "count": 0}
            if origin != "trained":
                index["next_label_id"] += 1
            index["labels"].append(entry)
        segment = store.write_segment(
            directory,
            store.new_segment_name(index, "distractor" if origin == "distractor" else "added"),
            carried.found.embeddings[rows],
            np.full(len(rows), entry["id"], np.int32),
            [carried.found.ids[row] for row in rows],
        )
        index["segments"].append(segment)
        entry["count"] += len(rows)
    index["labels"].sort(key=lambda entry: entry["id"])


# add, remove


def _label_name(label: str, distractors: bool) -> str:
    if distractors:
        if label and unicodedata.normalize("NFC", label.strip()) != DISTRACTOR_LABEL:
            raise UserError("Give either --label or --distractors: distractors have no label")
        return DISTRACTOR_LABEL
    name = unicodedata.normalize("NFC", (label or "").strip())
    if not name:
        raise UserError("--label is required: the name of the landmark the photos show")
    if name == DISTRACTOR_LABEL:
        raise UserError(
            f"{name!r} is the label of photos of no landmark; add them with --distractors"
        )
    return name


def _find_label(index: dict, name: str) -> dict | None:
    return next((entry for entry in index["labels"] if entry["name"] == name), None)


def _photo_ids_of(directory: str, index: dict, label_id: int) -> set[str]:
    """The photo ids the label holds, read from the segments that hold it."""
    found: set[str] = set()
    for entry in index["segments"]:
        if label_id in entry["labels"]:
            segment = store.read_segment(directory, entry["name"], with_embeddings=False)
            rows = zip(segment.photo_ids, segment.label_ids, strict=True)
            found.update(photo_id for photo_id, i in rows if i == label_id)
    return found


def _report_unread(failures: list[dict], ignored: list[dict]) -> None:
    for entry in failures:
        console.warn(f"not added: {entry.get('file')}: {entry.get('reason')}")
    for entry in ignored:
        console.say(f"Ignored {entry.get('file')}: {entry.get('reason')}")


def add(
    model_dir: str,
    label: str,
    photos: Sequence[str],
    distractors: bool = False,
    batch_size: int = 32,
    verbose: bool = True,
) -> AddResult:
    """Adds photos to the gallery under a label, without retraining.

    A new label is a new landmark (origin "added"); an existing one gets more
    photos. With distractors=True the photos show no landmark and go under
    DISTRACTOR_LABEL (origin "distractor"). A photo the label already holds (same
    absolute path) is skipped, so running the same add twice adds nothing the second
    time. Photos that fail to decode are listed (returned, and printed) and the rest
    are added.

    Args:
      model_dir: a trained model_dir with a gallery (build it first).
      label: the landmark's name ("" with distractors=True).
      photos: photo files and/or folders (searched recursively).
      distractors: the photos are "no landmark" photos.
      batch_size: photos per forward pass.
      verbose: progress bar and messages.

    Raises:
      UserError: no gallery, a gallery of other weights, no label, no photo found,
        or none that could be read.
    """
    name = _label_name(label, distractors)
    origin = "distractor" if distractors else "added"
    trained = run_files.load(model_dir)
    directory = store.gallery_dir(model_dir)
    with _locked(model_dir, verbose):
        index = _read_index(model_dir)
        _check_fingerprint(index, model_dir)
        entry = _find_label(index, name)
        if entry is not None and (entry["origin"] == "distractor") != distractors:
            raise UserError(
                f"{name!r} is a label of {entry['origin']} photos, not of distractors"
                if distractors
                else f"{name!r} is the label of the distractors; add them with --distractors"
            )
        listed = embeddings.list_photos(photos)
        if not listed.paths and not listed.failures:
            raise UserError(f"No photos found in {', '.join(photos) or '(nothing given)'}")
        present = _photo_ids_of(directory, index, entry["id"]) if entry is not None else set()
        todo = [path for path in listed.paths if path not in present]
        found = embeddings.embed_paths(trained, todo, batch_size, verbose)
        result = AddResult(
            name,
            len(found.ids),
            len(listed.paths) - len(todo),
            listed.failures + found.failures,
            listed.ignored,
        )
        _report_unread(result.failures, result.ignored)
        if not found.ids:
            if result.already_present:
                console.say(f"{name!r} already holds these {result.already_present} photos")
                return result
            raise UserError(f"None of the photos could be read; nothing added to {name!r}")
        if entry is None:
            entry = {"id": index["next_label_id"], "name": name, "origin": origin, "count": 0}
            index["next_label_id"] += 1
            index["labels"].append(entry)
        segment = store.write_segment(
            directory,
            store.new_segment_name(index, origin),
            found.embeddings,
            np.full(len(found.ids), entry["id"], np.int32),
            found.ids,
        )
        index["segments"].append(segment)
        entry["count"] += len(found.ids)
        store.write_index(directory, index)
        store.remove_unlisted_segments(directory, index)
    if verbose:
        console.say(
            f"Added {result.added} photos to {name!r} ({entry['count']} in all)"
            + (f"; {result.already_present} were there already" if result.already_present else "")
            + (f"; {len(result.failures)} could not be read" if result.failures else "")
        )
    return result


def remove(model_dir: str, label: str, verbose: bool = True) -> int:
    """Takes a label and its photos out of the gallery; returns how many photos went.

    Only the segments holding the label are rewritten (under new names); gallery.json
    then lists them in place of the old ones.

    Raises:
      UserError: no gallery, or no such label (the message lists the labels).
    """
    name = unicodedata.normalize("NFC", (label or "").strip())
    if not name:
        raise UserError(
            "--label is required: the label to remove (see python -m lmrec.gallery list)"
        )
    directory = store.gallery_dir(model_dir)
    with _locked(model_dir, verbose):
        index = _read_index(model_dir)
        entry = _find_label(index, name)
        if entry is None:
            names = [e["name"] for e in index["labels"]]
            close = difflib.get_close_matches(name, names, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise UserError(f"The gallery has no label {name!r}{hint} Labels: {', '.join(names)}")
        segments = []
        for segment in index["segments"]:
            if entry["id"] not in segment["labels"]:
                segments.append(segment)
                continue
            rows = store.read_segment(directory, segment["name"])
            keep = rows.label_ids != entry["id"]
            if keep.any():
                kept_ids = [p for p, k in zip(rows.photo_ids, keep, strict=True) if k]
                segments.append(
                    store.write_segment(
                        directory,
                        store.new_segment_name(index, "kept"),
                        rows.embeddings[keep],
                        rows.label_ids[keep],
                        kept_ids,
                    )
                )
        index["segments"] = segments
        index["labels"] = [e for e in index["labels"] if e is not entry]
        store.write_index(directory, index)
        store.remove_unlisted_segments(directory, index)
    if verbose:
        console.say(f"Removed {name!r} ({entry['count']} photos) from {directory}")
    return int(entry["count"])
