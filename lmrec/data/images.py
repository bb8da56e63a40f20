"""Decoding and validating photos with Pillow, before they reach TensorFlow.

prepare and predict both need to know, per file, whether it is a readable image
and if not why, without one bad file stopping thousands of good ones. Pillow
gives that (and EXIF orientation, and every common format) in plain Python,
which also runs in worker processes that never import TensorFlow.

Any file may be hostile, so what one costs is bounded (Limits): only the formats
of READ_FORMATS are parsed, only regular files up to a size are read, the pixels
a header promises are counted before any is decoded, and the photos decoding at
once share a memory budget (DecodeBudget). Whatever goes wrong inside becomes a
BadImage whose message is the reason shown for that file.
"""

from __future__ import annotations

import collections
import contextlib
import io
import math
import os
import stat
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
from PIL import Image, UnidentifiedImageError, features

from lmrec.errors import UserError

# Extensions a photo folder may use; matched case-insensitively. HEIC/HEIF (phones) need
# the optional pillow-heif; without it such a file is reported with what to install.
HEIF_EXTENSIONS = (".heic", ".heif")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", *HEIF_EXTENSIONS)
# Camera RAW files: never decoded (predict tags them through a JPEG twin, if one exists).
RAW_EXTENSIONS = (
    ".3fr", ".arw", ".cr2", ".cr3", ".crw", ".dcr", ".dng", ".erf", ".iiq", ".kdc", ".mef",
    ".mos", ".mrw", ".nef", ".nrw", ".orf", ".pef", ".raf", ".raw", ".rw2", ".rwl", ".sr2",
    ".srf", ".srw", ".x3f",
)  # fmt: skip
HEIF_BRANDS = (b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1", b"avif")
JPEG_QUALITY = 95


def _register_heif() -> bool:
    """Lets Pillow open HEIC/HEIF when pillow-heif is installed (pip install lmrec[heif])."""
    try:
        import pillow_heif
    except ImportError:
        return False
    pillow_heif.register_heif_opener()
    return True


HEIF_AVAILABLE = _register_heif()

# The only formats Pillow is asked to open. Everything else Pillow could identify (TIFF,
# PSD, ICO, EPS, dozens more) is refused unparsed: each plugin is code run on hostile
# bytes, and a photo library has no use for them. Cameras' JPEGs are often MPO (a second,
# smaller image after the first), which Pillow names separately.
READ_FORMATS = (
    "JPEG", "MPO", "PNG", "WEBP", "BMP", "GIF",
    *(("HEIF",) if HEIF_AVAILABLE else ()),
    *(("AVIF",) if features.check_module("avif") else ()),
)  # fmt: skip
_JPEG_FORMATS = ("JPEG", "MPO")  # decoded by libjpeg: DCT scaling, orientation in the header
# What Image.open is given: Pillow's JPEG opener is also the one that returns MPO images.
_OPENERS = tuple(name for name in READ_FORMATS if name != "MPO")
# Leading bytes of formats lmrec does not read, only to say what a refused file holds.
_FOREIGN_SIGNATURES = (
    (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"), (b"II+\x00", "BigTIFF"), (b"MM\x00+", "BigTIFF"),
    (b"%PDF", "PDF"), (b"8BPS", "Photoshop PSD"), (b"\x00\x00\x01\x00", "ICO"),
    (b"icns", "ICNS"), (b"\xff\x0a", "JPEG XL"), (b"\x00\x00\x00\x0cJXL ", "JPEG XL"),
    (b"\x00\x00\x00\x0cjP  ", "JPEG 2000"), (b"\xff\x4f\xff\x51", "JPEG 2000"),
    (b"qoif", "QOI"), (b"DDS ", "DDS"), (b"gimp xcf", "GIMP XCF"), (b"PK\x03\x04", "ZIP"),
    (b"\x1f\x8b", "gzip"), (b"<?xml", "XML"), (b"<svg", "SVG"),
)  # fmt: skip

# Defaults of what one photo may cost; PredictConfig's fields (lmrec.config) start from
# these and predict's flags override them.
MAX_FILE_MB = 128
MAX_MEGAPIXELS = 100
DECODE_MEMORY_MB = 512

# Pillow's own guard, Image.MAX_IMAGE_PIXELS, is switched off in favour of Limits.max_pixels:
# it counts the header's size before a JPEG's DCT scaling (refusing a 200 MP camera JPEG
# that predict decodes at 1/8 scale), and between its limit and twice that it only warns,
# so whether such an image decodes depends on the process's warning filters. Every decode
# here checks max_pixels from the header instead, the same way in every thread.
Image.MAX_IMAGE_PIXELS = None


class BadImage(Exception):
    """A file that is not a usable image; str() is the reason shown to the user."""


class DecodeBudget:
    """Bytes of decoded pixels that the photos decoding at once may hold together.

    A decoding thread reserves its estimate before Pillow allocates anything and
    releases it when it is done with the full-size image, so eight threads on eight
    huge PNGs take turns instead of needing eight times the memory. Waiters are
    served in arrival order: a large photo is not starved by a stream of small ones.
    """

    def __init__(self, limit_bytes: int):
        self.limit_bytes = limit_bytes
        self._used = 0
        self._queue: collections.deque[object] = collections.deque()
        self._changed = threading.Condition()

    @contextlib.contextmanager
    def reserve(self, nbytes: int, what: str) -> Iterator[None]:
        """Holds nbytes of the budget for the with-block; waits for them if need be.

        Raises:
          BadImage: nbytes alone exceeds the whole budget (what says which image).
        """
        if nbytes > self.limit_bytes:
            raise BadImage(
                f"too many pixels to decode: {what} needs about {_megabytes(nbytes)} MB, "
                f"more than the {_megabytes(self.limit_bytes)} MB decode memory budget "
                "(--decode_memory_mb)"
            )
        with self._changed:
            turn = object()
            self._queue.append(turn)
            try:
                while self._queue[0] is not turn or self._used + nbytes > self.limit_bytes:
                    self._changed.wait()
            finally:
                self._queue.remove(turn)
                self._changed.notify_all()
            self._used += nbytes
        try:
            yield
        finally:
            with self._changed:
                self._used -= nbytes
                self._changed.notify_all()

    @property
    def used_bytes(self) -> int:
        with self._changed:
            return self._used


def _megabytes(nbytes: int) -> int:
    return math.ceil(nbytes / (1 << 20))


@dataclass(frozen=True)
class Limits:
    """What one photo may cost: file size, decoded pixels, and its share of decode memory."""

    max_file_bytes: int = MAX_FILE_MB << 20
    max_pixels: int = MAX_MEGAPIXELS * 1_000_000
    budget: DecodeBudget = DecodeBudget(DECODE_MEMORY_MB << 20)  # shared by the process

    @classmethod
    def from_flags(cls, max_file_mb: int, max_megapixels: int, decode_memory_mb: int) -> Limits:
        """Limits from predict's flags, with a budget of their own.

        Raises:
          UserError: a value is not positive.
        """
        values = dict(
            max_file_mb=max_file_mb,
            max_megapixels=max_megapixels,
            decode_memory_mb=decode_memory_mb,
        )
        for name, value in values.items():
            if value <= 0:
                raise UserError(f"--{name}={value} must be > 0")
        return cls(
            max_file_bytes=int(max_file_mb * (1 << 20)),
            max_pixels=int(max_megapixels * 1_000_000),
            budget=DecodeBudget(int(decode_memory_mb * (1 << 20))),
        )


DEFAULT_LIMITS = Limits()


@dataclass(frozen=True)
class DecodedImage:
    """An RGB image, upright (EXIF orientation applied), with what it was before."""

    image: Image.Image
    source_format: str  # Pillow's name: JPEG, PNG, WEBP, ...
    was_transformed: bool  # orientation, mode or frame changed, so original bytes differ
    original_size: tuple[int, int] = (0, 0)  # upright (width, height) before any DCT scaling


def has_image_extension(path: str) -> bool:
    return os.path.splitext(path)[1].lower() in IMAGE_EXTENSIONS


def is_raw(path: str) -> bool:
    return os.path.splitext(path)[1].lower() in RAW_EXTENSIONS


def _looks_like_heif(data: bytes) -> bool:
    return data[4:8] == b"ftyp" and data[8:12] in HEIF_BRANDS


def decode(
    data: bytes,
    name: str = "<bytes>",
    max_side: int = 0,
    min_short_side: int = 0,
    limits: Limits = DEFAULT_LIMITS,
) -> DecodedImage:
    """Fully decodes image bytes into an upright RGB Pillow image.

    Args:
      data: the file's bytes.
      name: used in error messages only.
      max_side: if > 0, a JPEG at least twice this size is decoded at 1/2, 1/4 or
        1/8 scale (libjpeg's DCT scaling, Pillow's draft mode) while its longer
        side stays >= max_side: several times faster on camera photos, and every
        byte is still read, so truncation is still caught.
      min_short_side: if > 0, the same DCT scaling, but keeping the shorter side
        >= min_short_side (for a whole-photo resize to a square of that side).
      limits: the pixel limit and the decode memory budget. The budget is held
        while decoding; the returned image is the caller's to account for.

    Raises:
      BadImage: empty, not an image, a format lmrec does not read, truncated,
        corrupt or too large; the message says which. No other exception escapes.
    """
    return decode_then(data, _itself, name, max_side, min_short_side, limits)


_T = TypeVar("_T")


def _itself(decoded: DecodedImage) -> DecodedImage:
    return decoded


def decode_then(
    data: bytes,
    use: Callable[[DecodedImage], _T],
    name: str = "<bytes>",
    max_side: int = 0,
    min_short_side: int = 0,
    limits: Limits = DEFAULT_LIMITS,
) -> _T:
    """use(decode(data)), with the photo's share of the decode budget held until use returns.

    Everything from the first header byte to use's last resize runs under one
    handler: an image library raises many kinds of exception on hostile data
    (TypeError, struct.error, MemoryError, ...), and each becomes a BadImage that
    names it, so one bad file costs one failed row, never the run.

    Raises:
      BadImage: see decode().
    """
    if not data:
        raise BadImage("empty file (0 bytes)")
    try:
        return _decode_and_use(data, use, max_side, min_short_side, limits)
    except BadImage:
        raise
    except UnidentifiedImageError:
        raise BadImage(_unread_format(data)) from None
    except Exception as error:  # noqa: BLE001 - see the docstring.
        raise BadImage(_failure(error)) from None


def _open(
    data: bytes, max_side: int, min_short_side: int, max_pixels: int
) -> tuple[Image.Image, tuple[int, int]]:
    """Opens the header only (no pixel decoded yet), DCT scaling set; (image, full size).

    Raises:
      BadImage: empty, or more than max_pixels would be decoded.
      UnidentifiedImageError: not one of READ_FORMATS.
    """
    image = Image.open(io.BytesIO(data), formats=_OPENERS)
    full_size = image.size
    if min(full_size) < 1:  # checked before the DCT scale, which divides by it
        raise BadImage(f"empty image ({full_size[0]}x{full_size[1]})")
    if image.format in _JPEG_FORMATS:
        scale = _draft_scale(image.size, max_side, min_short_side)
        if scale <= 0.5:
            wanted = (math.ceil(image.width * scale), math.ceil(image.height * scale))
            image.draft("RGB", wanted)
    _check_pixels(image.size, max_pixels)
    return image, full_size


def _check_pixels(size: tuple[int, int], max_pixels: int) -> None:
    width, height = size
    if width * height > max_pixels:
        raise BadImage(
            f"too many pixels: {width}x{height} is {width * height / 1e6:.0f} megapixels, over "
            f"the limit of {max_pixels / 1e6:g} (--max_megapixels)"
        )


def _decode_and_use(
    data: bytes,
    use: Callable[[DecodedImage], _T],
    max_side: int,
    min_short_side: int,
    limits: Limits,
) -> _T:
    """Decodes every pixel upright in RGB, inside the budget, and returns use(decoded).

    `image` is the only reference to each step's image and is rebound at each
    step, so the step before is freed as soon as the next exists: the peak that
    _decode_cost estimates.
    """
    image, full_size = _open(data, max_side, min_short_side, limits.max_pixels)
    cost, what = _decode_cost(image, full_size)
    with limits.budget.reserve(cost + len(data), what):  # the bytes too, until use is done
        source_format = image.format or "unknown"
        image.load()  # Decodes every pixel: truncation and corruption surface here.
        scaled_by = full_size[0] / image.width  # 1, or 2/4/8 after DCT scaling
        transformed = image.mode != "RGB" or getattr(image, "n_frames", 1) > 1
        transpose = _orientation_transpose(image)
        if transpose is not None:
            image = image.transpose(transpose)
            transformed = True
        if image.mode != "RGB":
            image = _to_rgb(image)
        original = (round(image.width * scaled_by), round(image.height * scaled_by))
        decoded = DecodedImage(image, source_format, transformed, original)
        del image
        result = use(decoded)
        del decoded  # before the budget is released
    return result


# Bytes a pixel takes in Pillow's memory (RGB too is stored in 4), by mode; 4 if not listed.
_BYTES_PER_PIXEL = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16B": 2, "I;16L": 2, "I;16N": 2}
_COEFFICIENT_BYTES = 2  # libjpeg's JCOEF
_FIXED_COST = 1 << 20  # decoder state and the small images a resize makes
# Bytes per pixel a decoder holds beside Pillow's image: WebP's decoder keeps its own
# RGBA canvases; libheif (HEIF, AVIF) its YUV planes and an interleaved copy. Measured
# with ru_maxrss on 9-36 megapixel images.
_DECODER_BYTES = {"WEBP": 13, "HEIF": 6, "AVIF": 7}


def _decode_cost(image: Image.Image, full_size: tuple[int, int]) -> tuple[int, str]:
    """Estimated peak bytes of _decode_and_use on image, and what it is (for a refusal).

    The decoded pixels, plus the larger of what may follow: a transposed copy for
    an EXIF orientation (a JPEG's is known from its header, other formats' may come
    after the pixels), or the conversion to RGB (a transparent image is composited
    onto white through two more RGBA images). A progressive JPEG also keeps
    libjpeg's coefficients of the whole, unscaled image while it decodes.
    """
    width, height = image.size
    pixels = width * height
    loaded = _BYTES_PER_PIXEL.get(image.mode, 4)
    oriented = loaded
    if _orientation_in_header(image) and _orientation_transpose(image) is None:
        oriented = 0
    converted = 0
    if _has_alpha(image):
        converted = (0 if image.mode == "RGBA" else 4) + 8
    elif image.mode != "RGB":
        converted = 4
    cost = pixels * (loaded + _DECODER_BYTES.get(image.format, 0) + max(oriented, converted))
    what = f"{width}x{height} {image.mode}"
    if image.format in _JPEG_FORMATS and image.info.get("progressive"):
        cost += _jpeg_coefficient_bytes(image, full_size)
        what += " (progressive JPEG)"
    return cost + _FIXED_COST, what


def _jpeg_coefficient_bytes(image: Image.Image, full_size: tuple[int, int]) -> int:
    """libjpeg's coefficient buffer of a multi-scan JPEG: every 8x8 block of every component.

    Its size follows the file's full size and chroma subsampling (Pillow's
    image.layer: component id, horizontal and vertical factors, table), whatever
    DCT scale the pixels are decoded at.
    """
    width, height = full_size
    layers = getattr(image, "layer", None) or [("", 1, 1, 0)] * 3
    h_max = max(max(layer[1] for layer in layers), 1)
    v_max = max(max(layer[2] for layer in layers), 1)
    blocks = 0
    for _, h, v, _ in layers:
        across = math.ceil(math.ceil(width * max(h, 1) / h_max) / 8)
        down = math.ceil(math.ceil(height * max(v, 1) / v_max) / 8)
        blocks += (across + h_max) * (down + v_max)  # an MCU more: libjpeg pads to whole MCUs
    return blocks * 64 * _COEFFICIENT_BYTES


def _orientation_in_header(image: Image.Image) -> bool:
    """Whether image's EXIF orientation can be read before its pixels are decoded."""
    # A PNG's eXIf chunk may follow its pixels, and Pillow's getexif() decodes them to look.
    return image.format != "PNG" or "exif" in image.info


def _has_alpha(image: Image.Image) -> bool:
    return image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info)


def _draft_scale(size: tuple[int, int], max_side: int, min_short_side: int) -> float:
    """The DCT scale to ask for: 1 when no target is set."""
    if min_short_side > 0:
        return min_short_side / min(size)
    if max_side > 0:
        return max_side / max(size)
    return 1.0


_TRANSPOSES = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}  # EXIF orientation -> what makes the image upright (as ImageOps.exif_transpose)


def _orientation_transpose(image: Image.Image) -> Image.Transpose | None:
    """What makes image upright by its EXIF (or XMP) orientation; None: nothing to do."""
    try:
        return _TRANSPOSES.get(image.getexif().get(0x0112))
    except Exception:  # noqa: BLE001 - a broken EXIF block just means "no orientation".
        return None


def _to_rgb(image: Image.Image) -> Image.Image:
    """Flattens transparency onto white (a transparent PNG's hidden pixels are often black).

    Each intermediate is dropped as soon as the next exists: on an 80-megapixel
    PNG every RGBA copy is 320 MB.
    """
    if not _has_alpha(image):
        return image.convert("RGB")
    rgba = image if image.mode == "RGBA" else image.convert("RGBA")
    flat = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    del rgba
    return flat.convert("RGB")


def _unread_format(data: bytes) -> str:
    """Why Pillow, limited to READ_FORMATS, found no image in data."""
    if _looks_like_heif(data) and not HEIF_AVAILABLE:
        return "HEIC/HEIF photo: pip install pillow-heif to read it"
    readable = ", ".join(READ_FORMATS)
    for signature, kind in _FOREIGN_SIGNATURES:
        if data.startswith(signature):
            return f"{kind} data: not a format lmrec reads ({readable})"
    return f"not an image (unrecognised format; lmrec reads {readable})"


def _failure(error: Exception) -> str:
    """The reason shown for an exception raised while decoding."""
    text = str(error) or type(error).__name__
    if isinstance(error, MemoryError):
        return f"out of memory while decoding ({text})"
    if "truncated" in text.lower():
        return f"truncated image ({text})"
    if isinstance(error, (OSError, SyntaxError, ValueError, EOFError)):
        return f"corrupt image ({text})"
    return f"corrupt image ({type(error).__name__}: {text})"


def fit_within(image: Image.Image, max_side: int) -> Image.Image:
    """Downscales so the longer side is at most max_side (0 keeps the size)."""
    if max_side <= 0 or max(image.size) <= max_side:
        return image
    scale = max_side / max(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, Image.Resampling.BILINEAR, reducing_gap=3.0)


@dataclass(frozen=True)
class Converted:
    """A validated photo as stored in a TFRecord, and the size it had before."""

    jpeg: bytes
    height: int
    width: int
    original_height: int
    original_width: int


def convert(
    data: bytes, name: str = "<bytes>", max_side: int = 0, limits: Limits = DEFAULT_LIMITS
) -> Converted:
    """Validates image bytes and makes the JPEG a TFRecord stores.

    An upright RGB JPEG that needs no downscaling keeps its original bytes
    (no second lossy encode); everything else is re-encoded at quality 95.

    Raises:
      BadImage: see decode().
    """

    def encode(decoded: DecodedImage) -> Converted:
        image = fit_within(decoded.image, max_side)
        unchanged = not decoded.was_transformed and image is decoded.image
        if decoded.source_format == "JPEG" and unchanged:
            jpeg = data
        else:
            out = io.BytesIO()
            image.save(out, format="JPEG", quality=JPEG_QUALITY)
            jpeg = out.getvalue()
        width, height = decoded.original_size
        return Converted(jpeg, image.height, image.width, height, width)

    return decode_then(data, encode, name, max_side, limits=limits)


def to_jpeg(
    data: bytes, name: str = "<bytes>", max_side: int = 0, limits: Limits = DEFAULT_LIMITS
) -> tuple[bytes, int, int]:
    """convert() as (JPEG bytes, height, width)."""
    converted = convert(data, name, max_side, limits)
    return converted.jpeg, converted.height, converted.width


# Non-blocking, so that opening a FIFO that replaced a photo after stat() cannot wait for
# a writer; switched back to blocking once fstat has seen a regular file.
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
_OPEN_FLAGS = os.O_RDONLY | _NONBLOCK | getattr(os, "O_BINARY", 0)
_FILE_KINDS = (
    (stat.S_ISDIR, "folder"),
    (stat.S_ISFIFO, "FIFO"),
    (stat.S_ISSOCK, "socket"),
    (stat.S_ISCHR, "character device"),
    (stat.S_ISBLK, "block device"),
)


def read_file(path: str, limits: Limits = DEFAULT_LIMITS) -> bytes:
    """Reads a local regular file, or a URL-style path (gs://, s3://) through tf.io.gfile.

    The size comes from stat before anything is read, so a file over
    limits.max_file_bytes (huge, or sparse) is refused at no cost, and the read
    stops one byte past the limit should the file grow meanwhile. A FIFO, socket
    or device is refused without being read: stat says what it is, and fstat says
    it again after the non-blocking open, in case the path changed in between.

    Raises:
      BadImage: missing, not a regular file, too large or unreadable; the message says why.
    """
    try:
        if "://" in path:
            return _read_remote(path, limits.max_file_bytes)
        return _read_local(path, limits.max_file_bytes)
    except BadImage:
        raise
    except FileNotFoundError:
        raise BadImage("missing (no such file)") from None
    except OSError as error:
        raise BadImage(f"unreadable ({error.strerror or error})") from None
    except Exception as error:  # noqa: BLE001 - tf.errors.* for remote paths, and the like.
        raise BadImage(f"unreadable ({type(error).__name__}: {error})") from None


def _read_local(path: str, max_bytes: int) -> bytes:
    _check_file(os.stat(path), max_bytes)
    with open(os.open(path, _OPEN_FLAGS), "rb") as f:
        _check_file(os.fstat(f.fileno()), max_bytes)
        if _NONBLOCK:
            os.set_blocking(f.fileno(), True)
        data = f.read(max_bytes + 1)
    _check_size(len(data), max_bytes)
    return data


def _read_remote(path: str, max_bytes: int) -> bytes:
    import tensorflow as tf  # only for remote paths: local reads stay TF-free.

    _check_size(tf.io.gfile.stat(path).length, max_bytes)
    with tf.io.gfile.GFile(path, "rb") as f:
        data = f.read(max_bytes + 1)
    _check_size(len(data), max_bytes)
    return data


def _check_file(status: os.stat_result, max_bytes: int) -> None:
    if not stat.S_ISREG(status.st_mode):
        kind = next((name for test, name in _FILE_KINDS if test(status.st_mode)), "special file")
        raise BadImage(f"not a regular file ({kind})")
    _check_size(status.st_size, max_bytes)


def _check_size(nbytes: int, max_bytes: int) -> None:
    if nbytes > max_bytes:
        raise BadImage(
            f"file too large: {nbytes / (1 << 20):.0f} MB, over the limit of "
            f"{max_bytes / (1 << 20):g} MB (--max_file_mb)"
        )


def square_pixels(
    data: bytes, size: int, name: str = "<bytes>", limits: Limits = DEFAULT_LIMITS
) -> np.ndarray:
    """Decodes to an upright uint8 RGB [size, size, 3], the whole photo squeezed to a square.

    The fused decode of predict's fast path: DCT-scaled JPEG decode keeping the
    shorter side >= size, then one antialiased (bilinear) resize, like the
    training pipeline's decode_and_resize, without re-encoding a JPEG for TensorFlow.

    Raises:
      BadImage: see decode().
    """

    def squeeze(decoded: DecodedImage) -> np.ndarray:
        image = decoded.image
        if image.size != (size, size):
            image = image.resize((size, size), Image.Resampling.BILINEAR)
        return np.asarray(image, dtype=np.uint8)

    return decode_then(data, squeeze, name, min_short_side=size, limits=limits)


def load_rgb_array(
    path: str, size: int | None = None, limits: Limits = DEFAULT_LIMITS
) -> np.ndarray:
    """Reads a photo as an upright uint8 RGB array, optionally resized to size x size.

    Raises:
      BadImage: unreadable or not a valid image.
    """

    def to_array(decoded: DecodedImage) -> np.ndarray:
        image = decoded.image
        if size:
            image = image.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=3.0)
        return np.asarray(image, dtype=np.uint8)

    return decode_then(read_file(path, limits), to_array, path, limits=limits)
