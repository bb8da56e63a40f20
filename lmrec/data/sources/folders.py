"""A photo archive with one subfolder per class: input_dir/<class>/**/<image>.

The class is the top-level subfolder; images may sit at any depth below it.
Extensions are matched case-insensitively; names may hold spaces and non-ASCII.
Every other file is reported back (with why it was not used), never silently
ignored.
"""

from __future__ import annotations

import os
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from lmrec.data import images
from lmrec.data.sources.base import Source, SourceItem
from lmrec.errors import UserError

if TYPE_CHECKING:  # annotations only: lmrec.config imports the sources
    from lmrec.config import PrepareConfig


@dataclass(frozen=True)
class FolderOptions:
    """--source=folder has no options of its own: it reads --input_dir."""


def list_class_folder(
    input_dir: str,
) -> tuple[list[str], list[tuple[str, str, str]], list[tuple[str, str]]]:
    """Walks input_dir once.

    Returns:
      (class_names sorted, [(relative path, absolute path, class name)] for image files,
       [(relative path, reason)] for files that are not offered).

    Raises:
      UserError: input_dir is missing, not a folder, or has no class subfolders.
    """
    if not input_dir:
        raise UserError("--input_dir is required for --source=folder (a folder of class folders)")
    if not os.path.isdir(input_dir):
        raise UserError(f"--input_dir={input_dir!r} is not a folder")
    class_names: list[str] = []
    found: list[tuple[str, str, str]] = []
    rejected: list[tuple[str, str]] = []
    for entry in sorted(os.scandir(input_dir), key=lambda e: e.name):
        if entry.is_dir(follow_symlinks=True):
            if entry.name.startswith("."):
                continue  # .git, .thumbnails and the like are not classes.
            class_name = unicodedata.normalize("NFC", entry.name)
            class_names.append(class_name)
            for path, unreadable in _walk_files(entry.path):
                relative = os.path.relpath(path, input_dir)
                reason = unreadable or _why_not_offered(path)
                if reason:
                    rejected.append((relative, reason))
                else:
                    found.append((relative, path, class_name))
        elif entry.is_file():
            rejected.append((entry.name, "not inside a class subfolder"))
    if not class_names:
        raise UserError(
            f"--input_dir={input_dir!r} has no class subfolders; expected "
            f"{input_dir}/<class name>/<photos>"
        )
    return class_names, found, rejected


def _walk_files(root: str) -> Iterator[tuple[str, str]]:
    """(path, "") for each file under root, and (folder, reason) for each folder not listed.

    Symbolic links to folders are followed (photo libraries are often spread over
    disks), each real folder once, so a link back up the tree cannot loop forever.
    """
    unreadable: list[tuple[str, str]] = []

    def note(error: OSError) -> None:
        unreadable.append((error.filename, f"unreadable folder ({error.strerror or error})"))

    visited: set[tuple[int, int]] = set()
    for directory, subdirs, files in os.walk(root, onerror=note, followlinks=True):
        yield from unreadable
        unreadable.clear()
        try:
            status = os.stat(directory)
        except OSError as error:
            yield directory, f"unreadable folder ({error.strerror or error})"
            subdirs[:] = []
            continue
        if (status.st_dev, status.st_ino) in visited:
            yield directory, "folder already listed through another link (a link loop)"
            subdirs[:] = []
            continue
        visited.add((status.st_dev, status.st_ino))
        subdirs.sort()
        for name in sorted(files):
            yield os.path.join(directory, name), ""
    yield from unreadable


def _why_not_offered(path: str) -> str:
    name = os.path.basename(path)
    if name.startswith("."):
        return "hidden file"
    if not images.has_image_extension(name):
        extension = os.path.splitext(name)[1] or "(none)"
        return f"not an image extension ({extension})"
    return ""


def source(config: PrepareConfig, options: FolderOptions) -> Source:
    """Opens the class-per-subfolder archive in config.input_dir as a prepare source."""
    class_names, found, rejected = list_class_folder(config.input_dir)

    def items() -> Iterator[SourceItem]:
        for relative, path, class_name in found:
            yield SourceItem(image_id=relative, class_name=class_name, path=path)

    return Source(name="folder", class_names=class_names, items=items, rejected=rejected)
