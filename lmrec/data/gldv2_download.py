"""Downloads Google Landmarks v2 (GLDv2) from its official public URLs, or a mirror of them.

    python scripts/download_gldv2.py --gldv2_dir=data/gldv2 --gldv2_tars=0-9 --num_classes=100

The official layout (https://github.com/cvdfoundation/google-landmark), under
--gldv2_url=https://s3.amazonaws.com/google-landmark:

    metadata/train.csv, metadata/train_clean.csv, metadata/train_label_to_category.csv
    train/images_000.tar ... train/images_499.tar       (about 1 GB each)
    md5sum/train/md5.images_000.txt ...                 (one line "<md5>  images_000.tar")

Inside a tar an image is a/b/c/abc....jpg (the first three characters of its
16-hex-character id). Locally, under --gldv2_dir:

    train.csv | train_clean.csv, train_label_to_category.csv
    tars/images_000.tar, tars/md5.images_000.txt      (tars can be deleted once extracted)
    train/a/b/c/<id>.jpg                               (what lmrec.prepare --source=gldv2 reads)

Transfers resume: bytes arrive in `<file>.part`, a rerun continues it with an
HTTP Range request, and the .part takes the final name only once its md5 (when
the mirror publishes one) matches. A file that already has its final name and
matching md5 is never fetched again. A CSV (no md5 is published for them) takes
its final name only once it looks whole: UTF-8 text, not an HTML page, the
expected header, a newline at the end and a complete last row; otherwise it is
deleted so a rerun fetches it again. Extraction reads plain (uncompressed) tars
only, writes only the images the chosen subset needs, each atomically and at
most MAX_MEMBER_BYTES, and computes every destination from the image id alone,
so a tar cannot write outside train/ nor fill the disk.
"""

from __future__ import annotations

import codecs
import csv
import dataclasses
import hashlib
import http.client
import json
import os
import re
import tarfile
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import BinaryIO

from tqdm import tqdm

from lmrec import atomic, console
from lmrec.config import PrepareConfig
from lmrec.data import sources
from lmrec.data.sources import gldv2
from lmrec.errors import UserError

NUM_TARS = 500
LABEL_CSV = os.path.splitext(gldv2.CATEGORY_FILE)[0]  # the CSV names live in the source
TARS_FOLDER = "tars"
IMAGES_FOLDER = "train"
PART_SUFFIX = ".part"

# The header row of each GLDv2 CSV (what lmrec.data.sources.gldv2 reads).
CSV_HEADERS = {
    **{listed.file: listed.header for _, listed in gldv2.CSV_LISTS.items()},
    gldv2.CATEGORY_FILE: ("landmark_id", "category"),
}
# GLDv2 images are at most a few MB; a tar member larger than this is not written.
MAX_MEMBER_BYTES = 64 << 20

_CHUNK_BYTES = 1 << 20
# First bytes of compressed streams; the official tars are plain, so these are refused
# rather than expanded (a small compressed file can expand into a huge one).
_COMPRESSED_MAGIC = {
    b"\x1f\x8b": "gzip",
    b"BZh": "bzip2",
    b"\xfd7zXZ\x00": "xz",
    b"\x28\xb5\x2f\xfd": "zstd",
    b"\x04\x22\x4d\x18": "lz4",
    b"\x02\x21\x4c\x18": "lz4",  # the legacy frame
}
# The last row of a CSV is looked for in at most this many final bytes (a train_clean.csv
# row lists every image of a landmark: hundreds of kB for the largest ones).
_MAX_ROW_BYTES = 64 << 20
_IMAGE_ID = re.compile(r"[0-9a-f]{16}")
_MD5 = re.compile(r"[0-9a-fA-F]{32}")
_USER_AGENT = "lmrec-gldv2-download"


class DownloadCancelled(Exception):
    """A transfer stopped because download() was interrupted; its .part is kept for a rerun."""


@dataclasses.dataclass(frozen=True)
class RemoteFile:
    """One file to fetch: where it lives, where it goes, and where its md5 is published."""

    url: str
    path: str  # relative to the download folder (gldv2_dir)
    md5_url: str | None = None  # an md5sum list ("<md5>  <name>") naming this file, if any

    @property
    def md5_path(self) -> str | None:
        """Where the md5 list is kept: beside the file, under the list's own name."""
        if self.md5_url is None:
            return None
        name = os.path.basename(urllib.parse.urlparse(self.md5_url).path)
        return os.path.join(os.path.dirname(self.path), name)


@dataclasses.dataclass(frozen=True)
class FetchResult:
    """What fetch() did for one file."""

    path: str  # the final local path
    status: str  # "fetched" | "resumed" | "skipped" (already complete)
    bytes_downloaded: int  # bytes that crossed the network in this call (md5 list included)
    md5: str | None  # the verified md5, when the mirror publishes one


@dataclasses.dataclass
class DownloadSummary:
    """What download() did for a list of files."""

    fetched: list[str] = dataclasses.field(default_factory=list)  # fetched or resumed
    skipped: list[str] = dataclasses.field(default_factory=list)  # already complete
    bytes_downloaded: int = 0


@dataclasses.dataclass
class ExtractCounts:
    """What extract_selected() did for one tar."""

    extracted: int = 0  # images written
    present: int = 0  # wanted images already on disk (left untouched)
    unwanted: int = 0  # images not in the selection
    # Members not written: not a <16 hex>.jpg file (the name), or over the size cap
    # ("name (size, over the cap)").
    rejected: list[str] = dataclasses.field(default_factory=list)

    def add(self, other: ExtractCounts) -> None:
        self.extracted += other.extracted
        self.present += other.present
        self.unwanted += other.unwanted
        self.rejected.extend(other.rejected)


@dataclasses.dataclass
class GLDv2Summary:
    """What download_gldv2() did, for the final report."""

    download: DownloadSummary
    images: ExtractCounts
    tars_chosen: int = 0
    tars_done_before: int = 0  # extracted by an earlier run for the same selection
    tars_deleted: int = 0
    images_wanted: int | None = None  # None: every image of the chosen tars
    images_missing: int | None = None  # wanted, but on disk neither before nor after
    warnings: list[str] = dataclasses.field(default_factory=list)  # e.g. a plain http:// URL

    def describe(self) -> str:
        fetched = self.download
        lines = [
            f"files fetched: {len(fetched.fetched)}, already complete (skipped): "
            f"{len(fetched.skipped)}, downloaded: {_sizeof(fetched.bytes_downloaded)}",
            f"tars chosen: {self.tars_chosen}, already extracted by an earlier run: "
            f"{self.tars_done_before}, deleted after extraction: {self.tars_deleted}",
            f"images extracted: {self.images.extracted}, already on disk: {self.images.present}, "
            f"not in the selection: {self.images.unwanted}",
        ]
        if self.images.rejected:
            shown = ", ".join(self.images.rejected[:3])
            lines.append(
                f"tar members ignored (not <16 hex>.jpg files, or larger than "
                f"{_sizeof(MAX_MEMBER_BYTES)}): {len(self.images.rejected)} (e.g. {shown})"
            )
        if self.images_wanted is not None:
            lines.append(
                f"images wanted: {self.images_wanted}, wanted but not found in the fetched tars "
                f"(nor on disk): {self.images_missing}"
            )
            if self.images_missing:
                lines.append(
                    "  They sit in tars not fetched yet: widen --gldv2_tars (all: every tar) "
                    "and rerun; tars already extracted for this selection are not fetched again."
                )
        lines.extend(f"warning: {warning}" for warning in self.warnings)
        return "\n".join(lines)


def parse_tar_list(text: str) -> list[int]:
    """Parses --gldv2_tars: "all", or numbers and ranges like "0-9,17".

    Returns:
      Sorted, distinct tar numbers in 0..499.

    Raises:
      UserError: anything else (the message names --gldv2_tars and the valid forms).
    """

    def bad(why: str) -> UserError:
        return UserError(
            f"--gldv2_tars={text!r}: {why}; use 'all' or numbers and ranges from 0 to "
            f"{NUM_TARS - 1}, like '0-9,17'"
        )

    cleaned = text.strip().lower()
    if cleaned == "all":
        return list(range(NUM_TARS))
    if not cleaned:
        raise bad("empty")
    chosen: set[int] = set()
    for part in cleaned.split(","):
        part = part.strip()
        first, dash, last = part.partition("-")
        if not first.strip().isdigit() or (dash and not last.strip().isdigit()):
            raise bad(f"{part!r} is not a number or a range a-b")
        start = int(first)
        stop = int(last) if dash else start
        if start > stop:
            raise bad(f"range {part!r} runs backwards")
        if stop >= NUM_TARS:
            raise bad(f"{stop} is past the last tar, {NUM_TARS - 1}")
        chosen.update(range(start, stop + 1))
    return sorted(chosen)


def official_files(
    base_url: str, tars: Iterable[int], csv_names: Iterable[str]
) -> list[RemoteFile]:
    """The CSVs and image tars (with their md5 lists) at base_url, in the official layout.

    Args:
      base_url: e.g. https://s3.amazonaws.com/google-landmark, a mirror, or a file:// URL.
      tars: tar numbers (0..499).
      csv_names: e.g. ["train", "train_label_to_category"] (".csv" optional).

    Returns:
      CSVs first (saved as <name>.csv), then tars (saved as tars/images_NNN.tar).
    """
    base = base_url.rstrip("/")
    files = []
    for name in csv_names:
        name = name.removesuffix(".csv")
        files.append(RemoteFile(f"{base}/metadata/{name}.csv", f"{name}.csv"))
    for number in tars:
        if not 0 <= number < NUM_TARS:
            raise UserError(f"Tar number {number} is outside 0..{NUM_TARS - 1}")
        name = f"images_{number:03d}"
        files.append(
            RemoteFile(
                f"{base}/train/{name}.tar",
                os.path.join(TARS_FOLDER, f"{name}.tar"),
                md5_url=f"{base}/md5sum/train/md5.{name}.txt",
            )
        )
    return files


def fetch(
    remote: RemoteFile,
    dest_dir: str,
    *,
    progress: Callable[[int, int], None] | None = None,
    timeout: float = 60.0,
    retries: int = 3,
    cancel: threading.Event | None = None,
) -> FetchResult:
    """Fetches one file into dest_dir, resuming a .part left by an earlier attempt.

    Args:
      remote: what to fetch; with remote.md5_url the md5 list is fetched (and kept) first.
      dest_dir: the download folder; the file goes to dest_dir/remote.path.
      progress: called as progress(0, bytes_expected) when a response starts and as
        progress(n, 0) for every n bytes written (from this thread).
      timeout: seconds without data before a connection counts as failed.
      retries: how often a transfer that broke off after receiving data is resumed at once.
      cancel: once set, the transfer stops at the next chunk (the .part is kept) and
        DownloadCancelled is raised.

    Returns:
      A FetchResult; status "skipped" when the file was already complete.

    Raises:
      UserError: the URL failed (offline, HTTP error, broken off more than `retries` times),
        the md5 does not match or a CSV is not whole (the .part is deleted either way), or a
        complete file on disk does not match its md5 (it is left alone for the user to delete).
      DownloadCancelled: `cancel` was set.
    """
    path = os.path.join(dest_dir, remote.path)
    downloaded = 0
    expected_md5 = None
    if remote.md5_url is not None:
        md5_remote = RemoteFile(remote.md5_url, remote.md5_path)
        listed = fetch(md5_remote, dest_dir, timeout=timeout, retries=retries, cancel=cancel)
        downloaded += listed.bytes_downloaded
        expected_md5 = _md5_from_list(listed.path, os.path.basename(remote.path), remote.md5_url)

    if os.path.exists(path):
        if expected_md5 is not None:
            actual = _md5_of_file(path)
            if actual != expected_md5:
                raise UserError(
                    f"{path} exists but its md5 is {actual}, not {expected_md5} as "
                    f"{remote.md5_url} says; delete it and rerun to download it again"
                )
        return FetchResult(path, "skipped", downloaded, expected_md5)

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    part = path + PART_SUFFIX
    digest = _PartDigest(part)
    resumed = digest.size > 0
    attempts_left = retries
    while True:
        try:
            received, complete = _transfer(remote.url, part, digest, progress, timeout, cancel)
        except _RangeNotSatisfiable:
            # The .part already holds every byte (or more): keep it if its md5 proves it whole.
            if expected_md5 is not None and digest.hexdigest() == expected_md5:
                break
            digest.restart()
            continue
        except _OpenFailed as failure:
            raise _offline_error(remote.url, path, failure.error, digest.size) from failure.error
        downloaded += received
        if complete:
            break
        if received == 0 or attempts_left <= 0:
            raise UserError(
                f"Downloading {remote.url} broke off after {_sizeof(digest.size)}; what "
                f"arrived is kept in {part} and a rerun resumes from there (or fetch that URL "
                f"by hand and save it as {path})"
            )
        attempts_left -= 1

    actual = digest.hexdigest()
    if expected_md5 is not None and actual != expected_md5:
        os.remove(part)
        raise UserError(
            f"md5 mismatch for {path} (from {remote.url}): expected {expected_md5} "
            f"(from {remote.md5_url}), got {actual}; the download was deleted, rerun to fetch "
            "it again"
        )
    if remote.path.endswith(".csv"):
        _check_fetched_csv(part, path, remote.url)
    os.replace(part, path)
    return FetchResult(path, "resumed" if resumed else "fetched", downloaded, expected_md5)


def download(
    files: list[RemoteFile],
    dest_dir: str,
    jobs: int = 4,
    *,
    on_complete: Callable[[RemoteFile, FetchResult], None] | None = None,
    verbose: bool = True,
    timeout: float = 60.0,
    retries: int = 3,
) -> DownloadSummary:
    """Fetches files in parallel with one progress bar in bytes.

    Args:
      files: what to fetch (see official_files).
      dest_dir: the download folder.
      jobs: parallel transfers.
      on_complete: called in the worker thread with each finished file (e.g. to extract a
        tar while others still download); what it raises counts as that file's failure.
      verbose: show the progress bar (plain text, also fine in Colab and in logs).
      timeout, retries: as in fetch().

    Returns:
      A DownloadSummary of fetched and skipped paths and the bytes downloaded.

    Raises:
      UserError: one or more files failed; every other file is finished first, so a rerun
        only has the failed ones left. The message lists each failure.
    """
    if jobs < 1:
        raise UserError(f"--download_jobs={jobs}: use at least 1")
    summary = DownloadSummary()
    lock = threading.Lock()
    bar = tqdm(
        total=0,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        desc="download",
        disable=not verbose or not files,
        mininterval=1.0,
        dynamic_ncols=False,
        ascii=True,
    )

    def progress(new_bytes: int, expected_more: int) -> None:
        with lock:
            if expected_more:
                bar.total += expected_more
                bar.refresh()
            if new_bytes:
                bar.update(new_bytes)

    cancel = threading.Event()

    def one(remote: RemoteFile) -> FetchResult:
        result = fetch(
            remote, dest_dir, progress=progress, timeout=timeout, retries=retries, cancel=cancel
        )
        if on_complete is not None:
            on_complete(remote, result)
        return result

    errors: list[str] = []
    pool = ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="gldv2-download")
    try:
        futures = [pool.submit(one, remote) for remote in files]
        for future in as_completed(futures):
            try:
                result = future.result()
            except UserError as error:
                errors.append(str(error))
                continue
            summary.bytes_downloaded += result.bytes_downloaded
            if result.status == "skipped":
                summary.skipped.append(result.path)
            else:
                summary.fetched.append(result.path)
    except BaseException:
        # Ctrl-C or a bug: stop the other transfers at their next chunk (their .part files
        # stay for a rerun) instead of waiting for every file to finish.
        cancel.set()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        bar.close()
    if len(errors) == 1:
        raise UserError(errors[0])
    if errors:
        shown = "\n  ".join(errors[:10])
        more = f"\n  ... and {len(errors) - 10} more" if len(errors) > 10 else ""
        raise UserError(f"{len(errors)} of {len(files)} downloads failed:\n  {shown}{more}")
    return summary


def image_path(gldv2_dir: str, image_id: str) -> str:
    """Where an image lives: <gldv2_dir>/train/a/b/c/<id>.jpg."""
    if not _IMAGE_ID.fullmatch(image_id):
        raise ValueError(f"Not a GLDv2 image id (16 lowercase hex characters): {image_id!r}")
    return gldv2.image_path(gldv2_dir, image_id)


def extract_selected(
    tar_path: str,
    wanted_ids: set[str] | None,
    gldv2_dir: str,
    *,
    max_member_bytes: int = MAX_MEMBER_BYTES,
) -> ExtractCounts:
    """Streams one GLDv2 tar and writes the wanted images to gldv2_dir/train/a/b/c/<id>.jpg.

    Member paths are never used as destinations: only a regular file named <16 hex>.jpg
    (at any folder depth, with or without a train/ prefix) counts, and its destination is
    computed from that id. Images already on disk are left as they are. A member larger
    than max_member_bytes is not written (it is counted in `rejected` with its size), and
    no more than max_member_bytes are ever copied for one member.

    Args:
      tar_path: the tar, plain as the official ones are (read sequentially).
      wanted_ids: image ids to keep; None keeps every image.
      gldv2_dir: the GLDv2 folder.
      max_member_bytes: the largest image written.

    Returns:
      ExtractCounts for this tar.

    Raises:
      UserError: the file is compressed (gzip, bzip2, xz, zstd, lz4), damaged or not a tar.
    """
    counts = ExtractCounts()
    with open(tar_path, "rb") as stream:
        _refuse_compressed(stream, tar_path)
        try:
            # "r|": a plain tar read front to back; no decompressor is ever started.
            with tarfile.open(fileobj=stream, mode="r|") as archive:
                for member in archive:
                    _extract_member(
                        archive, member, wanted_ids, gldv2_dir, max_member_bytes, counts
                    )
        except (tarfile.TarError, EOFError) as error:
            raise UserError(
                f"Cannot read {tar_path} as a tar ({error}); delete it and rerun to download it "
                "again"
            ) from error
    return counts


def _extract_member(
    archive: tarfile.TarFile,
    member: tarfile.TarInfo,
    wanted_ids: set[str] | None,
    gldv2_dir: str,
    max_bytes: int,
    counts: ExtractCounts,
) -> None:
    """Writes one member if it is a wanted image within the size cap; counts what it did."""
    image_id = _member_image_id(member)
    if image_id is None:
        if not member.isdir():
            counts.rejected.append(member.name)
        return
    if member.size > max_bytes:
        counts.rejected.append(_too_large(member.name, member.size, max_bytes))
        return
    if wanted_ids is not None and image_id not in wanted_ids:
        counts.unwanted += 1
        return
    destination = image_path(gldv2_dir, image_id)
    if os.path.exists(destination):
        counts.present += 1
        return
    source = archive.extractfile(member)
    try:
        # Not synced one by one: os.sync() runs once before the tar's marker is written.
        with atomic.replacing(destination, durable=False) as tmp, open(tmp, "wb") as out:
            _copy_at_most(source, out, max_bytes)
    except _TooLarge as too_large:
        # The data ran past the header's size: the partial copy was deleted with its temp file.
        counts.rejected.append(_too_large(member.name, too_large.size, max_bytes))
        return
    counts.extracted += 1


class _TooLarge(Exception):
    """A member's data is larger than the cap (size: the bytes seen, at least cap + 1)."""

    def __init__(self, size: int):
        super().__init__(size)
        self.size = size


def _copy_at_most(source: BinaryIO, out: BinaryIO, limit: int) -> None:
    """Copies source to out; raises _TooLarge, having written at most `limit` bytes, past it."""
    written = 0
    while True:
        chunk = source.read(min(_CHUNK_BYTES, limit - written + 1))
        if not chunk:
            return
        if written + len(chunk) > limit:
            raise _TooLarge(written + len(chunk))
        out.write(chunk)
        written += len(chunk)


def _too_large(name: str, size: int, limit: int) -> str:
    return f"{name} ({_sizeof(size)}, over the {_sizeof(limit)} cap)"


def _refuse_compressed(stream: BinaryIO, tar_path: str) -> None:
    """Raises UserError when the file starts like a compressed stream; rewinds it otherwise."""
    head = stream.read(8)
    stream.seek(0)
    for magic, kind in _COMPRESSED_MAGIC.items():
        if head.startswith(magic):
            raise UserError(
                f"{tar_path} is {kind}-compressed, not a plain tar like GLDv2's images_NNN.tar; "
                "compressed tars are not expanded (one could fill the disk). Check --gldv2_url, "
                "delete the file and rerun"
            )


def download_gldv2(
    config: PrepareConfig, *, keep_tars: bool = True, verbose: bool = True
) -> GLDv2Summary:
    """CSVs -> the selection's image ids -> chosen tars (md5-checked) -> only wanted images.

    Each tar is extracted as soon as it is complete (while others still download) and,
    without keep_tars, deleted right after, so the disk holds at most --download_jobs tars.
    A marker tars/images_NNN.extracted.json records that a tar was extracted for this
    selection, so a rerun neither downloads nor reads it again, even once it is deleted.
    A plain http:// --gldv2_url is warned about on stderr and in the summary.

    Args:
      config: a --source=gldv2 config: its seed, and the source options gldv2_dir,
        gldv2_url, gldv2_csv, gldv2_tars, download_jobs and the selection
        (min/max_images_per_class, num_classes, class_selection, classes).
      keep_tars: keep each tar after extraction.
      verbose: progress bar and one line per extracted tar.

    Returns:
      A GLDv2Summary (its describe() is the final report).

    Raises:
      UserError: a bad flag, a failed download or md5 check, or a damaged tar.
    """
    if config.source != "gldv2":
        raise UserError(f"Downloading GLDv2 needs --source=gldv2, got --source={config.source}")
    options = sources.options_of(config)
    if not options.gldv2_dir:
        raise UserError("--gldv2_dir is required: the folder to download Google Landmarks v2 into")
    listed = gldv2.CSV_LISTS.get(options.gldv2_csv)  # an unknown --gldv2_csv fails here
    tars = parse_tar_list(options.gldv2_tars)
    os.makedirs(options.gldv2_dir, exist_ok=True)
    warnings = [w for w in [_plain_http_warning(options.gldv2_url)] if w is not None]
    for warning in warnings:
        console.warn(warning)

    csvs = official_files(options.gldv2_url, [], [listed.file, LABEL_CSV])
    csv_summary = download(csvs, options.gldv2_dir, options.download_jobs, verbose=verbose)

    selected = gldv2.selected_image_ids(options, config.seed)
    wanted = None if selected is None else set(selected)
    if wanted is not None and not wanted:
        raise UserError(
            "The selection flags (--classes, --num_classes, --min_images_per_class, ...) pick "
            f"no image of {listed.file}; loosen them"
        )
    selection = _selection_fingerprint(wanted)

    tar_files = official_files(options.gldv2_url, tars, [])
    pending = []
    done_before = 0
    for remote in tar_files:
        if _marker_matches(options.gldv2_dir, remote, selection):
            done_before += 1
        else:
            pending.append(remote)

    images = ExtractCounts()
    deleted = 0
    lock = threading.Lock()

    def extract(remote: RemoteFile, result: FetchResult) -> None:
        nonlocal deleted
        counts = extract_selected(result.path, wanted, options.gldv2_dir)
        os.sync()  # the extracted images are on the disk before the marker says so
        atomic.write_json(
            _marker_path(options.gldv2_dir, remote),
            {
                "tar": os.path.basename(remote.path),
                "md5": result.md5,
                "selection": selection,
                "extracted": counts.extracted,
                "present": counts.present,
            },
        )
        if not keep_tars:
            os.remove(result.path)
        with lock:
            images.add(counts)
            deleted += 0 if keep_tars else 1
        if verbose:
            tqdm.write(
                f"{os.path.basename(result.path)}: {counts.extracted} images extracted, "
                f"{counts.present} already on disk, {counts.unwanted} not selected"
            )

    tar_summary = download(
        pending, options.gldv2_dir, options.download_jobs, on_complete=extract, verbose=verbose
    )
    missing = None
    if wanted is not None:
        missing = sum(
            1
            for image_id in wanted
            if not os.path.exists(_safe_image_path(options.gldv2_dir, image_id))
        )
    return GLDv2Summary(
        download=DownloadSummary(
            fetched=csv_summary.fetched + tar_summary.fetched,
            skipped=csv_summary.skipped + tar_summary.skipped,
            bytes_downloaded=csv_summary.bytes_downloaded + tar_summary.bytes_downloaded,
        ),
        images=images,
        tars_chosen=len(tars),
        tars_done_before=done_before,
        tars_deleted=deleted,
        images_wanted=None if wanted is None else len(wanted),
        images_missing=missing,
        warnings=warnings,
    )


class _RangeNotSatisfiable(Exception):
    """The server answered 416 to a resume: the .part is as long as the file, or longer."""


class _OpenFailed(Exception):
    """Connecting or requesting failed (offline, refused, HTTP error, missing file)."""

    def __init__(self, error: BaseException):
        super().__init__(str(error))
        self.error = error


class _PartDigest:
    """The md5 and size of a .part file, kept up to date as bytes are appended."""

    def __init__(self, part: str):
        self.part = part
        self.md5 = hashlib.md5()
        self.size = 0
        if os.path.exists(part):
            with open(part, "rb") as f:
                for chunk in iter(lambda: f.read(_CHUNK_BYTES), b""):
                    self.update(chunk)

    def update(self, chunk: bytes) -> None:
        self.md5.update(chunk)
        self.size += len(chunk)

    def restart(self) -> None:
        """Empties the .part (the next transfer starts from byte 0)."""
        if os.path.exists(self.part):
            os.remove(self.part)
        self.md5 = hashlib.md5()
        self.size = 0

    def hexdigest(self) -> str:
        return self.md5.hexdigest()


def _transfer(
    url: str,
    part: str,
    digest: _PartDigest,
    progress: Callable[[int, int], None] | None,
    timeout: float,
    cancel: threading.Event | None,
) -> tuple[int, bool]:
    """Appends url's bytes from digest.size to `part` (from 0 when the server ignores Range).

    Returns:
      (bytes received, whether the file is complete). A transfer that broke off
      mid-way returns complete=False with what it received kept in `part`.
    """
    stream, status, total = _open(url, digest.size, timeout)
    received = 0
    with stream:
        if status != 206 and digest.size:
            # A full answer (200): the server ignored Range, so the .part starts over.
            digest.restart()
        if progress is not None and total is not None:
            progress(0, total - digest.size)
        with open(part, "ab") as out:
            while True:
                if cancel is not None and cancel.is_set():
                    raise DownloadCancelled(url)
                try:
                    chunk = stream.read(_CHUNK_BYTES)
                except (http.client.HTTPException, OSError):
                    # Broken off mid-body (reset, timeout, short read): keep what arrived.
                    return received, False
                if not chunk:
                    break
                out.write(chunk)
                digest.update(chunk)
                received += len(chunk)
                if progress is not None:
                    progress(len(chunk), 0)
    complete = total is None or digest.size == total
    return received, complete


def _open(url: str, offset: int, timeout: float) -> tuple[BinaryIO, int, int | None]:
    """Opens url at byte `offset`: (stream, 200 or 206, total size of the file or None).

    Raises:
      _RangeNotSatisfiable: offset is at or past the end (HTTP 416).
      _OpenFailed: anything else that prevents reading.
    """
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme == "file":
        try:
            stream = open(urllib.request.url2pathname(parsed.path), "rb")  # noqa: SIM115
        except OSError as error:
            raise _OpenFailed(error) from error
        size = os.fstat(stream.fileno()).st_size
        if offset > size:
            stream.close()
            raise _RangeNotSatisfiable()
        stream.seek(offset)
        return stream, 206 if offset else 200, size
    request = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
        status = response.status
        content_range = response.headers.get("Content-Range", "")
        match = re.fullmatch(r"bytes (\d+)-\d+/(\d+|\*)", content_range.strip())
        if status == 206 and (not match or int(match.group(1)) != offset):
            # Not the range we asked for: drop it and ask for the whole file.
            response.close()
            request.remove_header("Range")
            response = urllib.request.urlopen(request, timeout=timeout)
            status = response.status
    except urllib.error.HTTPError as error:
        if error.code == 416 and offset:
            raise _RangeNotSatisfiable() from error
        raise _OpenFailed(error) from error
    except (OSError, http.client.HTTPException) as error:
        raise _OpenFailed(error) from error
    if status == 206:
        total = int(match.group(2)) if match.group(2) != "*" else None
    else:
        length = response.headers.get("Content-Length", "")
        total = int(length) if length.isdigit() else None
    return response, status, total


def _offline_error(url: str, path: str, error: BaseException, kept_bytes: int) -> UserError:
    if isinstance(error, urllib.error.HTTPError):
        why = f"the server answered HTTP {error.code} {error.reason}"
        hint = "check --gldv2_url and --gldv2_tars"
    elif isinstance(error, FileNotFoundError):
        why = "no such file"
        hint = "check --gldv2_url"
    else:
        reason = getattr(error, "reason", error)
        why = f"{type(reason).__name__}: {reason}"
        hint = "this machine may be offline, or the server unreachable"
    kept = (
        f" (the {_sizeof(kept_bytes)} received so far are kept in {path}{PART_SUFFIX})"
        if kept_bytes
        else ""
    )
    return UserError(
        f"Could not download {url} ({why}); {hint}. Fetch that URL by hand and save it as "
        f"{path}, or rerun later{kept}"
    )


def _md5_from_list(list_path: str, name: str, list_url: str) -> str:
    """The md5 that an md5sum list gives for `name` (its only entry if it names no file)."""
    entries = []
    with open(list_path, encoding="utf-8", errors="replace") as f:
        for line in f:
            fields = line.split()
            if len(fields) >= 2 and _MD5.fullmatch(fields[0]):
                listed = os.path.basename(fields[1].lstrip("*"))
                entries.append((fields[0].lower(), listed))
            elif len(fields) == 1 and _MD5.fullmatch(fields[0]):
                entries.append((fields[0].lower(), ""))
    for md5, listed in entries:
        if listed == name:
            return md5
    if len(entries) == 1:
        return entries[0][0]
    raise UserError(
        f"The md5 list {list_url} (saved as {list_path}) has no md5 for {name}; delete it and "
        "rerun, or check --gldv2_url"
    )


def _md5_of_file(path: str) -> str:
    hasher = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK_BYTES), b""):
            hasher.update(chunk)
    return hasher.hexdigest()


def _check_fetched_csv(part: str, path: str, url: str) -> None:
    """Deletes a fetched CSV that is not whole and raises UserError saying what is wrong.

    No md5 is published for the CSVs, so this is what tells a complete list from an error
    page or from a transfer that ended early without a Content-Length to compare against.
    """
    name = os.path.basename(path)
    problem = _csv_problem(part, CSV_HEADERS.get(name))
    if problem is None:
        return
    os.remove(part)
    raise UserError(
        f"{url} did not give a whole {name}: {problem}. The download was deleted, not saved "
        f"as {path}; rerun to fetch it again (if this repeats, check --gldv2_url)"
    )


def _csv_problem(path: str, header: tuple[str, ...] | None) -> str | None:
    """What makes a CSV unusable (None: nothing): HTML, not UTF-8, the header, the last row.

    header: the expected header row; None accepts any header.
    """
    with open(path, "rb") as f:
        head = f.read(_CHUNK_BYTES)
        if not head:
            return "the file is empty"
        if head.lstrip(b"\xef\xbb\xbf \t\r\n")[:1] == b"<":
            return "it is an HTML page (it starts with '<'; an error or sign-in page?), not CSV"
        f.seek(0)
        problem = _utf8_problem(f)
        if problem is not None:
            return problem
        if b"\n" not in head:
            return f"its first line is longer than {_sizeof(len(head))}; not a CSV header"
        first_line = head.split(b"\n", 1)[0]
        first = _csv_fields(first_line)
        if header is not None and first != list(header):
            return f"its header is {','.join(first)[:200]!r}, not {','.join(header)}"
        size = f.seek(0, os.SEEK_END)
        f.seek(size - 1)
        if f.read(1) != b"\n":
            return "it does not end with a newline (the transfer stopped mid-row)"
        last = _last_line(f, size)
    if last is None:
        return f"its last row is longer than {_sizeof(_MAX_ROW_BYTES)}"
    line, is_first = last
    if is_first:
        return "it has no rows after its header"
    fields, expected = _field_count(line), _field_count(first_line)
    if fields != expected:
        return (
            f"its last row has {fields} fields, not the {expected} of its header (the "
            "transfer stopped mid-row?)"
        )
    return None


def _utf8_problem(f: BinaryIO) -> str | None:
    """Reads f to its end; says where it stops being UTF-8 text (None: it is)."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = 0
    try:
        for chunk in iter(lambda: f.read(_CHUNK_BYTES), b""):
            decoder.decode(chunk)
            offset += len(chunk)
        decoder.decode(b"", final=True)
    except UnicodeDecodeError as error:
        return f"it is not UTF-8 text (near byte {max(0, offset + error.start)})"
    return None


def _last_line(f: BinaryIO, size: int) -> tuple[bytes, bool] | None:
    """(the last non-blank line, whether it is the first line); None past _MAX_ROW_BYTES.

    Reads back from the end in growing blocks, so a usual row costs one small read.
    """
    span = 1 << 16
    while True:
        start = max(0, size - span)
        f.seek(start)
        body = f.read(size - start).rstrip()
        cut = body.rfind(b"\n")
        if cut >= 0 or start == 0:
            return body[cut + 1 :], cut < 0
        if span >= _MAX_ROW_BYTES:
            return None
        span = min(span * 4, _MAX_ROW_BYTES)


def _csv_fields(line: bytes) -> list[str]:
    """The stripped fields of a short CSV line such as a header (already known to be UTF-8)."""
    try:
        row = next(csv.reader([line.decode("utf-8").rstrip("\r\n")]), [])
    except csv.Error:  # a field over csv's size limit: not a header
        return [line[:200].decode("utf-8", "replace")]
    return [field.strip() for field in row]


def _field_count(line: bytes) -> int:
    """Fields in one CSV line: one more than its commas outside double quotes.

    Splitting at quotes leaves the text outside quotes at even positions (an escaped "" adds
    an empty one), so no CSV parser, and no field size limit, is needed: a train_clean.csv
    row lists every image of a landmark and can be longer than csv's 128 kB limit.
    """
    return 1 + sum(piece.count(b",") for piece in line.split(b'"')[::2])


def _plain_http_warning(url: str) -> str | None:
    """A one-line warning when url is plain http:// (None otherwise)."""
    if urllib.parse.urlparse(url).scheme.lower() != "http":
        return None
    return (
        f"--gldv2_url={url} uses plain http://: the CSVs arrive with no integrity check, and "
        "the tars are checked only against md5 lists fetched over the same channel; use "
        "https:// where the mirror offers it"
    )


def _member_image_id(member: tarfile.TarInfo) -> str | None:
    """The image id of a tar member, or None when it is not a regular <16 hex>.jpg file."""
    if not member.isfile():
        return None
    name = member.name.replace("\\", "/").rsplit("/", 1)[-1]
    stem, dot, extension = name.rpartition(".")
    if not dot or extension.lower() != "jpg" or not _IMAGE_ID.fullmatch(stem):
        return None
    return stem


def _safe_image_path(gldv2_dir: str, image_id: str) -> str:
    """image_path() for ids from a CSV; a malformed id maps to a path that does not exist."""
    try:
        return image_path(gldv2_dir, image_id)
    except ValueError:
        return os.path.join(gldv2_dir, IMAGES_FOLDER, "not-an-image-id")


def _selection_fingerprint(wanted: set[str] | None) -> str:
    if wanted is None:
        return "all"
    hasher = hashlib.sha256()
    for image_id in sorted(wanted):
        hasher.update(image_id.encode("utf-8") + b"\n")
    return hasher.hexdigest()


def _marker_path(gldv2_dir: str, remote: RemoteFile) -> str:
    stem = os.path.splitext(remote.path)[0]
    return os.path.join(gldv2_dir, f"{stem}.extracted.json")


def _marker_matches(gldv2_dir: str, remote: RemoteFile, selection: str) -> bool:
    try:
        with open(_marker_path(gldv2_dir, remote), encoding="utf-8") as f:
            marker = json.load(f)
    except (OSError, ValueError):
        return False
    return isinstance(marker, dict) and marker.get("selection") == selection


def _sizeof(count: int) -> str:
    return tqdm.format_sizeof(count, "B", 1024)
