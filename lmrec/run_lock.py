"""One run at a time per output: a model_dir, a prepared dataset, a predict --output.

A run takes an exclusive, non-blocking fcntl.flock on a lock file (<model_dir>/.lock,
<output_dir>/.<name>.lock beside a dataset, <output>.lock) and writes its pid, host,
command line and start time into it; a second run gets a UserError naming the first.
The OS drops a flock when its holder exits or is killed, so a lock is never stale.
The lock file itself stays (deleting it would let a third run lock a new file while
the second still holds the old one); a leftover one is harmless.

Holding a folder's lock is what makes it safe to delete the temp files and partial
folders killed runs left there (lmrec.atomic): no live writer can own them.

Locks are reentrant within a process, because lmrec calls itself (train prepares,
evaluates and exports; compare trains): a nested hold of a path this process already
holds only counts.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import os
import shlex
import shutil
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator

from lmrec import atomic, console
from lmrec.errors import UserError

try:
    import fcntl
except ImportError:  # Windows: runs are not locked there.
    fcntl = None

LOCK_FILE = ".lock"  # a folder's own lock: <model_dir>/.lock
LOCK_SUFFIX = ".lock"  # a file's or a sibling folder's lock: <output>.lock, .<name>.lock
READ_HOLDER_SECONDS = 1.0  # how long to wait for a new holder to write who it is


class InUse(UserError):
    """Another live process holds the lock; holder is what it wrote (pid, host, ...)."""

    def __init__(self, message: str, holder: dict):
        super().__init__(message)
        self.holder = holder


@dataclasses.dataclass
class _Held:
    fd: int | None  # None: the filesystem cannot lock, the run goes on unlocked
    depth: int = 1


_held: dict[str, _Held] = {}
_guard = threading.Lock()


def command_line() -> str:
    """This process's command as typed: "python -m lmrec.train --flagfile=...", not a path."""
    argv = list(getattr(sys, "orig_argv", None) or [sys.executable, *sys.argv])
    if argv:
        argv[0] = os.path.basename(argv[0])
    return shlex.join(argv)


def _holder_info() -> dict:
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "command": command_line(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


class Holding:
    """A held lock (maybe a nested hold of one this process holds); release() once."""

    def __init__(self, key: str, first: bool):
        self.key = key
        self.first = first  # True: this hold took the lock; False: nested in another hold
        self.locked = _held[key].fd is not None
        self._released = False

    def release(self) -> None:
        if self._released:
            return
        self._released = True
        with _guard:
            held = _held[self.key]
            held.depth -= 1
            if held.depth == 0:
                del _held[self.key]
                _unlock(held.fd)

    def __enter__(self) -> Holding:
        return self

    def __exit__(self, *exc_info) -> None:
        self.release()


def acquire(lock_path: str, what: str, hint: str = "") -> Holding:
    """Takes the lock at lock_path, or raises InUse naming the process that holds it.

    Args:
      lock_path: the lock file (created if missing, with its folder).
      what: what is locked, for the message ("model_dir runs/demo").
      hint: what else the user can do than wait ("use another --model_dir").
    """
    key = os.path.realpath(lock_path)
    with _guard:
        if key in _held:
            _held[key].depth += 1
            return Holding(key, first=False)
        _held[key] = _Held(fd=_lock(key, what, hint))
        return Holding(key, first=True)


def _lock(path: str, what: str, hint: str) -> int | None:
    """Opens and flocks path, then writes this process's details into it."""
    if fcntl is None:
        return None
    os.makedirs(os.path.dirname(path), exist_ok=True)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except PermissionError:  # another user's lock file: locking needs no write access
        fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        holder = _read_holder(path)
        raise InUse(_in_use_message(what, hint, holder), holder) from None
    except OSError as error:
        os.close(fd)
        if error.errno not in (errno.ENOLCK, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS):
            raise
        # Some network filesystems have no locks: the run goes on, as it would without them.
        console.warn(f"Cannot lock {path} ({error.strerror}): concurrent runs are not detected.")
        return None
    with contextlib.suppress(OSError):  # a read-only lock file still locks
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(_holder_info()) + "\n").encode("utf-8"), 0)
    return fd


def _unlock(fd: int | None) -> None:
    if fd is None:
        return
    # Emptied first, so a later refusal never names this finished process.
    with contextlib.suppress(OSError):
        os.ftruncate(fd, 0)
    os.close(fd)  # closing drops the flock


def _read_holder(path: str) -> dict:
    """What the holder wrote; waits briefly for a holder that has locked but not yet written."""
    deadline = time.monotonic() + READ_HOLDER_SECONDS
    while True:
        try:
            with open(path, encoding="utf-8") as f:
                holder = json.load(f)
            if isinstance(holder, dict) and _may_be_alive(holder):
                return holder
        except (OSError, ValueError):
            pass
        if time.monotonic() > deadline:
            return {}
        time.sleep(0.05)


def _may_be_alive(holder: dict) -> bool:
    """False only for a pid on this host that no longer runs (the details are stale)."""
    if holder.get("host") != socket.gethostname() or not isinstance(holder.get("pid"), int):
        return True
    try:
        os.kill(holder["pid"], 0)  # signal 0: only asks whether the pid exists
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, but another user's
    return True


def _in_use_message(what: str, hint: str, holder: dict) -> str:
    advice = "wait for it" + (f" or {hint}" if hint else "")
    if not holder:
        return f"{what} is in use by another process; {advice}"
    where = "" if holder.get("host") == socket.gethostname() else f" on {holder.get('host')}"
    command = holder.get("command", "?")
    if len(command) > 200:
        command = command[:197] + "..."
    return (
        f"{what} is in use by process {holder.get('pid')}{where} ({command}), "
        f"started {holder.get('started', '?')}; {advice}"
    )


def is_held(lock_path: str) -> bool:
    """True while this process holds lock_path."""
    return os.path.realpath(lock_path) in _held


# What a folder's lock covers, and what belongs to another lock inside it.


def _locked_elsewhere(folder: str, name: str, names: set[str], directory: bool) -> bool:
    """True for an entry of folder that another lock than folder's covers.

    Those are: a folder with its own .lock (another model_dir), a dataset with its
    .<name>.lock beside it (with its .<name>.inprogress and partial folders), and the
    temp files of a file with a <file>.lock beside it (predict's --output).
    """
    if directory:
        partial = atomic.partial_target(name)
        base = partial or (name[1 : -len(".inprogress")] if name.endswith(".inprogress") else name)
        return f".{base}{LOCK_SUFFIX}" in names or (
            partial is None and os.path.exists(os.path.join(folder, name, LOCK_FILE))
        )
    target = atomic.temp_target(name)
    return target is not None and f"{target}{LOCK_SUFFIX}" in names


def remove_stale_temps(root: str) -> list[str]:
    """Deletes the temp files and partial folders killed writers left under root.

    Only call it while holding root's lock. Entries another lock covers are left alone.

    Returns:
      What was removed, relative to root.
    """
    removed: list[str] = []
    for folder, dirs, files in os.walk(root):
        names = set(dirs) | set(files)
        for name in list(dirs):
            if _locked_elsewhere(folder, name, names, directory=True):
                dirs.remove(name)
            elif atomic.partial_target(name) is not None:
                shutil.rmtree(os.path.join(folder, name), ignore_errors=True)
                dirs.remove(name)
                removed.append(os.path.relpath(os.path.join(folder, name), root))
        for name in files:
            if atomic.temp_target(name) is not None and not _locked_elsewhere(
                folder, name, names, directory=False
            ):
                with contextlib.suppress(FileNotFoundError):
                    os.remove(os.path.join(folder, name))
                removed.append(os.path.relpath(os.path.join(folder, name), root))
    return removed


def _report(verbose: bool, where: str, removed: list[str]) -> None:
    if verbose and removed:
        shown = ", ".join(removed[:5]) + (
            f" and {len(removed) - 5} more" if len(removed) > 5 else ""
        )
        console.say(f"Removed {len(removed)} leftovers of an interrupted run in {where}: {shown}")


@contextlib.contextmanager
def _holding(
    lock_path: str, what: str, hint: str, clean: Callable[[], list[str]], where: str, verbose: bool
) -> Iterator[Holding]:
    """Holds a lock; the outermost hold first cleans what killed runs left."""
    with acquire(lock_path, what, hint) as holding:
        if holding.first and holding.locked:
            _report(verbose, where, clean())
        yield holding


def folder(
    path: str,
    what: str = "model_dir",
    flag: str = "--model_dir",
    verbose: bool = True,
    create: bool = True,
) -> contextlib.AbstractContextManager[Holding | None]:
    """Locks a run folder (a model_dir, a compare_dir) and removes stale temps under it.

    With create=False a missing folder is not created, and not locked: a reader of
    the folder then reports what is missing itself.

    Raises:
      InUse: another process holds it; the message names it and suggests another
        `flag` (only waiting when flag is "").
    """
    if not path or (not create and not os.path.isdir(path)):
        return contextlib.nullcontext()
    return _holding(
        os.path.join(path, LOCK_FILE),
        f"{what} {path}",
        f"use another {flag}" if flag else "",
        lambda: remove_stale_temps(path),
        path,
        verbose,
    )


def dataset(
    output_dir: str, name: str, verbose: bool = True
) -> contextlib.AbstractContextManager[Holding]:
    """Locks the dataset <output_dir>/<name> with its work folder and partial folders.

    The lock file sits beside the dataset (.<name>.lock), since the dataset folder is
    replaced whole. Stale partial folders and temp files of the dataset are removed.
    """

    def clean() -> list[str]:
        removed = atomic.remove_stale_partials(output_dir, name)
        for sub in (name, f".{name}.inprogress"):
            removed += [
                os.path.join(sub, r) for r in remove_stale_temps(os.path.join(output_dir, sub))
            ]
        return removed

    return _holding(
        os.path.join(output_dir, f".{name}{LOCK_SUFFIX}"),
        f"dataset {os.path.join(output_dir, name)}",
        "use another --name",
        clean,
        output_dir,
        verbose,
    )


def output_file(path: str, flag: str = "--output", verbose: bool = True) -> Holding:
    """Locks the file path (<path>.lock) and removes its own stale temp files beside it.

    Returns a Holding to release() (or use in a with block) once the file is written.

    Raises:
      InUse: another process holds it; the message names it and `flag`.
    """
    holding = acquire(path + LOCK_SUFFIX, f"{flag} {path}", f"use another {flag}")
    if holding.first and holding.locked:
        parent = os.path.dirname(os.path.abspath(path))
        removed = []
        for name in os.listdir(parent):
            if atomic.temp_target(name) == os.path.basename(path):
                with contextlib.suppress(FileNotFoundError):
                    os.remove(os.path.join(parent, name))
                removed.append(name)
        _report(verbose, parent, removed)
    return holding
