"""A contact sheet of a tagging run: one self-contained HTML page to review predict's tags.

The page groups the tagged photos by landmark (most confident first), then lists
the photos to look at twice: those tagged below a review threshold ("low
confidence") and those answered "no landmark"; then the failed and ignored files
with their reasons. Each photo is a card: a small upright thumbnail, its file
name (the full path as a tooltip), the score, the location written to it and a
note when GPS changed the answer.

Like the evaluation report (lmrec/report.py) it opens from disk with no network:
the style and script are inline and the thumbnails are data: URIs. It stays
usable on an archive of 20,000 photos: thumbnails take a few KB, every section
starts collapsed, and a group's cards sit in <template> elements, which the
browser parses but never renders or decodes, until the group is opened (then
CHUNK cards at a time). `#open=all` at the end of the page's URL opens every
section, for a quick look or a screenshot.
"""

from __future__ import annotations

import base64
import collections
import concurrent.futures
import datetime
import html
import io
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from PIL import Image
from tqdm import tqdm

from lmrec import atomic, console
from lmrec.data import images
from lmrec.errors import UserError
from lmrec.metrics import NO_LANDMARK_NAME
from lmrec.tag_store import Row

THUMBNAIL_SIDE = 112  # px, the longer side of a thumbnail: about 3-5 KB as a JPEG
THUMBNAIL_QUALITY = 70
CHUNK = 240  # cards a group renders at a time (its first chunk on opening, then "show more")
LOW_CONFIDENCE_BELOW = 0.5

# Section ids, in page order.
SECTIONS = ("summary", "landmarks", "low-confidence", "no-landmark", "failed", "ignored")


@dataclass(frozen=True)
class SheetEntry:
    """One classified photo as the contact sheet shows it.

    label is the landmark written to the photo ("" when none, e.g. below
    --min_score); for a rejected photo ("no landmark") it is the closest landmark,
    shown as such. latitude/longitude are the location written to the photo,
    located_from where it came from (e.g. "landmark", "GPS"). thumbnail_from is the
    file the thumbnail is made from when it is not path (a RAW file's JPEG twin).
    """

    path: str
    label: str = ""
    score: float | None = None
    rejected: bool = False
    latitude: float | None = None
    longitude: float | None = None
    located_from: str = ""
    gps_note: str = ""
    thumbnail_from: str = ""

    @classmethod
    def from_row(cls, row: Row, no_landmark: str = NO_LANDMARK_NAME) -> SheetEntry:
        """The entry of a tagged predict row (tag_store.Row without an error)."""
        rejected = row.label == no_landmark
        label = (row.top[0][0] if row.top else "") if rejected else row.label
        return cls(
            path=row.file,
            label=label,
            score=row.score,
            rejected=rejected,
            latitude=row.latitude,
            longitude=row.longitude,
            located_from=row.located_from,
            gps_note=row.gps_note,
            thumbnail_from=row.tagged_from,
        )


@dataclass(frozen=True)
class SheetSummary:
    """What write_contact_sheet wrote: the page, its size and the photos per section."""

    path: str
    bytes: int
    counts: dict[str, int]  # landmarks (photos), low-confidence, no-landmark, failed, ignored
    landmarks: int  # distinct landmarks in the landmarks section
    thumbnails_missing: int  # photos shown with a placeholder (unreadable)


def thumbnail(
    path: str, side: int = THUMBNAIL_SIDE, limits: images.Limits = images.DEFAULT_LIMITS
) -> bytes | None:
    """The photo upright (EXIF orientation) as a JPEG at most side px long; None if unreadable.

    A JPEG is decoded at 1/2, 1/4 or 1/8 scale (DCT scaling) while its longer side
    stays >= 2 * side, so a 24-megapixel photo costs a 1/8-scale decode; other
    formats (PNG, WebP, HEIC with pillow-heif) go through the same reader as
    predict, with its limits. Any failure gives None: one bad file costs one
    thumbnail, never the page.
    """

    def encode(decoded: images.DecodedImage) -> bytes:
        image = decoded.image
        image.thumbnail((side, side), Image.Resampling.BICUBIC, reducing_gap=2.0)
        out = io.BytesIO()
        image.save(out, "JPEG", quality=THUMBNAIL_QUALITY, optimize=True)
        return out.getvalue()

    try:
        data = images.read_file(path, limits)
        return images.decode_then(data, encode, path, max_side=2 * side, limits=limits)
    except Exception:  # noqa: BLE001 - any failure is a placeholder on the page.
        return None


def write_contact_sheet(
    output_path: str,
    entries: Iterable[SheetEntry],
    failed: Iterable[dict[str, str]] = (),
    ignored: Iterable[dict[str, str]] = (),
    title: str = "Tagged photos",
    description: str = "",
    low_confidence_below: float = LOW_CONFIDENCE_BELOW,
    workers: int = 0,
    side: int = THUMBNAIL_SIDE,
    verbose: bool = True,
) -> SheetSummary:
    """Makes the thumbnails and writes the contact sheet atomically (lmrec/atomic.py).

    Args:
      output_path: the .html file to write.
      entries: the classified photos (SheetEntry.from_row turns predict's rows into them).
      failed, ignored: predict's failures and ignored files, {"file", "reason"} each.
      title: the page heading.
      description: what tagged the photos (predict's model description), shown on top.
      low_confidence_below: a photo tagged with a landmark at a lower score is listed
        under "low confidence" rather than under its landmark.
      workers: threads making thumbnails (0: one per core, at most 8); Pillow releases
        the GIL while it decodes, resizes and encodes.
      side: the longer side of a thumbnail in px.
      verbose: show a progress bar (never when lmrec.console is quiet).

    Returns:
      The page's path, size in bytes and counts per section.

    Raises:
      UserError: low_confidence_below is not within [0, 1].
    """
    if not 0.0 <= low_confidence_below <= 1.0:
        raise UserError(
            f"the low-confidence threshold must be within [0, 1], got {low_confidence_below}"
        )
    entries = list(entries)
    failed, ignored = list(failed), list(ignored)
    thumbnails = _thumbnails(entries, side, workers, verbose)
    sections = _Sections.split(entries, low_confidence_below)
    counts = {
        "landmarks": sum(len(group) for group in sections.landmarks.values()),
        "low-confidence": len(sections.low_confidence),
        "no-landmark": len(sections.no_landmark),
        "failed": len(failed),
        "ignored": len(ignored),
    }
    page = _page(
        sections, thumbnails, failed, ignored, title, description, low_confidence_below, counts
    )
    with atomic.replacing(output_path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.writelines(page)
    return SheetSummary(
        path=output_path,
        bytes=os.path.getsize(output_path),
        counts=counts,
        landmarks=len(sections.landmarks),
        thumbnails_missing=sum(1 for entry in entries if not thumbnails.get(_source(entry))),
    )


def _source(entry: SheetEntry) -> str:
    return entry.thumbnail_from or entry.path


def _thumbnails(
    entries: list[SheetEntry], side: int, workers: int, verbose: bool
) -> dict[str, str]:
    """Base64 JPEG thumbnails by source file ("" for an unreadable one), made in threads.

    At most a few photos per thread are queued ahead, so Ctrl-C stops the work soon.
    """
    sources = list(dict.fromkeys(_source(entry) for entry in entries))
    workers = workers or max(1, min(8, os.cpu_count() or 1))
    encoded: dict[str, str] = {}

    def store(future: concurrent.futures.Future) -> None:
        source, jpeg = future.result()
        # Base64 right away: the bytes are dropped and the page holds one copy.
        encoded[source] = base64.b64encode(jpeg).decode("ascii") if jpeg else ""
        progress.update(1)

    with (
        concurrent.futures.ThreadPoolExecutor(workers) as pool,
        tqdm(
            total=len(sources),
            desc="contact sheet",
            unit="photo",
            disable=not verbose or console.is_quiet(),
        ) as progress,
    ):
        pending: collections.deque = collections.deque()
        for source in sources:
            pending.append(pool.submit(lambda p: (p, thumbnail(p, side)), source))
            if len(pending) >= 4 * workers:
                store(pending.popleft())
        while pending:
            store(pending.popleft())
    return encoded


def _confident_first(entry: SheetEntry) -> tuple:
    return (entry.score is None, -(entry.score or 0.0), entry.path)


@dataclass
class _Sections:
    """The entries by section, each sorted most confident first."""

    landmarks: dict[str, list[SheetEntry]]  # by landmark, largest group first
    low_confidence: list[SheetEntry]
    no_landmark: list[SheetEntry]

    @classmethod
    def split(cls, entries: list[SheetEntry], low_confidence_below: float) -> _Sections:
        groups: dict[str, list[SheetEntry]] = collections.defaultdict(list)
        low, rejected = [], []
        for entry in entries:
            if entry.rejected:
                rejected.append(entry)
            elif not entry.label or (entry.score or 0.0) < low_confidence_below:
                low.append(entry)
            else:
                groups[entry.label].append(entry)
        order = sorted(groups, key=lambda label: (-len(groups[label]), label))
        return cls(
            landmarks={label: sorted(groups[label], key=_confident_first) for label in order},
            low_confidence=sorted(low, key=_confident_first),
            no_landmark=sorted(rejected, key=_confident_first),
        )


_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 1.5em auto;
  max-width: 1200px; padding: 0 1em; color: #222; }
h1 { font-size: 1.5em; margin-bottom: 0.2em; }
h2 { font-size: 1.15em; margin: 0; display: inline; }
.note { color: #666; font-size: 0.9em; }
table { border-collapse: collapse; font-size: 0.9em; }
td, th { padding: 3px 10px; border-bottom: 1px solid #eee; text-align: left; vertical-align: top; }
td.n, th.n { text-align: right; font-variant-numeric: tabular-nums; }
table.files td:first-child { word-break: break-all; }
section { margin-top: 1.2em; }
details.section { border-top: 1px solid #ccc; padding-top: 0.6em; }
details.section > summary { cursor: pointer; }
details.landmark { margin: 0.4em 0 0.4em 1.2em; }
details.landmark > summary { cursor: pointer; font-weight: 600; }
.count { color: #666; font-weight: normal; font-size: 0.9em; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, 128px); gap: 12px 14px;
  margin: 0.6em 0; }
.card { margin: 0; font-size: 0.78em; line-height: 1.3; min-width: 0; }
.card img, .card .missing { width: 128px; height: 112px; background: #f2f2f2;
  border-radius: 3px; }
.card img { display: block; object-fit: contain; }
.card .missing { display: flex; align-items: center; justify-content: center; color: #999; }
.card .name { display: block; overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
.card .label { display: block; font-weight: 600; overflow: hidden; text-overflow: ellipsis;
  white-space: nowrap; }
.bar { display: block; height: 3px; background: #e6e6e6; width: 128px; margin: 2px 0; }
.bar i { display: block; height: 3px; background: #3a7bd5; }
.grid.low .bar i { background: #d59a3a; }
.grid.rejected .bar i { background: #999; }
.loc { display: block; color: #555; }
.gps { display: block; color: #a15c00; }
button.more { margin: 0 0 0.8em; }
"""

# Shows a group's first chunk of cards when it is first opened, the next on "show more";
# a link to a section (the summary's) opens it, and "#open=all" opens every section.
_SCRIPT = """
function showChunk(group) {
  const next = group.querySelector(':scope > template');
  if (next) { group.querySelector(':scope > .grid').append(next.content); next.remove(); }
  const more = group.querySelector(':scope > button.more');
  const left = group.querySelectorAll(':scope > template').length;
  if (more) { more.hidden = left === 0; more.textContent = 'show more (' + left + ' left)'; }
}
for (const group of document.querySelectorAll('details.group')) {
  group.addEventListener('toggle', () => {
    if (group.open && !group.dataset.shown) { group.dataset.shown = '1'; showChunk(group); }
  });
  const more = group.querySelector(':scope > button.more');
  if (more) { more.addEventListener('click', () => showChunk(group)); }
}
function openFromHash() {
  if (location.hash === '#open=all') {
    for (const details of document.querySelectorAll('details')) { details.open = true; }
    return;
  }
  const target = location.hash && document.getElementById(location.hash.slice(1));
  const details = target && target.querySelector(':scope > details');
  if (details) { details.open = true; }
}
window.addEventListener('hashchange', openFromHash);
for (const link of document.querySelectorAll('a[href^="#"]')) {
  link.addEventListener('click', () => setTimeout(openFromHash));  // the same hash again
}
openFromHash();
"""


def _e(text: str) -> str:
    return html.escape(str(text), quote=True)


def _card(entry: SheetEntry, thumbnail_b64: str, show_label: bool) -> str:
    name = os.path.basename(entry.path.rstrip("/\\")) or entry.path
    if thumbnail_b64:
        picture = (
            f'<img alt="{_e(name)}" loading="lazy" decoding="async" '
            f'src="data:image/jpeg;base64,{thumbnail_b64}">'
        )
    else:
        picture = '<div class="missing">no preview</div>'
    parts = [picture]
    if show_label:
        label = entry.label or "no label"
        if entry.rejected:
            label = f"closest: {entry.label}" if entry.label else "no landmark"
        parts.append(f'<span class="label">{_e(label)}</span>')
    parts.append(f'<span class="name">{_e(name)}</span>')
    if entry.score is not None:
        width = max(0.0, min(1.0, entry.score)) * 100
        parts.append(
            f'<span class="score">{entry.score:.3f}</span>'
            f'<span class="bar"><i style="width:{width:.0f}%"></i></span>'
        )
    if entry.latitude is not None and entry.longitude is not None:
        where = f"{entry.latitude:.5f}, {entry.longitude:.5f}"
        if entry.located_from:
            where += f" (from {entry.located_from})"
        parts.append(f'<span class="loc">{_e(where)}</span>')
    if entry.gps_note:
        parts.append(f'<span class="gps">{_e(entry.gps_note)}</span>')
    return f'<figure class="card" title="{_e(entry.path)}">{"".join(parts)}</figure>'


def _chunks(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _lazy_cards(
    entries: list[SheetEntry], thumbnails: dict[str, str], show_label: bool, kind: str = ""
) -> Iterator[str]:
    """An empty grid, the cards in <template> chunks (inert until shown), a "show more"."""
    yield f'<div class="grid {kind}"></div>' if kind else '<div class="grid"></div>'
    for chunk in _chunks(entries, CHUNK):
        yield "<template>"
        yield "".join(_card(e, thumbnails.get(_source(e), ""), show_label) for e in chunk)
        yield "</template>"
    if len(entries) > CHUNK:
        yield '<button class="more" type="button" hidden>show more</button>'


def _count(number: int, noun: str) -> str:
    return f"{number:,} {noun}" + ("" if number == 1 else "s")


def _score_range(entries: list[SheetEntry]) -> str:
    scores = [entry.score for entry in entries if entry.score is not None]
    return f", scores {min(scores):.2f}-{max(scores):.2f}" if scores else ""


def _section_start(
    anchor: str, heading: str, count: str, note: str = "", lazy: bool = False
) -> str:
    """A section that starts collapsed; a lazy one renders its cards when opened."""
    classes = "section group" if lazy else "section"
    note_html = f'<p class="note">{_e(note)}</p>' if note else ""
    return (
        f'<section id="{anchor}"><details class="{classes}"><summary><h2>{_e(heading)}</h2> '
        f'<span class="count">{_e(count)}</span></summary>{note_html}'
    )


_SECTION_END = "</details></section>"


def _file_table(rows: list[dict[str, str]]) -> str:
    body = "".join(
        f"<tr><td>{_e(row.get('file', ''))}</td><td>{_e(row.get('reason', ''))}</td></tr>"
        for row in rows
    )
    return f'<table class="files"><tr><th>file</th><th>reason</th></tr>{body}</table>'


def _page(
    sections: _Sections,
    thumbnails: dict[str, str],
    failed: list[dict[str, str]],
    ignored: list[dict[str, str]],
    title: str,
    description: str,
    low_confidence_below: float,
    counts: dict[str, int],
) -> Iterator[str]:
    """The page as a stream of strings (written one by one: no copy of the whole page)."""
    when = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    yield (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(title)}</title><style>{_STYLE}</style></head><body>"
        f"<h1>{_e(title)}</h1>"
        f'<p class="note">{_e(description) + ", " if description else ""}'
        f"lmrec.predict contact sheet, {when}</p>"
    )
    photos = counts["landmarks"] + counts["low-confidence"] + counts["no-landmark"]
    rows = [
        ("landmarks", f"tagged with a landmark ({_count(len(sections.landmarks), 'landmark')})"),
        ("low-confidence", f"tagged below {low_confidence_below:g}: to review"),
        ("no-landmark", "no landmark: to review"),
        ("failed", "failed"),
        ("ignored", "ignored"),
    ]
    table = "".join(
        f'<tr><td><a href="#{anchor}">{_e(text)}</a></td><td class="n">{counts[anchor]:,}</td></tr>'
        for anchor, text in rows
    )
    yield (
        f'<section id="summary"><table><tr><th>{_count(photos, "photo")} classified</th>'
        f'<th class="n">photos</th></tr>{table}</table></section>'
    )

    yield _section_start(
        "landmarks",
        "Landmarks",
        f"{_count(counts['landmarks'], 'photo')}, {_count(len(sections.landmarks), 'landmark')}",
        "Each landmark's photos, most confident first; hover over a photo for its full path.",
    )
    for label, entries in sections.landmarks.items():
        yield (
            f'<details class="group landmark"><summary>{_e(label)} <span class="count">'
            f"{_count(len(entries), 'photo')}{_score_range(entries)}</span></summary>"
        )
        yield from _lazy_cards(entries, thumbnails, show_label=False)
        yield "</details>"
    yield _SECTION_END

    low = sections.low_confidence
    yield _section_start(
        "low-confidence",
        "Low confidence",
        f"{_count(len(low), 'photo')}{_score_range(low)}",
        f"Tagged with a score below {low_confidence_below:g}, or with no label at all "
        "(below --min_score): worth a second look. Most confident first.",
        lazy=True,
    )
    yield from _lazy_cards(low, thumbnails, show_label=True, kind="low")
    yield _SECTION_END

    rejected = sections.no_landmark
    yield _section_start(
        "no-landmark",
        "No landmark",
        f"{_count(len(rejected), 'photo')}{_score_range(rejected)}",
        "Answered “no landmark” (open-set score below the reject threshold); each shows "
        "the closest landmark and its score, most confident first.",
        lazy=True,
    )
    yield from _lazy_cards(rejected, thumbnails, show_label=True, kind="rejected")
    yield _SECTION_END

    yield _section_start("failed", "Failed", _count(counts["failed"], "file"))
    yield _file_table(failed) if failed else "<p>No file failed.</p>"
    yield _SECTION_END
    yield _section_start("ignored", "Ignored", _count(counts["ignored"], "file"))
    yield _file_table(ignored) if ignored else "<p>No file was ignored.</p>"
    yield _SECTION_END
    yield f"<script>{_SCRIPT}</script></body></html>"
