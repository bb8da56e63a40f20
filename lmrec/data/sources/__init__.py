"""Where photos come from. SOURCES maps a --source name to a function(PrepareConfig) -> Source.

Each source lists candidate images lazily; lmrec.prepare validates, splits and
writes them. A source never decides labels: prepare assigns contiguous labels
to the classes that end up with at least one valid image.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from lmrec.config import PrepareConfig
from lmrec.errors import UserError


@dataclass(frozen=True)
class SourceItem:
    """One candidate image: where to read it and which class it belongs to."""

    image_id: str
    class_name: str
    path: str = ""  # a file to read, or ...
    load: Callable[[], bytes] | None = None  # ... a function returning the bytes.
    landmark_id: str = ""

    def read(self) -> bytes:
        """Returns the image bytes; raises BadImage when the file cannot be read."""
        from lmrec.data import images

        if self.load is not None:
            return self.load()
        return images.read_file(self.path)


@dataclass
class Source:
    """What a source provides: class names in label order, and candidate items."""

    name: str
    class_names: list[str]
    items: Callable[[], Iterator[SourceItem]]
    # Files the source saw but could not offer at all (not in a class folder, wrong type).
    rejected: list[tuple[str, str]] = field(default_factory=list)
    # Optional source-specific ids per class name (e.g. GLDv2 landmark ids).
    landmark_ids: dict[str, str] = field(default_factory=dict)


def _demo(config: PrepareConfig) -> Source:
    from lmrec.data.sources import demo

    return demo.source(config)


def _folder(config: PrepareConfig) -> Source:
    from lmrec.data.sources import folders

    return folders.source(config.input_dir)


SOURCES: dict[str, Callable[[PrepareConfig], Source]] = {
    "demo": _demo,
    "folder": _folder,
}


def get_source(config: PrepareConfig) -> Source:
    """Looks up and opens the source named by config.source."""
    try:
        factory = SOURCES[config.source]
    except KeyError:
        raise UserError(
            f"Unknown --source={config.source!r}; valid sources: {', '.join(sorted(SOURCES))}"
        ) from None
    return factory(config)
