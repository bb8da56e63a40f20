"""Atomic file and folder writes: readers see the old result or the new one, never half.

Every output lmrec writes (shards, labels, stats, checkpoints, reports,
exports, tags) goes through here, so a killed process never leaves a truncated
file that a later run would pick up.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from typing import Any


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _normal_permissions(path: str, directory: bool) -> None:
    """mkstemp/mkdtemp create private (0600/0700) entries; give them the usual mode."""
    os.chmod(path, (0o777 if directory else 0o666) & ~_umask())


def _temp_path(path: str) -> str:
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    # The temp name ends with the real name so suffix checks (Keras wants ".weights.h5") pass;
    # the leading dot keeps it out of globs such as "*.tfrecord".
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=f"-{os.path.basename(path)}", dir=directory)
    os.close(fd)
    return tmp


@contextlib.contextmanager
def replacing(path: str) -> Iterator[str]:
    """Yields a temp path beside `path`; on success renames it over `path`, else deletes it."""
    tmp = _temp_path(path)
    try:
        yield tmp
        _normal_permissions(tmp, directory=False)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def link_or_copy(source: str, path: str) -> None:
    """Puts source's content at `path` atomically: a hard link (instant, however large), or
    a copy where the filesystem has none. Linking is safe because the files written here
    are replaced by rename, never rewritten in place, so the two names cannot diverge."""
    with replacing(path) as tmp:
        try:
            os.remove(tmp)  # the empty placeholder that reserved the temp name
            os.link(source, tmp)
        except OSError:
            shutil.copyfile(source, tmp)


def write_bytes(path: str, data: bytes) -> None:
    with replacing(path) as tmp, open(tmp, "wb") as f:
        f.write(data)


def write_text(path: str, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str, payload: Any) -> None:
    write_text(path, json.dumps(payload, indent=2, ensure_ascii=False, sort_keys=False) + "\n")


@contextlib.contextmanager
def new_directory(path: str, overwrite: bool = False) -> Iterator[str]:
    """Builds a folder under a temp name and renames it to `path` only when complete.

    Args:
      path: the final folder.
      overwrite: replace an existing `path` (the old one is removed only after the
        new one is in place). Without it an existing `path` raises FileExistsError.

    Yields:
      The temp folder to fill.
    """
    path = os.path.abspath(path)
    if os.path.exists(path) and not overwrite:
        raise FileExistsError(path)
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.", suffix=".partial", dir=parent)
    try:
        yield tmp
        _normal_permissions(tmp, directory=True)
        if os.path.exists(path):
            old = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.", suffix=".old", dir=parent)
            os.rmdir(old)
            os.rename(path, old)
            os.rename(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, path)
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp, ignore_errors=True)


def remove_stale_partials(parent: str, name: str) -> list[str]:
    """Deletes leftovers of killed new_directory() calls for `name`; returns what it removed."""
    removed = []
    if not os.path.isdir(parent):
        return removed
    for entry in os.listdir(parent):
        if entry.startswith(f".{name}.") and entry.endswith((".partial", ".old")):
            shutil.rmtree(os.path.join(parent, entry), ignore_errors=True)
            removed.append(entry)
    return removed
