"""Where photos come from: SOURCES names each --source, its entry point and its options.

Each source lists candidate images lazily; lmrec.prepare validates, splits and
writes them. A source never decides labels: prepare assigns contiguous labels
to the classes that end up with at least one valid image.

A source's own settings are a frozen dataclass in its module (DemoOptions, ...)
declared with lmrec.settings.setting(), so each becomes a flag of lmrec.prepare
and lmrec.train. PrepareConfig.source_options holds the chosen source's values
by name; options_of() turns them into that dataclass. A new source is a module
with its options class and source(config, options), plus one row here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from lmrec.data.sources import demo, folders, gldv2, tfds_source, tfrecords_source
from lmrec.data.sources.base import Source, SourceItem
from lmrec.errors import UserError
from lmrec.registry import Registry

if TYPE_CHECKING:  # annotations only: lmrec.config imports the sources
    from lmrec.config import PrepareConfig

__all__ = ["SOURCES", "Source", "SourceItem", "SourceSpec", "get_source", "options_of"]


@dataclass(frozen=True)
class SourceSpec:
    """One --source: open(config, options) -> Source, and the class of its options."""

    open: Callable[[PrepareConfig, Any], Source]
    options: type


SOURCES: Registry[SourceSpec] = Registry(
    "source",
    {
        "demo": SourceSpec(demo.source, demo.DemoOptions),
        "folder": SourceSpec(folders.source, folders.FolderOptions),
        "gldv2": SourceSpec(gldv2.source, gldv2.Gldv2Options),
        "tfds": SourceSpec(tfds_source.source, tfds_source.TfdsOptions),
        "tfrecords": SourceSpec(tfrecords_source.source, tfrecords_source.TfrecordsOptions),
    },
)


def options_of(config: PrepareConfig) -> Any:
    """The chosen source's options: its dataclass built from config.source_options.

    Raises:
      UserError: an unknown --source, or an option the source does not have.
    """
    options_class = SOURCES.get(config.source).options
    known = {field.name for field in dataclasses.fields(options_class)}
    unknown = sorted(set(config.source_options) - known)
    if unknown:
        raise UserError(
            f"--source={config.source} has no option {', '.join(unknown)}; its options: "
            f"{', '.join(sorted(known)) or '(none)'}"
        )
    return options_class(**config.source_options)


def get_source(config: PrepareConfig) -> Source:
    """Looks up and opens the source named by config.source with its options."""
    return SOURCES.get(config.source).open(config, options_of(config))
