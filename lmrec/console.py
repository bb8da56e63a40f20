"""Where lmrec's progress messages go: one say() for every stage, and a quiet mode.

Messages are for a person watching a long run (what was resolved, where files
went, each phase's start and end); they go to stderr so that stdout stays
usable for a command's result (export prints the version folder it wrote).
Warnings and errors are not messages: they are always shown.

    with console.quiet():      # notebooks and tests
        train_and_evaluate(config, model_dir)

`python -m lmrec.<stage> --quiet` does the same for a whole command.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

_quiet = False


def say(*parts: object, sep: str = " ") -> None:
    """Prints one progress message to stderr, unless quiet."""
    if not _quiet:
        print(*parts, sep=sep, file=sys.stderr, flush=True)


def warn(*parts: object, sep: str = " ") -> None:
    """Prints a warning to stderr, quiet or not."""
    print("warning:", *parts, sep=sep, file=sys.stderr, flush=True)


def is_quiet() -> bool:
    return _quiet


def set_quiet(value: bool) -> None:
    """Silences (True) or restores (False) say() for the rest of the process."""
    global _quiet
    _quiet = bool(value)


@contextlib.contextmanager
def quiet(value: bool = True) -> Iterator[None]:
    """Silences say() inside the block and restores the previous mode after it."""
    previous = _quiet
    set_quiet(value)
    try:
        yield
    finally:
        set_quiet(previous)
