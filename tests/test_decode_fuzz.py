"""Byte-mutated photos through lmrec's decoding: only BadImage may come out, and fast.

A few thousand small JPEG, PNG, GIF, WebP and BMP files, each mutated by a
seeded numpy RNG (bit flips, overwritten bytes, truncations, insertions,
deletions, repeated runs, extreme values in header fields), go through
images.square_pixels (predict's path) and images.decode (prepare's and
evaluate's). Any other exception, or a run slower than 30 s on a 2-core
machine, fails. Every other case runs with warnings turned into errors, so a
Pillow warning that becomes an exception is a BadImage too.
"""

from __future__ import annotations

import io
import time
import warnings

import numpy as np
import pytest
from PIL import Image

from lmrec.data import images

CASES = 6000
TIME_LIMIT_S = 30.0
# Values a header field is overwritten with: zero, one, the largest of each width, sign bits.
EXTREMES = (
    b"\x00", b"\x01", b"\xff", b"\x7f", b"\x80", b"\x00\x00", b"\xff\xff", b"\x7f\xff",
    b"\x00\x00\x00\x00", b"\xff\xff\xff\xff", b"\x7f\xff\xff\xff", b"\x80\x00\x00\x00",
)  # fmt: skip


def _encoded(image: Image.Image, fmt: str, **options) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **options)
    return out.getvalue()


def _seeds() -> dict[str, bytes]:
    """Small valid files of every format and flavour lmrec reads, by name."""
    rng = np.random.default_rng(7)
    pixels = rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)
    pixels[:, :24] //= 4  # some structure, so the encoders do not see pure noise
    rgb = Image.fromarray(pixels)
    rgba = rgb.copy()
    rgba.putalpha(Image.fromarray(rng.integers(0, 255, (40, 48), dtype=np.uint8)))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated: exercises the orientation path
    frames = [rgb.convert("P"), rgb.rotate(90).convert("P")]
    return {
        "jpeg": _encoded(rgb, "JPEG", quality=85, exif=exif.tobytes()),
        "jpeg progressive": _encoded(rgb.resize((64, 56)), "JPEG", progressive=True),
        "jpeg grey": _encoded(rgb.convert("L"), "JPEG"),
        "png rgba": _encoded(rgba, "PNG"),
        "png palette": _encoded(rgb.convert("P"), "PNG", transparency=0),
        "png 16-bit": _encoded(rgb.convert("I;16"), "PNG"),
        "gif": _encoded(frames[0], "GIF", save_all=True, append_images=frames[1:], loop=0),
        "webp lossy": _encoded(rgb, "WEBP", quality=60),
        "webp lossless alpha": _encoded(rgba, "WEBP", lossless=True),
        "bmp": _encoded(rgb.resize((32, 24)), "BMP"),
    }


def _mutate(data: bytes, rng: np.random.Generator) -> bytes:
    """One to three random mutations of data."""
    buffer = bytearray(data)
    for _ in range(rng.integers(1, 4)):
        kind = rng.integers(0, 7)
        position = int(rng.integers(0, max(1, len(buffer))))
        if kind == 0:  # flip a few bits
            for _ in range(rng.integers(1, 9)):
                where = int(rng.integers(0, len(buffer)))
                buffer[where] ^= 1 << int(rng.integers(0, 8))
        elif kind == 1:  # overwrite a run with random bytes
            run = rng.integers(0, 256, int(rng.integers(1, 17)), dtype=np.uint8).tobytes()
            buffer[position : position + len(run)] = run
        elif kind == 2:  # truncate
            del buffer[position:]
        elif kind == 3:  # insert random bytes
            run = rng.integers(0, 256, int(rng.integers(1, 65)), dtype=np.uint8).tobytes()
            buffer[position:position] = run
        elif kind == 4:  # delete a run
            del buffer[position : position + int(rng.integers(1, 65))]
        elif kind == 5:  # repeat a run
            run = buffer[position : position + int(rng.integers(1, 257))]
            buffer[position:position] = run
        else:  # an extreme value in the header, where sizes, counts and offsets live
            value = EXTREMES[int(rng.integers(0, len(EXTREMES)))]
            where = int(rng.integers(0, min(64, max(1, len(buffer)))))
            buffer[where : where + len(value)] = value
        if not buffer:
            break
    return bytes(buffer)


def _decode_both(data: bytes) -> str:
    """'ok' or 'bad' for each of predict's and prepare's decoding of data."""
    outcomes = []
    for decode in (lambda: images.square_pixels(data, 32), lambda: images.decode(data)):
        try:
            decode()
            outcomes.append("ok")
        except images.BadImage:
            outcomes.append("bad")
    return "/".join(outcomes)


@pytest.mark.filterwarnings("ignore")  # corrupt files make Pillow warn by the hundred
def test_mutated_files_only_ever_raise_bad_image_and_finish_in_time():
    seeds = _seeds()
    for name, data in seeds.items():
        assert _decode_both(data) == "ok/ok", name
    names = sorted(seeds)
    rng = np.random.default_rng(20240531)
    counts: dict[str, int] = {}
    started = time.perf_counter()
    for case in range(CASES):
        name = names[case % len(names)]
        data = _mutate(seeds[name], rng)
        with warnings.catch_warnings():
            warnings.simplefilter("error" if case % 2 else "ignore")
            try:
                outcome = _decode_both(data)
            except Exception as error:  # noqa: BLE001 - the failure this test looks for.
                pytest.fail(f"case {case} ({name}, {len(data)} bytes): {error!r} escaped")
        counts[outcome] = counts.get(outcome, 0) + 1
    elapsed = time.perf_counter() - started
    print(f"{CASES} mutated files in {elapsed:.1f} s: {counts}")
    assert elapsed <= TIME_LIMIT_S
    assert counts.get("bad/bad", 0) > CASES // 10 and counts.get("ok/ok", 0) > CASES // 10
    assert images.DEFAULT_LIMITS.budget.used_bytes == 0
