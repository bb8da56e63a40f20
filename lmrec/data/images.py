"""Decoding and validating photos with Pillow, before they reach TensorFlow.

prepare and predict both need to know, per file, whether it is a readable image
and if not why, without one bad file stopping thousands of good ones. Pillow
gives that (and EXIF orientation, and every common format) in plain Python,
which also runs in worker processes that never import TensorFlow.
"""

from __future__ import annotations

import io
import math
import os
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

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


class BadImage(Exception):
    """A file that is not a usable image; str() is the reason shown to the user."""


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
    data: bytes, name: str = "<bytes>", max_side: int = 0, min_short_side: int = 0
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

    Raises:
      BadImage: empty, not an image, truncated, corrupt or absurdly large; the
        message says which.
    """
    if not data:
        raise BadImage("empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            source_format = image.format or "unknown"
            full_width = image.width
            if source_format == "JPEG":
                scale = _draft_scale(image.size, max_side, min_short_side)
                if scale <= 0.5:
                    wanted = (math.ceil(image.width * scale), math.ceil(image.height * scale))
                    image.draft("RGB", wanted)
            image.load()  # Decodes every pixel: truncation and corruption surface here.
            scaled_by = full_width / max(1, image.width)  # 1, or 2/4/8 after DCT scaling
    except UnidentifiedImageError:
        if _looks_like_heif(data) and not HEIF_AVAILABLE:
            raise BadImage("HEIC/HEIF photo: pip install pillow-heif to read it") from None
        raise BadImage("not an image (unrecognised format)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise BadImage(f"too many pixels ({error})") from None
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        text = str(error) or type(error).__name__
        if "truncated" in text.lower():
            raise BadImage(f"truncated image ({text})") from None
        raise BadImage(f"corrupt image ({text})") from None
    transformed = False
    oriented = ImageOps.exif_transpose(image)
    if oriented is not image:
        transformed = oriented.size != image.size or _orientation(image) not in (None, 1)
        image = oriented
    if image.mode != "RGB":
        image = _to_rgb(image)
        transformed = True
    if getattr(image, "n_frames", 1) > 1:
        transformed = True
    if image.width < 1 or image.height < 1:
        raise BadImage(f"empty image ({image.width}x{image.height})")
    original = (round(image.width * scaled_by), round(image.height * scaled_by))
    return DecodedImage(
        image=image,
        source_format=source_format,
        was_transformed=transformed,
        original_size=original,
    )


def _draft_scale(size: tuple[int, int], max_side: int, min_short_side: int) -> float:
    """The DCT scale to ask for: 1 when no target is set."""
    if min_short_side > 0:
        return min_short_side / min(size)
    if max_side > 0:
        return max_side / max(size)
    return 1.0


def _orientation(image: Image.Image):
    try:
        return image.getexif().get(0x0112)
    except Exception:  # noqa: BLE001 - a broken EXIF block just means "no orientation".
        return None


def _to_rgb(image: Image.Image) -> Image.Image:
    """Flattens transparency onto white (a transparent PNG's hidden pixels are often black)."""
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


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


def convert(data: bytes, name: str = "<bytes>", max_side: int = 0) -> Converted:
    """Validates image bytes and makes the JPEG a TFRecord stores.

    An upright RGB JPEG that needs no downscaling keeps its original bytes
    (no second lossy encode); everything else is re-encoded at quality 95.

    Raises:
      BadImage: see decode().
    """
    decoded = decode(data, name, max_side)
    image = fit_within(decoded.image, max_side)
    if decoded.source_format == "JPEG" and not decoded.was_transformed and image is decoded.image:
        jpeg = data
    else:
        out = io.BytesIO()
        image.save(out, format="JPEG", quality=JPEG_QUALITY)
        jpeg = out.getvalue()
    width, height = decoded.original_size
    return Converted(jpeg, image.height, image.width, height, width)


def to_jpeg(data: bytes, name: str = "<bytes>", max_side: int = 0) -> tuple[bytes, int, int]:
    """convert() as (JPEG bytes, height, width)."""
    converted = convert(data, name, max_side)
    return converted.jpeg, converted.height, converted.width


def read_file(path: str) -> bytes:
    """Reads a local file, or a URL-style path (gs://, s3://) through tf.io.gfile.

    Raises:
      BadImage: the file is missing or unreadable; the message says why.
    """
    try:
        if "://" in path:
            import tensorflow as tf  # only for remote paths: local reads stay TF-free.

            with tf.io.gfile.GFile(path, "rb") as f:
                return f.read()
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise BadImage("missing (no such file)") from None
    except OSError as error:
        raise BadImage(f"unreadable ({error.strerror or error})") from None
    except Exception as error:  # noqa: BLE001 - tf.errors.* for remote paths.
        raise BadImage(f"unreadable ({type(error).__name__}: {error})") from None


def square_pixels(data: bytes, size: int, name: str = "<bytes>") -> np.ndarray:
    """Decodes to an upright uint8 RGB [size, size, 3], the whole photo squeezed to a square.

    The fused decode of predict's fast path: DCT-scaled JPEG decode keeping the
    shorter side >= size, then one antialiased (bilinear) resize, like the
    training pipeline's decode_and_resize, without re-encoding a JPEG for TensorFlow.

    Raises:
      BadImage: see decode().
    """
    image = decode(data, name, min_short_side=size).image
    if image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(image, dtype=np.uint8)


def load_rgb_array(path: str, size: int | None = None) -> np.ndarray:
    """Reads a photo as an upright uint8 RGB array, optionally resized to size x size.

    Raises:
      BadImage: unreadable or not a valid image.
    """
    image = decode(read_file(path), path).image
    if size:
        image = image.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=3.0)
    return np.asarray(image, dtype=np.uint8)
