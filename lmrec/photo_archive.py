"""What predict finds in a photographer's folders: photos, RAW twins, sidecar names.

Hidden files and XMP sidecars are skipped silently (listing the sidecars a
previous --xmp run wrote would double the output). A folder that cannot be
listed is a failure of its own: its photos would otherwise vanish from the
output. A camera often writes DSC_8188.NEF beside DSC_8188.JPG. The RAW is never
decoded: it is tagged through its JPEG (or HEIC, PNG...) twin, and the pair
shares one XMP sidecar, DSC_8188.xmp, as Lightroom and Bridge expect. A RAW
without a twin is listed as ignored, with what to do.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from lmrec.data import images

SIDECAR_EXTENSION = ".xmp"
# Which twin a RAW is tagged through when several share its name.
_TWIN_PREFERENCE = (".jpg", ".jpeg", ".heic", ".heif", ".png", ".webp", ".bmp", ".gif")


@dataclass
class Scan:
    photos: list[str] = field(default_factory=list)  # decodable candidates, stable order
    raw_twins: dict[str, str] = field(default_factory=dict)  # RAW path -> photo it takes tags from
    sidecars: dict[str, str] = field(default_factory=dict)  # photo path -> its .xmp path
    ignored: list[dict[str, str]] = field(default_factory=list)  # {"file", "reason"}
    failures: list[dict[str, str]] = field(default_factory=list)  # unlistable folders, same
    folders: list[str] = field(default_factory=list)  # every folder listed, in walk order


def _stem_key(path: str) -> tuple[str, str]:
    directory, name = os.path.split(path)
    return directory, os.path.splitext(name)[0].lower()


def _folder_files(inputs: list[str], result: Scan) -> list[str]:
    """Every file under inputs (recursively, hidden files skipped), in a stable order.

    A named path that exists but is neither file nor folder (a FIFO, a device) is
    listed too, so that reading it fails with what it is.
    """

    def unlistable(error: OSError) -> None:
        reason = f"unreadable folder ({error.strerror or error})"
        folder = error.filename if error.filename is not None else "(a folder)"
        result.failures.append({"file": folder, "reason": reason})

    files: list[str] = []
    for item in inputs:
        if os.path.isdir(item):
            for directory, subdirs, names in os.walk(item, onerror=unlistable):
                result.folders.append(directory)
                subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
                files.extend(
                    os.path.join(directory, name) for name in sorted(names) if name[0] != "."
                )
        elif os.path.exists(item):
            files.append(item)
        else:
            result.ignored.append({"file": item, "reason": "no such file or folder"})
    return files


def scan(inputs: list[str]) -> Scan:
    """Expands files and folders into photos to decode, RAW twins and sidecar paths.

    A file named explicitly is always tried, whatever its extension (so a photo
    without one still gets tagged); inside folders, only image extensions are.
    """
    result = Scan()
    explicit = {item for item in inputs if os.path.exists(item) and not os.path.isdir(item)}
    raws: list[str] = []
    seen: set[str] = set()
    for path in _folder_files(inputs, result):
        if path in seen:
            continue
        seen.add(path)
        if images.is_raw(path):
            raws.append(path)
        elif images.has_image_extension(path) or path in explicit:
            result.photos.append(path)
        elif path.lower().endswith(SIDECAR_EXTENSION):
            continue  # a photo's metadata (perhaps written by --xmp), not a file to report
        else:
            result.ignored.append({"file": path, "reason": "not an image extension"})
    by_stem: dict[tuple[str, str], list[str]] = {}
    for photo in result.photos:
        by_stem.setdefault(_stem_key(photo), []).append(photo)
    for raw in raws:
        twins = by_stem.get(_stem_key(raw), [])
        if twins:
            result.raw_twins[raw] = min(twins, key=_twin_rank)
        else:
            result.ignored.append(
                {
                    "file": raw,
                    "reason": "RAW file without a JPEG twin: not decoded (export a JPEG of it "
                    "beside it, same name, to have both tagged)",
                }
            )
    twinned = set(result.raw_twins.values())
    for photo in result.photos:
        shared = len(by_stem[_stem_key(photo)]) > 1 and photo not in twinned
        base = photo if shared else os.path.splitext(photo)[0]
        result.sidecars[photo] = base + SIDECAR_EXTENSION
    return result


def _twin_rank(path: str) -> tuple[int, str]:
    extension = os.path.splitext(path)[1].lower()
    order = _TWIN_PREFERENCE.index(extension) if extension in _TWIN_PREFERENCE else 99
    return order, path
