"""What a source hands to prepare: Source (class names and candidate items) and SourceItem."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from lmrec.data import images


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
    # False: items are small and picklable (a path, or a functools.partial that makes the
    # bytes), so prepare lists them all, splits them and hands shards to worker processes.
    # True: items carry bytes read from a stream (TFDS, existing TFRecords); items() can be
    # called again and yields the same items in the same order, so prepare reads it twice:
    # once for ids and classes (the split), once to write, never holding every image.
    streaming: bool = False
    # What the source wants recorded in stats.json (e.g. GLDv2's selection and bad CSV rows).
    info: dict = field(default_factory=dict)
