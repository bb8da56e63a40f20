"""What predict finds in a photographer's folders: photos, RAW twins, sidecar names.

Hidden files and XMP sidecars are skipped silently (listing the sidecars a
previous --xmp run wrote would double the output). A folder that cannot be
listed is a failure of its own: its photos would otherwise vanish from the
output. A camera often writes DSC_8188.NEF beside DSC_8188.JPG. The RAW is never
decoded: it is tagged through its JPEG (or HEIC, PNG...) twin, and the pair
shares one XMP sidecar, DSC_8188.xmp, as Lightroom and Bridge expect (two photos
of one name that are not a RAW pair get IMG_1.jpg.xmp and IMG_1.png.xmp). A RAW
without a twin is listed as ignored, with what to do.

With a sidecar folder (SidecarDir, for read-only archives), the same names sit in a
tree under it that mirrors each input folder: <sidecar_dir>/<input folder's
name>/<path below the input>. Copying that subfolder over the input puts every
sidecar beside its photo, where photo managers look for them.
"""

from __future__ import annotations

import hashlib
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


@dataclass(frozen=True)
class SidecarDir:
    """Where sidecars go when they are kept apart from the photos.

    Each input's root (the folder itself; a named file's own folder) gets a subfolder of
    path named after it, so several inputs never write into one another's tree: "trip"
    for ~/Pictures/trip. Two roots of the same name get the name plus 8 hex digits of a
    hash of their absolute path ("trip-1a2b3c4d"), the same on every run. A photo under
    two roots (one input inside another) belongs to the outermost, so the input order
    does not matter.
    """

    path: str
    roots: dict[str, str]  # absolute root folder -> its subfolder of path

    @classmethod
    def for_inputs(cls, path: str, inputs: list[str]) -> SidecarDir:
        """The sidecar folder path for the files and folders predict scans."""
        found = {
            os.path.abspath(item if os.path.isdir(item) else os.path.dirname(item) or ".")
            for item in inputs
        }
        # A root inside another is never used (its photos belong to the outer one).
        roots = sorted(
            root
            for root in found
            if not any(
                other != root and os.path.commonpath([other, root]) == other for other in found
            )
        )
        names = {root: os.path.basename(root) or "root" for root in roots}
        counts: dict[str, int] = {}
        for name in names.values():
            counts[name] = counts.get(name, 0) + 1
        for root, name in names.items():
            if counts[name] > 1:
                digest = hashlib.sha256(root.encode("utf-8", "surrogateescape")).hexdigest()
                names[root] = f"{name}-{digest[:8]}"
        if len(set(names.values())) != len(names):
            raise ValueError(f"input folders {sorted(names)} give clashing sidecar folders")
        return cls(path, names)

    def place(self, sidecar: str) -> str:
        """The path under self.path for a sidecar named beside its photo (Scan.sidecars).

        Raises:
          ValueError: sidecar is under none of the input roots.
        """
        target = os.path.abspath(sidecar)
        for root in self.roots:
            if os.path.commonpath([root, target]) == root:
                relative = os.path.relpath(target, root)
                return os.path.join(self.path, self.roots[root], relative)
        raise ValueError(f"{sidecar} is under none of the inputs {sorted(self.roots)}")


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


def scan(inputs: list[str], sidecar_dir: str | None = None) -> Scan:
    """Expands files and folders into photos to decode, RAW twins and sidecar paths.

    A file named explicitly is always tried, whatever its extension (so a photo
    without one still gets tagged); inside folders, only image extensions are.

    Args:
      sidecar_dir: a folder for the sidecars (see SidecarDir); None puts each beside
        its photo.
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
    if sidecar_dir is not None:
        mirror = SidecarDir.for_inputs(sidecar_dir, inputs)
        result.sidecars = {photo: mirror.place(path) for photo, path in result.sidecars.items()}
    return result


def _twin_rank(path: str) -> tuple[int, str]:
    extension = os.path.splitext(path)[1].lower()
    order = _TWIN_PREFERENCE.index(extension) if extension in _TWIN_PREFERENCE else 99
    return order, path
