"""One Registry per kind of named choice (backbones, heads, losses, sources, ...).

A registry is an explicit table, written out in the module that owns the kind:

    HEADS = Registry("head", {"gap_dense512": HeadSpec(...), "gem": HeadSpec(...)})
    spec = HEADS.get(config.head)

Nothing registers itself on import. get() is the one lookup: an unknown name
raises UserError naming the flag, listing the valid names and suggesting the
closest one, so every `--head=gemm` typo gets the same helpful answer.
parse_names() does the same for a comma-separated flag (--tflite=float32,int8).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Iterator, Mapping
from typing import Generic, TypeVar

from lmrec.errors import UserError

T = TypeVar("T")


class Registry(Generic[T]):
    """A read-only name -> entry table of one kind, with a helpful lookup.

    Args:
      kind: what an entry is, singular ("backbone"); used in messages.
      table: name -> entry, in the order --help and list() show them.
      flag: the flag that names an entry; default: the kind with spaces as underscores.
      also: text appended to the list of valid names in the error, for kinds that
        accept more than their table (e.g. "or any keras.applications name").
      also_names: the names `also` stands for, accepted by the caller outside this
        table; the error lists them after `also` and suggests among them too.
      renamed: old name -> current name; an old name still fails, and the error
        gives the new one.
    """

    def __init__(
        self,
        kind: str,
        table: Mapping[str, T],
        flag: str = "",
        also: str = "",
        also_names: Iterable[str] = (),
        renamed: Mapping[str, str] | None = None,
    ):
        self.kind = kind
        self.flag = flag or kind.replace(" ", "_")
        self._table = dict(table)
        self._also = also
        self._also_names = [name for name in also_names if name not in self._table]
        self._renamed = dict(renamed or {})

    def get(self, name: str) -> T:
        """The entry called name.

        Raises:
          UserError: no such entry; the message lists the valid names and the closest one.
        """
        try:
            return self._table[name]
        except (KeyError, TypeError):
            raise UserError(self.unknown_message(name)) from None

    def parse_names(self, text: str) -> list[str]:
        """A comma-separated flag value -> its distinct names, in order ("" -> []).

        Raises:
          UserError: an unknown name, with get()'s message.
        """
        names = list(dict.fromkeys(name.strip() for name in text.split(",") if name.strip()))
        for name in names:
            if name not in self._table:
                raise UserError(f"{self.unknown_message(name)} (comma-separated)")
        return names

    def unknown_message(self, name: object) -> str:
        """The error text for an unknown name (also for callers that check several names)."""
        if name in self._renamed:
            hint = f" (renamed to --{self.flag}={self._renamed[name]})"
        else:
            close = self.closest(str(name))
            hint = f" (did you mean {close!r}?)" if close else ""
        also = f", {self._also}" if self._also else ""
        if self._also_names:
            also += f"{':' if self._also else ','} {', '.join(self._also_names)}"
        return (
            f"Unknown --{self.flag}={name!r}{hint}; valid {self.kind} names: "
            f"{', '.join(self._table)}{also}"
        )

    def closest(self, name: str) -> str | None:
        """The valid name most like name, ignoring case and punctuation; None if none is close.

        "DenseNet-201" finds "densenet201", "cosine-restarts" "cosine_restarts".
        """
        by_squashed: dict[str, str] = {}
        for valid in [*self._table, *self._also_names]:
            by_squashed.setdefault(_squash(valid), valid)
        close = difflib.get_close_matches(_squash(name), list(by_squashed), n=1, cutoff=0.6)
        return by_squashed[close[0]] if close else None

    def names(self) -> list[str]:
        """The valid names, in table order."""
        return list(self._table)

    def items(self) -> list[tuple[str, T]]:
        return list(self._table.items())

    def __contains__(self, name: object) -> bool:
        try:
            return name in self._table
        except TypeError:  # an unhashable value is no name
            return False

    def __iter__(self) -> Iterator[str]:
        return iter(self._table)

    def __len__(self) -> int:
        return len(self._table)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.names()})"


def _squash(name: str) -> str:
    """Lower-case letters and digits only: how names are compared for a suggestion."""
    return re.sub(r"[^a-z0-9]", "", name.lower())
