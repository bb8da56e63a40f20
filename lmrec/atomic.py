"""Atomic file and folder writes: readers see the old result or the new one, never half.

Every output lmrec writes (shards, labels, stats, checkpoints, reports,
exports, tags) goes through here, so a killed process never leaves a truncated
file that a later run would pick up. Data is fsynced before the rename and the
folder after it, so a power cut cannot leave a name that points at unwritten data.
A rewrite keeps the file's mode and writes through a symlink. Temp names are
recognisable (temp_target, partial_target): whoever holds the folder's lock
(lmrec.run_lock) removes those a killed run left.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Iterator
from typing import Any

# The names mkstemp/mkdtemp give below: ".tmp-<random>-<name>" files and
# ".<name>.<random>.partial" (or ".old") folders, <random> being 8 of [a-z0-9_]. The
# ".tmp-" prefix is distinctive enough for files; folders need the exact random part.
_TEMP_FILE = re.compile(r"\.tmp-[a-z0-9_]+-(?P<target>.+)\Z", re.DOTALL)
_PARTIAL_DIR = re.compile(r"\.(?P<target>.+)\.[a-z0-9_]{8}\.(partial|old)\Z", re.DOTALL)


def temp_target(name: str) -> str | None:
    """The file name a replacing() temp file stands for, or None for any other name."""
    match = _TEMP_FILE.match(name)
    return match.group("target") if match else None


def partial_target(name: str) -> str | None:
    """The folder name a new_directory() temp folder stands for, or None for any other name."""
    match = _PARTIAL_DIR.match(name)
    return match.group("target") if match else None


def fsync_file(path: str) -> None:
    """Forces path's data to the disk (a rename alone may reach it before the data)."""
    # Windows commits only handles open for writing; elsewhere a read-only open suffices
    # and works for files this process may not write.
    fd = os.open(path, os.O_RDWR if os.name == "nt" else os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_directory(path: str) -> None:
    """Forces folder path's entries (new names, renames) to the disk."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except (PermissionError, IsADirectoryError):
        # Windows cannot open a folder as a file (and a folder may be writable but not
        # readable); NTFS journals renames itself, so there is nothing to do.
        return
    try:
        os.fsync(fd)
    except OSError as error:
        # Some network and FUSE filesystems cannot sync a folder; the rename stands anyway.
        if error.errno not in (errno.EINVAL, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)


def _fsync_tree(root: str) -> None:
    """fsyncs every regular file under root, then each folder after its contents."""
    for folder, _, files in os.walk(root, topdown=False):
        for name in files:
            path = os.path.join(folder, name)
            if not os.path.islink(path):
                fsync_file(path)
        fsync_directory(folder)


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


def _keep_permissions(tmp: str, target: str) -> None:
    """Gives tmp the mode (and owner, where allowed) of the file it replaces, or the
    umask's mode for a new file: a rewrite must not reset a 0640 sidecar to 0600 or 0644."""
    try:
        old = os.stat(target)
    except FileNotFoundError:
        _normal_permissions(tmp, directory=False)
        return
    new = os.stat(tmp)
    if hasattr(os, "chown") and (new.st_uid, new.st_gid) != (old.st_uid, old.st_gid):
        try:
            os.chown(tmp, old.st_uid, old.st_gid)
        except PermissionError:
            # Only root may give a file away; a member of the old group may still keep that.
            with contextlib.suppress(PermissionError):
                os.chown(tmp, -1, old.st_gid)
    os.chmod(tmp, stat.S_IMODE(old.st_mode))  # after chown, which may clear setuid bits


@contextlib.contextmanager
def _replacing(path: str, keep_permissions: bool, durable: bool = True) -> Iterator[str]:
    """replacing(), with the choice to leave the temp file's permissions as they are."""
    # A symlink stays a symlink: the file it points to is the one replaced.
    target = os.path.realpath(path) if os.path.islink(path) else path
    tmp = _temp_path(target)
    try:
        yield tmp
        # Data first, then the name: after a power cut `path` holds the old content or
        # the new. The mode, set after the data's fsync, is inode metadata that the
        # folder's fsync commits along with the rename on journaling filesystems.
        if durable:
            fsync_file(tmp)
        if keep_permissions:
            _keep_permissions(tmp, target)
        os.replace(tmp, target)
        if durable:
            fsync_directory(os.path.dirname(os.path.abspath(target)))
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


@contextlib.contextmanager
def replacing(path: str, durable: bool = True) -> Iterator[str]:
    """Yields a temp path beside `path`; on success renames it over `path`, else deletes it.

    The new file is on the disk, under its name, when the block ends. An existing
    `path` keeps its mode (and owner where allowed); through a symlink, the link's
    target is replaced and the link stays.

    durable=False skips the two fsyncs (about 5 ms for a new small file): for writers of
    many files that sync once (os.sync()) before recording that the batch is done.
    """
    with _replacing(path, keep_permissions=True, durable=durable) as tmp:
        yield tmp


def link_or_copy(source: str, path: str) -> None:
    """Puts source's content at `path` atomically: a hard link (instant, however large), or
    a copy where the filesystem has none. Linking is safe because the files written here
    are replaced by rename, never rewritten in place, so the two names cannot diverge."""
    # A link shares source's inode, so it keeps source's mode: changing it would change both.
    with _replacing(path, keep_permissions=False) as tmp:
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
        _fsync_tree(tmp)  # every file's data and name, before the folder gets its name
        if os.path.exists(path):
            old = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.", suffix=".old", dir=parent)
            os.rmdir(old)
            os.rename(path, old)
            os.rename(tmp, path)
            fsync_directory(parent)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, path)
            fsync_directory(parent)
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp, ignore_errors=True)


def remove_stale_partials(parent: str, name: str) -> list[str]:
    """Deletes leftovers of killed new_directory() calls for `name`; returns what it removed.

    Only call it while no other process may be building `name` (lmrec.run_lock).
    """
    removed = []
    if not os.path.isdir(parent):
        return removed
    # ".<name>.<random>.partial": the random part has no dot, so "demo" never takes "demo.v2"'s.
    pattern = re.compile(rf"\.{re.escape(name)}\.[A-Za-z0-9_]+\.(partial|old)\Z")
    for entry in os.listdir(parent):
        if pattern.match(entry):
            shutil.rmtree(os.path.join(parent, entry), ignore_errors=True)
            removed.append(entry)
    return removed
