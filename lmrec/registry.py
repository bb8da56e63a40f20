"""One Registry per kind of named choice (backbones, heads, losses, sources, ...).

A registry is an explicit table, written out in the module that owns the kind:

    HEADS = Registry("head", {"gap_dense512": HeadSpec(...), "gem": HeadSpec(...)})
    spec = HEADS.get(config.head)

Nothing registers itself on import. get() is the one lookup: an unknown name
raises UserError naming the flag, listing the valid names and suggesting the
closest one, so every `--head=gemm` typo gets the same helpful answer.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator, Mapping
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
    """

    def __init__(self, kind: str, table: Mapping[str, T], flag: str = "", also: str = ""):
        self.kind = kind
        self.flag = flag or kind.replace(" ", "_")
        self._table = dict(table)
        self._also = also

    def get(self, name: str) -> T:
        """The entry called name.

        Raises:
          UserError: no such entry; the message lists the valid names and the closest one.
        """
        try:
            return self._table[name]
        except (KeyError, TypeError):
            raise UserError(self.unknown_message(name)) from None

    def unknown_message(self, name: object) -> str:
        """The error text for an unknown name (also for callers that check several names)."""
        close = difflib.get_close_matches(str(name), list(self._table), n=1, cutoff=0.6)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        also = f", {self._also}" if self._also else ""
        return (
            f"Unknown --{self.flag}={name!r}{hint}; valid {self.kind} names: "
            f"{', '.join(self._table)}{also}"
        )

    def names(self) -> list[str]:
        """The valid names, in table order."""
        return list(self._table)

    def items(self) -> list[tuple[str, T]]:
        return list(self._table.items())

    def __contains__(self, name: object) -> bool:
        return name in self._table

    def __iter__(self) -> Iterator[str]:
        return iter(self._table)

    def __len__(self) -> int:
        return len(self._table)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.names()})"
