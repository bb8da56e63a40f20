"""The checked decode of untrusted image bytes: sizes from headers, refusals, per-image errors."""

from __future__ import annotations

import io

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from lmrec.data import pipeline

WIDTH, HEIGHT = 80, 60  # not square, so a swapped width and height would show
SIZE = 32


def _encode(image: Image.Image, fmt: str, **options) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **options)
    return out.getvalue()


def _picture(seed: int = 0, size=(WIDTH, HEIGHT)) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), np.uint8)
    return Image.fromarray(pixels)


def _formats() -> dict[str, bytes]:
    picture = _picture()
    rgba = picture.convert("RGBA")
    rgba.putalpha(128)
    bmp = bytearray(_encode(picture, "BMP"))
    height = int.from_bytes(bmp[22:26], "little", signed=True)
    bmp[22:26] = (-height).to_bytes(4, "little", signed=True)  # rows stored top-down
    return {
        "jpeg": _encode(picture, "JPEG"),
        "png": _encode(picture, "PNG"),
        "gif": _encode(picture.convert("P"), "GIF"),
        "bmp": _encode(picture, "BMP"),
        "bmp top-down": bytes(bmp),
        "webp lossy": _encode(picture, "WEBP"),
        "webp lossless": _encode(picture, "WEBP", lossless=True),
        "webp alpha (VP8X)": _encode(rgba, "WEBP"),
    }


# The famous 1x1 GIF: screen, 2-color table, image descriptor, LZW data, trailer.
TINY_GIF = (
    b"GIF89a\x01\x00\x01\x00\x80\x00\x00\xff\xff\xff\x00\x00\x00"
    b",\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;"
)


def _gif_with_a_huge_second_frame() -> bytes:
    """A 1x1 GIF (after a graphic control extension) followed by a 10000x10000 frame."""
    control = b"!\xf9\x04\x00\x00\x00\x00\x00"
    huge = b",\x00\x00\x00\x00\x10\x27\x10\x27\x00\x02\x02D\x01\x00"
    return TINY_GIF[:19] + control + TINY_GIF[19:-1] + huge + b";"


@pytest.mark.parametrize("name", list(_formats()))
def test_header_pixels_reads_every_format_without_decoding(name):
    encoded = _formats()[name]
    assert int(pipeline.header_pixels(encoded)) == WIDTH * HEIGHT
    assert pipeline.HEADER_FORMATS[int(pipeline.header_format(encoded))] == name.split()[0]


@pytest.mark.parametrize("name", [n for n in _formats() if n != "jpeg"])
def test_truncated_headers_read_as_unreadable(name):
    encoded = _formats()[name]
    needed = {"png": 24, "gif": 14, "bmp": 26}.get(name.split()[0], 30)
    for length in (0, 1, 5, 12, 16, 20, needed - 1):
        assert int(pipeline.header_pixels(encoded[:length])) == -1, length
    if name.startswith("gif"):  # a GIF needs its first frame's data to the end
        assert int(pipeline.header_pixels(encoded[: len(encoded) // 2])) == -1


def test_a_jpeg_header_libjpeg_cannot_read_raises():
    jpeg = _formats()["jpeg"]
    for length in (3, 20, 100):
        with pytest.raises(tf.errors.InvalidArgumentError):
            pipeline.header_pixels(jpeg[:length])


def test_unknown_formats_read_as_unreadable():
    jpeg_xl = b"\xff\x0a" + bytes(64)  # decode_image knows JPEG XL; the checked decode does not
    for data in (b"", b"garbage" * 10, jpeg_xl, b"RIFF\0\0\0\0WAVEfmt " + bytes(20)):
        assert int(pipeline.header_format(data)) == 0
        assert int(pipeline.header_pixels(data)) == -1


def test_header_pixels_of_big_headers_and_negative_sides():
    png = bytearray(_formats()["png"])
    png[16:24] = (100_000).to_bytes(4, "big") + (300_000).to_bytes(4, "big")
    assert int(pipeline.header_pixels(bytes(png))) == 30_000_000_000  # int64, no overflow
    bmp = bytearray(_formats()["bmp"])
    bmp[18:22] = (-5).to_bytes(4, "little", signed=True)
    assert int(pipeline.header_pixels(bytes(bmp))) == -1


def test_a_jpeg_counts_the_pixels_it_is_decoded_at():
    jpeg = _encode(_picture(size=(2001, 1000)), "JPEG")
    assert int(pipeline.header_pixels(jpeg)) == 2001 * 1000
    # 1000 >= 4 * 224: decoded at 1/4, each side rounded up as libjpeg does.
    assert int(pipeline.decoded_pixels(jpeg, 224)) == 501 * 250
    assert int(pipeline.decoded_pixels(jpeg, 400)) == 1001 * 500
    assert int(pipeline.decoded_pixels(jpeg, 600)) == 2001 * 1000
    assert pipeline.decode_checked(jpeg, 224, 501 * 250).shape == (224, 224, 3)


@pytest.mark.parametrize("name", list(_formats()))
def test_decode_checked_equals_decode_and_resize(name):
    encoded = _formats()[name]
    checked = pipeline.decode_checked(encoded, SIZE, WIDTH * HEIGHT)
    if name.startswith("webp alpha"):  # decode_and_resize cannot decode an RGBA WebP
        expected = pipeline.resize(tf.io.decode_webp(encoded)[0, :, :, :3], SIZE)
    else:
        expected = pipeline.decode_and_resize(encoded, SIZE)
    np.testing.assert_array_equal(checked.numpy(), expected.numpy())


def test_decode_checked_refuses_over_the_cap_before_decoding():
    png = _formats()["png"]
    assert pipeline.decode_checked(png, SIZE, WIDTH * HEIGHT).shape == (SIZE, SIZE, 3)
    with pytest.raises(tf.errors.InvalidArgumentError, match="Refused before decoding"):
        pipeline.decode_checked(png, SIZE, WIDTH * HEIGHT - 1)
    bomb = _encode(Image.new("1", (10000, 10000)), "PNG")
    with pytest.raises(tf.errors.InvalidArgumentError, match="Refused before decoding"):
        pipeline.decode_checked(bomb, SIZE, 40_000_000)


def test_a_gif_is_decoded_from_its_first_frame_only():
    first, second = _picture(1), _picture(2)
    animated = _encode(first.convert("P"), "GIF", save_all=True, append_images=[second])
    np.testing.assert_array_equal(
        pipeline.decode_checked(animated, SIZE, WIDTH * HEIGHT).numpy(),
        pipeline.decode_and_resize(_encode(first.convert("P"), "GIF"), SIZE).numpy(),
    )
    huge_later = _gif_with_a_huge_second_frame()
    assert int(pipeline.header_pixels(huge_later)) == 1
    image = pipeline.decode_checked(huge_later, SIZE, 1)
    np.testing.assert_allclose(image.numpy(), np.full((SIZE, SIZE, 3), 255.0), atol=1e-3)


def test_an_animated_webp_is_refused_unread():
    frames = [_picture(1), _picture(2)]
    animated = _encode(frames[0], "WEBP", save_all=True, append_images=frames[1:])
    assert int(pipeline.header_format(animated)) == pipeline.HEADER_FORMATS.index("webp")
    assert int(pipeline.header_pixels(animated)) == -1
    with pytest.raises(tf.errors.InvalidArgumentError, match="Refused before decoding"):
        pipeline.decode_checked(animated, SIZE, 10**9)


def _batch_cases() -> tuple[list[bytes], list[bool]]:
    formats = _formats()
    corrupt = bytearray(_encode(_picture(3, (200, 150)), "JPEG"))
    corrupt[200:] = bytes(len(corrupt) - 200)  # header kept, scan data zeroed: decode fails
    bomb = _encode(Image.new("1", (10000, 10000)), "PNG")
    images = [formats["jpeg"], b"garbage", bomb, bytes(corrupt), formats["png"], b""]
    return images, [True, False, False, False, True, False]


@pytest.mark.parametrize("in_function", [False, True])
def test_decode_batch_checked_answers_each_image_on_its_own(in_function):
    images, ok = _batch_cases()

    def decode(batch):
        return pipeline.decode_batch_checked(batch, SIZE, 40_000_000)

    if in_function:
        decode = tf.function(decode, input_signature=[tf.TensorSpec([None], tf.string)])
    blank = np.zeros((SIZE, SIZE, 3), np.float32)
    for count in range(len(images) + 1):
        pixels, answered = decode(tf.constant(images[:count], tf.string))
        assert answered.numpy().tolist() == ok[:count]
        assert pixels.shape == (count, SIZE, SIZE, 3)
        for i in range(count):
            expected = pipeline.decode_and_resize(images[i], SIZE).numpy() if ok[i] else blank
            np.testing.assert_array_equal(pixels[i].numpy(), expected)
    pixels, answered = decode(tf.constant([b"x", images[2], images[3]]))
    assert not answered.numpy().any() and not pixels.numpy().any()
