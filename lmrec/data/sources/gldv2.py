"""Google Landmarks v2 (train set) as a prepare source, with subset selections.

    python -m lmrec.prepare --source=gldv2 --gldv2_dir=~/gldv2 --gldv2_csv=train_clean \
        --min_images_per_class=250 --num_classes=100 --max_images_per_class=600

gldv2_dir holds what scripts/download_gldv2.py fetches:
  train.csv                    id,url,landmark_id                 (4.1M rows)
  train_clean.csv              landmark_id,images (space-separated ids)
  train_label_to_category.csv  landmark_id,category (a Wikimedia Commons category URL)
  train/a/b/c/abc....jpg       the images, by the first three characters of their id

Selection happens on the CSV (the dataset's definition, so a subset is the same
whatever was downloaded): explicit --classes or every landmark, then
--min_images_per_class, then --num_classes (most populous or a seeded sample),
then --max_images_per_class (a seeded sample per class). Images of the subset
that are not on disk, and malformed CSV rows, are reported (stats.json) and
skipped, never fatal. Class names come from the category URLs ("Eiffel_Tower");
labels.json keeps the landmark id beside each name.
"""

from __future__ import annotations

import collections
import csv
import os
import random
import re
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from lmrec.data.sources.base import Source, SourceItem
from lmrec.errors import UserError
from lmrec.registry import Registry
from lmrec.settings import setting

if TYPE_CHECKING:  # annotations only: lmrec.config imports the sources
    from lmrec.config import PrepareConfig


@dataclass(frozen=True)
class Gldv2Options:
    """--source=gldv2's options; the selection and download ones also serve
    scripts/download_gldv2.py."""

    gldv2_dir: str = setting(
        "",
        "For --source=gldv2: folder with train.csv or train_clean.csv, "
        "train_label_to_category.csv and the images as train/a/b/c/abc....jpg.",
    )
    gldv2_csv: str = setting("train", "Which GLDv2 list to read: train | train_clean.")
    min_images_per_class: int = setting(0, "Keep classes with at least this many images.")
    max_images_per_class: int = setting(0, "Cap per class (a seeded random sample); 0: no cap.")
    num_classes: int = setting(
        0, "Keep this many of the classes that pass the other filters; 0: all."
    )
    class_selection: str = setting(
        "most", "With --num_classes: most (the most populous) | random (seeded sample)."
    )
    classes: str = setting(
        "",
        "Comma-separated landmark ids to keep; overrides --num_classes (the image-count "
        "filters still apply).",
    )
    gldv2_url: str = setting(
        "https://s3.amazonaws.com/google-landmark",
        "Base URL of the GLDv2 files (official mirror or your own).",
    )
    gldv2_tars: str = setting(
        "all", "For scripts/download_gldv2.py: image tar shards to download: all | e.g. 0-9,17."
    )
    download_jobs: int = setting(4, "For scripts/download_gldv2.py: parallel downloads.")


@dataclass(frozen=True)
class CsvList:
    """One of GLDv2's image lists: its file name and header row."""

    file: str
    header: tuple[str, ...]


CSV_LISTS = Registry(
    "GLDv2 list",
    {
        "train": CsvList("train.csv", ("id", "url", "landmark_id")),
        "train_clean": CsvList("train_clean.csv", ("landmark_id", "images")),
    },
    flag="gldv2_csv",
)
CATEGORY_FILE = "train_label_to_category.csv"
_ID = re.compile(r"^[0-9a-zA-Z]{3,64}$")  # ids become paths: nothing else is allowed
# train_clean.csv lists a landmark's image ids in one field: 17 bytes an image, so a
# landmark of 10,000 photos passes the csv module's default 128 KiB field limit.
MAX_CSV_FIELD = 64 << 20
_LISTED_MALFORMED = 1000  # malformed rows listed in stats.json; all are counted


def image_path(gldv2_dir: str, image_id: str) -> str:
    """Where GLDv2 keeps an image: train/a/b/c/abc....jpg."""
    return os.path.join(
        gldv2_dir, "train", image_id[0], image_id[1], image_id[2], f"{image_id}.jpg"
    )


@dataclass
class Selection:
    """The chosen subset: image ids per landmark id, and what was read to choose it."""

    images: dict[str, list[str]]  # landmark id -> image ids, in a stable order
    malformed: list[tuple[str, str]] = field(default_factory=list)  # (file:line, reason)
    malformed_count: int = 0
    info: dict = field(default_factory=dict)


def selected_image_ids(options: Gldv2Options, seed: int) -> set[str]:
    """Every image id of the subset the selection flags choose (for the downloader)."""
    return {i for ids in select(options, seed).images.values() for i in ids}


def select(options: Gldv2Options, seed: int) -> Selection:
    """Reads the chosen CSV twice (counts, then ids) and applies the selection flags.

    Args:
      options: the GLDv2 folder, list and selection flags.
      seed: seeds --class_selection=random and --max_images_per_class.

    Raises:
      UserError: a missing folder or CSV, bad selection flags, or nothing selected.
    """
    path = _csv_path(options)
    _check_flags(options)
    counts: collections.Counter[str] = collections.Counter()
    malformed: list[tuple[str, str]] = []
    rows = 0
    for _, _, landmark_id in _rows(path, options.gldv2_csv, malformed):
        counts[landmark_id] += 1
        rows += 1
    funnel: dict[str, int] = {}
    chosen = _choose_classes(counts, options, seed, funnel)
    wanted = set(chosen)
    images: dict[str, list[str]] = {landmark: [] for landmark in chosen}
    seen: set[str] = set()
    for _, image_id, landmark_id in _rows(path, options.gldv2_csv, None):
        if landmark_id in wanted and image_id not in seen:
            seen.add(image_id)
            images[landmark_id].append(image_id)
    rng = random.Random(seed)
    if options.max_images_per_class > 0:
        for landmark, ids in images.items():
            if len(ids) > options.max_images_per_class:
                images[landmark] = sorted(rng.sample(sorted(ids), options.max_images_per_class))
    info = {
        "csv": os.path.basename(path),
        "csv_images": rows,
        "csv_landmarks": len(counts),
        "malformed_rows": len(malformed),
        "selection": {
            "classes": options.classes,
            "min_images_per_class": options.min_images_per_class,
            "max_images_per_class": options.max_images_per_class,
            "num_classes": options.num_classes,
            "class_selection": options.class_selection,
            "seed": seed,
        },
        "classes_after_each_filter": funnel,
        "selected_classes": len(images),
        "selected_images": sum(len(ids) for ids in images.values()),
    }
    return Selection(
        images=images,
        malformed=malformed[:_LISTED_MALFORMED],
        malformed_count=len(malformed),
        info=info,
    )


def source(config: PrepareConfig, options: Gldv2Options) -> Source:
    """Opens the selected GLDv2 subset as a prepare source (images must be on disk)."""
    selection = select(options, config.seed)
    gldv2_dir = options.gldv2_dir
    names = category_names(gldv2_dir)
    landmarks = sorted(selection.images, key=_landmark_sort_key)
    class_of = _unique_class_names(landmarks, names)
    rejected = list(selection.malformed)
    found: list[SourceItem] = []
    missing = 0
    for landmark in landmarks:
        for image_id in selection.images[landmark]:
            path = image_path(gldv2_dir, image_id)
            relative = os.path.relpath(path, gldv2_dir)
            if os.path.isfile(path):
                found.append(
                    SourceItem(image_id=image_id, class_name=class_of[landmark], path=path)
                )
            else:
                missing += 1
                rejected.append((relative, "missing (not downloaded or not extracted)"))
    info = dict(selection.info)
    info["missing_images"] = missing
    info["names_missing"] = sum(1 for landmark in landmarks if landmark not in names)
    if selection.malformed_count > len(selection.malformed):
        info["malformed_rows_not_listed"] = selection.malformed_count - len(selection.malformed)

    def items() -> Iterator[SourceItem]:
        yield from found

    return Source(
        name="gldv2",
        class_names=[class_of[landmark] for landmark in landmarks],
        items=items,
        rejected=rejected,
        landmark_ids={class_of[landmark]: landmark for landmark in landmarks},
        info=info,
    )


def category_names(gldv2_dir: str) -> dict[str, str]:
    """landmark id -> name from train_label_to_category.csv ({} when the file is absent)."""
    path = os.path.join(gldv2_dir, CATEGORY_FILE)
    if not os.path.isfile(path):
        return {}
    names = {}
    with open(path, encoding="utf-8", newline="") as f:
        for row in csv.reader(f):
            if len(row) != 2 or not row[0].strip().isdigit():
                continue  # the header, or a broken row: that landmark keeps its id as name
            names[row[0].strip()] = name_from_category(row[1])
    return names


def name_from_category(category: str) -> str:
    """'http://commons.wikimedia.org/wiki/Category:Eiffel_Tower' -> 'Eiffel_Tower'."""
    tail = category.strip().rsplit("Category:", 1)[-1].rsplit("/", 1)[-1]
    return urllib.parse.unquote(tail).strip()


def _unique_class_names(landmarks: list[str], names: dict[str, str]) -> dict[str, str]:
    """Names for the chosen landmarks; a missing or shared name gets the landmark id."""
    base = {landmark: names.get(landmark) or f"landmark_{landmark}" for landmark in landmarks}
    shared = collections.Counter(base.values())
    return {
        landmark: name if shared[name] == 1 else f"{name} ({landmark})"
        for landmark, name in base.items()
    }


def _csv_path(options: Gldv2Options) -> str:
    if not options.gldv2_dir:
        raise UserError("--gldv2_dir is required for --source=gldv2 (the folder with train.csv)")
    listed = CSV_LISTS.get(options.gldv2_csv)
    path = os.path.join(options.gldv2_dir, listed.file)
    if not os.path.isfile(path):
        raise UserError(
            f"{path} is missing. Fetch it with scripts/download_gldv2.py --gldv2_dir="
            f"{options.gldv2_dir}, or from {options.gldv2_url}/metadata/{listed.file}"
        )
    return path


def _check_flags(options: Gldv2Options) -> None:
    for flag in ("min_images_per_class", "max_images_per_class", "num_classes"):
        if getattr(options, flag) < 0:
            raise UserError(f"--{flag} must be >= 0, got {getattr(options, flag)}")
    CLASS_SELECTIONS.get(options.class_selection)


def _rows(path: str, kind: str, malformed: list | None) -> Iterator[tuple[str, str, str]]:
    """Yields (file:line, image id, landmark id); bad rows go to `malformed` (when given)."""
    name = os.path.basename(path)
    if csv.field_size_limit() < MAX_CSV_FIELD:
        csv.field_size_limit(MAX_CSV_FIELD)  # process-wide, and only ever raised
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        expected = list(CSV_LISTS.get(kind).header)
        if header is None or [h.strip() for h in header] != expected:
            raise UserError(
                f"{path}: expected the header {','.join(expected)} of GLDv2's {name}, got "
                f"{header!r}; is --gldv2_csv={kind} the right list?"
            )
        for row in reader:
            where = f"{name}:{reader.line_num}"
            if kind == "train":
                ok = len(row) == 3 and _ID.match(row[0]) and row[2].strip().isdigit()
                if ok:
                    yield where, row[0], row[2].strip()
                    continue
            else:
                ids = row[1].split() if len(row) == 2 else []
                ok = len(row) == 2 and row[0].strip().isdigit() and ids
                ok = ok and all(_ID.match(i) for i in ids)
                if ok:
                    for image_id in ids:
                        yield where, image_id, row[0].strip()
                    continue
            if malformed is not None:
                malformed.append((where, f"malformed CSV row: {','.join(row)[:120]!r}"))


def _choose_classes(
    counts: collections.Counter, options: Gldv2Options, seed: int, funnel: dict[str, int]
) -> list[str]:
    """Applies the class filters in order; funnel records how many classes pass each."""
    funnel["in_csv"] = len(counts)
    if options.classes:
        requested = [c.strip() for c in options.classes.split(",") if c.strip()]
        unknown = [c for c in requested if c not in counts]
        if unknown:
            raise UserError(
                f"--classes names landmark ids not in the CSV: {unknown[:10]}"
                + (f" and {len(unknown) - 10} more" if len(unknown) > 10 else "")
            )
        eligible = sorted(set(requested), key=_landmark_sort_key)
        funnel["classes"] = len(eligible)
    else:
        eligible = sorted(counts, key=_landmark_sort_key)
    eligible = [c for c in eligible if counts[c] >= options.min_images_per_class]
    funnel["min_images_per_class"] = len(eligible)
    if options.num_classes and not options.classes and len(eligible) > options.num_classes:
        choose = CLASS_SELECTIONS.get(options.class_selection)
        eligible = choose(eligible, counts, options.num_classes, seed)
        funnel["num_classes"] = len(eligible)
    if not eligible:
        raise UserError(
            f"No landmark passes the selection (--min_images_per_class="
            f"{options.min_images_per_class}, --classes={options.classes!r}); the largest class "
            f"in the CSV has {max(counts.values(), default=0)} images"
        )
    return sorted(eligible, key=_landmark_sort_key)


def _landmark_sort_key(landmark_id: str) -> tuple[int, str]:
    return (int(landmark_id), landmark_id) if landmark_id.isdigit() else (1 << 62, landmark_id)


def _most_populous(
    eligible: list[str], counts: collections.Counter, n: int, seed: int
) -> list[str]:
    ranked = sorted(eligible, key=lambda c: (-counts[c], _landmark_sort_key(c)))
    return ranked[:n]


def _seeded_sample(
    eligible: list[str], counts: collections.Counter, n: int, seed: int
) -> list[str]:
    return random.Random(seed).sample(eligible, n)


# --class_selection: which --num_classes of the eligible landmarks are kept.
CLASS_SELECTIONS: Registry[Callable[[list[str], collections.Counter, int, int], list[str]]] = (
    Registry("class selection", {"most": _most_populous, "random": _seeded_sample})
)
