"""TFRecords -> tf.data: parse -> decode (train: random resized crop + flip) -> resize ->
batch -> (batch augmentation) -> the backbone's own preprocessing -> prefetch.

Image size and normalization come from the backbone's spec; nothing here
hard-codes either. decode_and_resize() is shared with lmrec.export so the
served model sees exactly what evaluation saw: its serving_default decodes with
decode_batch_checked(), which gives the same pixels but reads each image's size
from its header first (refusing unknown formats and pixel bombs undecoded) and
marks an image that fails instead of failing the batch.

Speed (benchmarks/input_pipeline.py measures it against a bare decode + resize
of the same files): parse, decode, crop and resize are one map with AUTOTUNE
parallelism, in any order when training; training decodes only its crop
(decode_and_crop_jpeg); and a JPEG at least twice the model input on both sides
is decoded at 1/2 or 1/4 scale by libjpeg's scaled IDCT (DCT downscaling), which
skips most of the decoding and shrinks the resize; the result still is at least
the model input, so the antialiased resize only ever shrinks it, and the pixels
stay within about a level of 255 of a full decode's (tests/test_pipeline.py
bounds the difference). The 1/8 scale keeps only each 8x8 block's mean, which
moves the pixels further than the choice of resize filter does, so it is not used.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import numpy as np
import tensorflow as tf

from lmrec.data import augment, images, records
from lmrec.errors import UserError
from lmrec.registry import Registry

AUTOTUNE = tf.data.AUTOTUNE
# Scales at which JPEGs are decoded (libjpeg's scaled IDCT; 1/8 is left out, see above).
DCT_SCALES = (1, 2, 4)

# --balance: how training copes with long-tailed classes. Evaluation never balances.
BALANCE: Registry[str] = Registry(
    "balance",
    {
        "none": "records as they come",
        "class_weights": "the loss weighted by inverse class frequency (class_weights)",
        "resample": "classes drawn uniformly while reading (resample_balanced)",
    },
)


def check_balance(name: str) -> None:
    """Raises UserError for an unknown --balance."""
    BALANCE.get(name)


def decode_and_resize(encoded: tf.Tensor, image_size: int) -> tf.Tensor:
    """Decodes one encoded image (JPEG/PNG/GIF/BMP/WebP) to float32 [size, size, 3] in [0, 255].

    The whole photo is resized (no crop), with antialiasing so large photos do
    not alias; export and evaluation both use this function. A JPEG at least
    twice image_size on both sides is decoded DCT-downscaled (see the module doc);
    the export's serving_images signature gets pixels, already decoded in full,
    and only resizes them.
    """

    def jpeg():
        shape = tf.io.extract_jpeg_shape(encoded)
        return _decode_jpeg_scaled(encoded, None, tf.reduce_min(shape[:2]), image_size)

    def other():
        image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
        return resize(image, image_size)

    image = tf.cond(tf.io.is_jpeg(encoded), jpeg, other)
    return tf.ensure_shape(image, [image_size, image_size, 3])


def resize(image: tf.Tensor, image_size: int) -> tf.Tensor:
    """Resizes uint8 or float images (one or a batch) to image_size, float32 in [0, 255]."""
    image = tf.image.resize(image, [image_size, image_size], method="bilinear", antialias=True)
    return tf.clip_by_value(image, 0.0, 255.0)


def _dct_scale_index(short_side: tf.Tensor, image_size: int) -> tf.Tensor:
    """The index in DCT_SCALES of the coarsest scale that keeps short_side >= image_size."""
    scales = tf.constant(DCT_SCALES[1:], short_side.dtype)
    return tf.reduce_sum(tf.cast(short_side >= image_size * scales, tf.int32))


def _decode_jpeg_scaled(
    encoded: tf.Tensor, window: tf.Tensor | None, short_side: tf.Tensor, image_size: int
) -> tf.Tensor:
    """Decodes a JPEG (or a window [y, x, h, w] of it) at the coarsest DCT scale that keeps
    short_side (the shorter side of what is decoded) >= image_size, then resizes to a square.

    The scale is an attribute of the decode op, so each one is a branch of a switch_case.
    """
    scale_index = _dct_scale_index(short_side, image_size)

    def branch(scale: int):
        def decode():
            if window is None:
                image = tf.io.decode_jpeg(encoded, channels=3, ratio=scale)
            else:
                # A scaled decode takes its crop window in scaled pixels.
                image = tf.io.decode_and_crop_jpeg(
                    encoded, window // scale, channels=3, ratio=scale
                )
            return resize(image, image_size)

        return decode

    return tf.switch_case(scale_index, [branch(scale) for scale in DCT_SCALES])


# Formats decode_checked accepts; header_format returns an index into this (0: unknown).
HEADER_FORMATS = ("unknown", "jpeg", "png", "gif", "bmp", "webp")
_HEAD_BYTES = 32  # every size field read from the first bytes lies within them
# Full GIF sub-blocks (a 255 length byte and 255 bytes of data) skipped per loop step:
# encoders write image data as runs of them, so the walk takes few steps per frame.
_GIF_RUN = 64


def _head(encoded: tf.Tensor) -> tf.Tensor:
    """The first 32 bytes as int64 [32], zero-padded: reading past a short file gives 0."""
    head = tf.strings.substr(encoded, 0, _HEAD_BYTES) + b"\0" * _HEAD_BYTES
    return tf.cast(tf.io.decode_raw(tf.strings.substr(head, 0, _HEAD_BYTES), tf.uint8), tf.int64)


def _little_endian(head: tf.Tensor, start: int, count: int) -> tf.Tensor:
    weights = tf.constant([256**i for i in range(count)], tf.int64)
    return tf.reduce_sum(head[start : start + count] * weights)


def _big_endian(head: tf.Tensor, start: int, count: int) -> tf.Tensor:
    weights = tf.constant([256**i for i in reversed(range(count))], tf.int64)
    return tf.reduce_sum(head[start : start + count] * weights)


def _has(data: tf.Tensor, start: int, magic: bytes) -> tf.Tensor:
    return tf.reduce_all(tf.equal(data[start : start + len(magic)], list(magic)))


def header_format(encoded: tf.Tensor) -> tf.Tensor:
    """The index in HEADER_FORMATS of an encoded image's format, from its magic bytes."""
    return _format(_head(encoded))


def _format(head: tf.Tensor) -> tf.Tensor:
    found = tf.stack(
        [
            _has(head, 0, b"\xff\xd8\xff"),
            _has(head, 0, b"\x89PNG\r\n\x1a\n"),
            _has(head, 0, b"GIF87a") | _has(head, 0, b"GIF89a"),
            _has(head, 0, b"BM"),
            _has(head, 0, b"RIFF") & _has(head, 8, b"WEBP"),
        ]
    )
    index = tf.argmax(tf.cast(found, tf.int32), output_type=tf.int32) + 1
    return tf.where(tf.reduce_any(found), index, 0)


def _area(width: tf.Tensor, height: tf.Tensor, readable: tf.Tensor) -> tf.Tensor:
    """width * height, or -1 when the header was not readable or a side is not positive."""
    readable = readable & (width > 0) & (height > 0)
    return tf.where(readable, width * height, tf.constant(-1, tf.int64))


def _png_pixels(head: tf.Tensor, length: tf.Tensor) -> tf.Tensor:
    """IHDR, the first chunk: width and height as big-endian uint32 at bytes 16 and 20."""
    readable = (length >= 24) & _has(head, 12, b"IHDR")
    return _area(_big_endian(head, 16, 4), _big_endian(head, 20, 4), readable)


def _bmp_pixels(head: tf.Tensor, length: tf.Tensor) -> tf.Tensor:
    """Little-endian int32 width and height at 18 and 22 (a negative height: rows top-down),
    read as TF's BMP decoder reads them."""

    def int32(value):
        return tf.where(value >= 2**31, value - 2**32, value)

    width, height = int32(_little_endian(head, 18, 4)), int32(_little_endian(head, 22, 4))
    return _area(width, tf.abs(height), length >= 26)


def _low_bits(value: tf.Tensor) -> tf.Tensor:
    """The low 14 bits: a WebP side (VP8: above them the upscaling hint)."""
    return value % 2**14


def _webp_pixels(head: tf.Tensor, length: tf.Tensor) -> tf.Tensor:
    """The canvas of the first chunk: VP8 (lossy: 14-bit sides after the start code),
    VP8L (lossless: 14-bit sides minus one after the signature) or VP8X (extended: 24-bit
    canvas sides minus one); -1 for an animation."""
    lossy = _has(head, 12, b"VP8 ") & _has(head, 23, b"\x9d\x01\x2a")
    lossless = _has(head, 12, b"VP8L") & _has(head, 20, b"\x2f")
    # VP8X flag 0x02: an animation. TF 2.21's decoder of WebP animations corrupts the heap
    # (decode_image and decode_webp alike), so an animated WebP is not read at all.
    extended = _has(head, 12, b"VP8X") & tf.equal(head[20] // 2 % 2, 0)
    bits = _little_endian(head, 21, 4)
    width = tf.where(
        lossy,
        _low_bits(_little_endian(head, 26, 2)),
        tf.where(lossless, _low_bits(bits) + 1, _little_endian(head, 24, 3) + 1),
    )
    height = tf.where(
        lossy,
        _low_bits(_little_endian(head, 28, 2)),
        tf.where(lossless, _low_bits(bits // 2**14) + 1, _little_endian(head, 27, 3) + 1),
    )
    readable = (length >= 30) & (lossy | lossless | extended)
    return _area(width, height, readable)


def _gif_first_frame(encoded: tf.Tensor, head: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """(pixels, end) of a GIF: pixels is the larger of the logical screen and the first
    frame, end the offset just past the first frame's image data; both -1 if unreadable.

    TF's GIF decoder reads every frame into memory (also when it returns only the first),
    so the checked decode cuts the file at end. Blocks are walked from the header: an
    extension (0x21, label, sub-blocks) or the image descriptor (0x2C, 9 bytes, optional
    local color table, LZW code size, sub-blocks); sub-blocks are a length byte and that
    many bytes, ended by a zero length.
    """
    # Bytes stay uint8 (a copy of the file plus one zero); only what is read becomes int64.
    data = tf.concat([tf.io.decode_raw(encoded, tf.uint8), tf.zeros([1], tf.uint8)], 0)
    size = tf.cast(tf.strings.length(encoded), tf.int64)

    def byte(offset):  # 0 past the end (the padding), so no read ever fails
        value = tf.gather(data, tf.minimum(tf.cast(offset, tf.int64), size))
        return tf.cast(value, tf.int64)

    def color_table(packed):  # bit 7: present; bits 0-2: 2^(n+1) RGB entries
        entries = tf.bitwise.left_shift(tf.constant(2, tf.int64), packed % 8)
        return tf.where(packed >= 0x80, 3 * entries, tf.zeros_like(entries))

    at_blocks, in_extension, in_image, done, failed = (tf.constant(i, tf.int64) for i in range(5))
    screen = _little_endian(head, 6, 2) * _little_endian(head, 8, 2)
    start = 13 + color_table(byte(10))
    runs = tf.range(_GIF_RUN, dtype=tf.int64) * 256

    def step(offset, state, frame):
        value = byte(offset)
        # At a block: enter its sub-blocks, remembering the first frame's size.
        is_extension, is_image = tf.equal(value, 0x21), tf.equal(value, 0x2C)
        frame_here = (byte(offset + 5) + byte(offset + 6) * 256) * (
            byte(offset + 7) + byte(offset + 8) * 256
        )
        image_data = offset + 11 + color_table(byte(offset + 9))
        block = (
            tf.where(is_extension, offset + 2, tf.where(is_image, image_data, offset)),
            tf.where(is_extension, in_extension, tf.where(is_image, in_image, failed)),
            tf.where(is_image, frame_here, frame),
        )
        # In sub-blocks: skip a run of full ones, else one; a zero length ends them.
        full = tf.cast(tf.equal(tf.gather(data, tf.minimum(offset + runs, size)), 255), tf.int64)
        run = tf.reduce_sum(tf.math.cumprod(full))
        ended = tf.equal(value, 0)
        sub_block = (
            tf.where(run > 0, offset + 256 * run, offset + value + 1),
            tf.where(ended, tf.where(tf.equal(state, in_image), done, at_blocks), state),
            frame,
        )
        at_block = tf.equal(state, at_blocks)
        return tuple(tf.where(at_block, a, b) for a, b in zip(block, sub_block, strict=True))

    offset, state, frame = tf.while_loop(
        lambda offset, state, _: (state < done) & (offset < size),
        step,
        (start, at_blocks, tf.constant(0, tf.int64)),
    )
    readable = tf.equal(state, done) & (offset <= size) & (size >= 13) & (frame > 0)
    none = tf.constant(-1, tf.int64)
    return tf.where(readable, tf.maximum(screen, frame), none), tf.where(readable, offset, none)


def header_pixels(encoded: tf.Tensor) -> tf.Tensor:
    """width * height of an encoded image from its header alone (int64), without decoding.

    -1 for an unknown format or a header that cannot be read (too short, wrong chunk). A
    JPEG's header is read by libjpeg (extract_jpeg_shape), which raises InvalidArgumentError
    when it cannot; decode_checked runs where that error is caught.
    """
    return _pixels(encoded, None)


def decoded_pixels(encoded: tf.Tensor, image_size: int) -> tf.Tensor:
    """The pixels decode_checked decodes: header_pixels, but a JPEG's sides divided (rounded
    up) by the DCT scale it is decoded at for image_size. What max_pixels caps."""
    return _pixels(encoded, image_size)


def _pixels(encoded: tf.Tensor, image_size: int | None) -> tf.Tensor:
    head, length = _head(encoded), tf.strings.length(encoded)

    def jpeg():
        shape = tf.io.extract_jpeg_shape(encoded, output_type=tf.int64)
        return shape[0] * shape[1] if image_size is None else _jpeg_pixels(shape, image_size)

    branches = [
        lambda: tf.constant(-1, tf.int64),
        jpeg,
        lambda: _png_pixels(head, length),
        lambda: _gif_first_frame(encoded, head)[0],
        lambda: _bmp_pixels(head, length),
        lambda: _webp_pixels(head, length),
    ]
    return tf.switch_case(_format(head), branches)


def _jpeg_pixels(shape: tf.Tensor, image_size: int) -> tf.Tensor:
    """Pixels of a JPEG of shape [height, width, ...] decoded at its DCT scale for image_size."""
    shape = tf.cast(shape[:2], tf.int64)
    index = _dct_scale_index(tf.reduce_min(shape), image_size)
    scale = tf.gather(tf.constant(DCT_SCALES, tf.int64), index)
    sides = (shape + scale - 1) // scale  # libjpeg rounds a scaled side up
    return sides[0] * sides[1]


def decode_checked(encoded: tf.Tensor, image_size: int, max_pixels: int) -> tf.Tensor:
    """decode_and_resize for untrusted bytes: the header is checked before any decoding.

    Raises (when run) InvalidArgumentError for a format outside HEADER_FORMATS, a header
    that cannot be read, decoded_pixels over max_pixels, or data that fails to decode; a
    GIF is cut after its first frame, so later frames are never read, and an animated
    WebP is refused. Run it where errors are caught per image (decode_batch_checked).
    One switch on the format, each branch checking then decoding, keeps the ops run per
    image few (a batch of small photos pays for them as much as for the decoding).
    """
    head, length = _head(encoded), tf.strings.length(encoded)

    def checked(pixels):
        check = tf.debugging.Assert(
            (pixels > 0) & (pixels <= max_pixels),
            ["Refused before decoding (unknown format, unreadable header or too many pixels)"],
        )
        # The decode reads the bytes through this identity, so it cannot start before the check.
        with tf.control_dependencies([check]):
            return tf.identity(encoded)

    def decode(data, channels=3):
        image = tf.io.decode_image(data, channels=channels, expand_animations=False)
        return resize(image[:, :, :3], image_size)

    def jpeg():  # as decode_and_resize decodes a JPEG
        shape = tf.io.extract_jpeg_shape(encoded)
        data = checked(_jpeg_pixels(shape, image_size))
        return _decode_jpeg_scaled(data, None, tf.reduce_min(shape[:2]), image_size)

    def gif():  # cut after the first frame and closed with the trailer byte (0x3B)
        pixels, end = _gif_first_frame(encoded, head)
        first = tf.strings.substr(checked(pixels), tf.constant(0, tf.int64), end) + b"\x3b"
        return decode(first)

    branches = [
        lambda: decode(checked(tf.constant(-1, tf.int64))),  # unknown: the check fails
        jpeg,
        lambda: decode(checked(_png_pixels(head, length))),
        gif,
        lambda: decode(checked(_bmp_pixels(head, length))),
        # TF decodes a WebP only to its own channels: RGBA (alpha) or RGB.
        lambda: decode(checked(_webp_pixels(head, length)), channels=0),
    ]
    image = tf.switch_case(_format(head), branches)
    return tf.ensure_shape(image, [image_size, image_size, 3])


def decode_batch_checked(
    image_bytes: tf.Tensor, image_size: int, max_pixels: int
) -> tuple[tf.Tensor, tf.Tensor]:
    """Decodes each encoded image on its own: (float32 [n, size, size, 3], ok bool [n]).

    An image that decode_checked refuses or fails on gets ok false and zero pixels, and the
    others are decoded as decode_and_resize decodes them. Graph ops cannot catch an error,
    a tf.data pipeline can: each image is one element, failed elements are dropped
    (ignore_errors) and the rest are scattered back to their index.
    """
    count = tf.shape(image_bytes, out_type=tf.int64)[0]
    decoded = (
        tf.data.Dataset.from_tensor_slices((tf.range(count), image_bytes))
        .map(
            lambda index, encoded: (index, decode_checked(encoded, image_size, max_pixels)),
            num_parallel_calls=AUTOTUNE,
            deterministic=False,
        )
        .ignore_errors()
    )
    # A placeholder first, so the one batch exists even when every image failed.
    placeholder = tf.data.Dataset.from_tensors(
        (tf.constant(-1, tf.int64), tf.zeros([image_size, image_size, 3], tf.float32))
    )
    indices, images = placeholder.concatenate(decoded).batch(count + 1).get_single_element()
    where = indices[1:, None]
    ok = tf.scatter_nd(where, tf.ones_like(where[:, 0], tf.int32), [count]) > 0
    images = tf.scatter_nd(where, images[1:], tf.stack([count, image_size, image_size, 3]))
    return images, ok


def random_crop_and_resize(
    encoded: tf.Tensor, image_size: int, policy: augment.AugmentPolicy, seed: int | None
) -> tf.Tensor:
    """Decodes only a random crop of a JPEG (Inception-style area/aspect jitter), then resizes.

    A crop at least twice image_size on both sides is decoded DCT-downscaled.
    """
    shape = tf.io.extract_jpeg_shape(encoded)
    begin, size, _ = tf.image.sample_distorted_bounding_box(
        shape,
        bounding_boxes=tf.constant([0.0, 0.0, 1.0, 1.0], shape=[1, 1, 4]),
        min_object_covered=0.0,
        aspect_ratio_range=policy.crop_aspect,
        area_range=policy.crop_area,
        max_attempts=10,
        use_image_if_no_bounding_boxes=True,
        seed=seed or 0,
    )
    offset_y, offset_x, _ = tf.unstack(begin)
    height, width, _ = tf.unstack(size)
    window = tf.stack([offset_y, offset_x, height, width])
    image = _decode_jpeg_scaled(encoded, window, tf.minimum(height, width), image_size)
    return tf.ensure_shape(image, [image_size, image_size, 3])


def class_weights(class_counts: Sequence[int]) -> np.ndarray:
    """Inverse-frequency loss weights per class, normalized to a mean of 1 over the classes.

    A class with half the images gets twice the weight; on a balanced dataset
    every weight is 1, so the weighted loss is the loss a class-balanced
    dataset would give. Classes without training images get weight 0 (they
    never occur; the mean is over the classes that do).

    Raises:
      UserError: no class has a training image.
    """
    counts = np.asarray(class_counts, dtype=np.float64)
    present = counts > 0
    if not present.any():
        raise UserError("--balance=class_weights: no class has training images")
    weights = np.zeros_like(counts)
    weights[present] = 1.0 / counts[present]
    weights[present] /= weights[present].mean()
    return weights.astype(np.float32)


def with_class_weights(dataset: tf.data.Dataset, weights: Sequence[float]) -> tf.data.Dataset:
    """(images, labels) -> (images, labels, sample weights) for Keras' fit.

    Labels may be sparse class ids or one-hot / mixed (MixUp, CutMix) rows; a
    mixed row gets the label-weighted mean of its classes' weights, so a photo
    that is 30% of a rare class counts 30% as that class. (Keras'
    fit(class_weight=...) would take the argmax of a mixed row instead.)
    """
    table = tf.constant(weights, tf.float32)

    def add(images, labels):
        if labels.shape.rank == 1:
            sample_weights = tf.gather(table, labels)
        else:
            sample_weights = tf.linalg.matvec(tf.cast(labels, tf.float32), table)
        return images, labels, sample_weights

    return dataset.map(add, num_parallel_calls=AUTOTUNE)


def _label_only(serialized: tf.Tensor) -> tf.Tensor:
    spec = {records.LABEL: records.feature_spec()[records.LABEL]}
    return tf.cast(tf.io.parse_single_example(serialized, spec)[records.LABEL], tf.int32)


def resample_probabilities(class_counts: Sequence[int]) -> np.ndarray:
    """The chance that --balance=resample keeps a record of each class (index = label).

    Proportional to 1 / the class's share, scaled so the rarest class is always
    kept; classes without images never occur (0). Shared by the record stream
    (resample_balanced) and phase 1 on cached features (lmrec.feature_cache).

    Raises:
      UserError: no class has training images.
    """
    counts = np.asarray(class_counts, dtype=np.float64)
    if counts.sum() <= 0:
        raise UserError("--balance=resample: no class has training images")
    share = counts / counts.sum()
    keep = np.zeros_like(share)
    present = counts > 0
    keep[present] = 1.0 / share[present]
    return (keep / keep.max()).astype(np.float32)


def resample_balanced(
    dataset: tf.data.Dataset, class_counts: Sequence[int], seed: int | None
) -> tf.data.Dataset:
    """A stream of serialized Examples -> a stream whose classes are drawn uniformly.

    Rejection sampling with the known class frequencies (from stats.json): each
    record's label is parsed (not its image), and the record is kept with
    probability (1/num_classes) / share of its class, scaled so the rarest class
    is always kept. It streams: memory is one class-sized vector, so it scales
    to thousands of classes, and rejected records are dropped before any
    decoding. The price is reading: in expectation each balanced record costs
    1 / (num_classes * the rarest class's share) records read (1 for balanced
    classes; 20 for 1,000 classes whose rarest has 5 of 100,000 images). Rare
    images repeat within an epoch, which is what balancing means.

    Per-class datasets merged with sample_from_datasets would need one filtered
    pass over all shards (an open iterator and a shuffle buffer) per class.
    tf.data's rejection_resample is this same sampler (mixing in part of the
    untouched stream saves no reads in expectation), but it logs its acceptance
    table (up to 100 numbers, 10 times per iterator) whenever it rejects over
    half the records, which a long tail always does.

    Args:
      dataset: serialized Examples, shuffled and repeated.
      class_counts: training images per class (index = label).
      seed: makes the sampling repeatable.
    """
    table = tf.constant(resample_probabilities(class_counts), tf.float32)
    # A seeded stream of uniform [0, 1) numbers, one per record.
    coins = tf.data.Dataset.random(seed=seed).map(
        lambda r: tf.cast(r % (1 << 24), tf.float32) / float(1 << 24)
    )
    dataset = tf.data.Dataset.zip((dataset, coins))
    dataset = dataset.filter(
        lambda serialized, coin: coin < tf.gather(table, _label_only(serialized))
    )
    return dataset.map(lambda serialized, coin: serialized)


def photo_dataset(
    items: list[tuple[str, str, int]], image_size: int, batch_size: int, max_side: int, skipped
) -> tf.data.Dataset:
    """(pixels in [0, 255], label, id) batches of photo files, as the model sees them.

    Each photo is read, turned upright (EXIF) and re-encoded by images.to_jpeg,
    then decoded and resized whole by decode_and_resize, as the export does.

    Args:
      items: (id, path, label) per photo.
      image_size: the model's input side.
      batch_size: photos per batch.
      max_side: --max_image_side for the re-encoding (0: none).
      skipped: a list that gets {"file": id, "reason"} for each unreadable photo.
    """

    def generate() -> Iterator[tuple[bytes, int, str]]:
        for relative, path, label in items:
            try:
                encoded, _, _ = images.to_jpeg(images.read_file(path), path, max_side)
            except images.BadImage as error:
                skipped.append({"file": relative, "reason": str(error)})
                continue
            yield encoded, label, relative

    signature = (
        tf.TensorSpec([], tf.string),
        tf.TensorSpec([], tf.int32),
        tf.TensorSpec([], tf.string),
    )
    return (
        tf.data.Dataset.from_generator(generate, output_signature=signature)
        .map(
            lambda b, y, i: (decode_and_resize(b, image_size), y, i),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
        .batch(batch_size)
        .prefetch(tf.data.AUTOTUNE)
    )


def run_dataset(config, split: str, preprocess, **options) -> tf.data.Dataset:
    """make_dataset over a training run's split, as lmrec.train feeds it.

    The one place that turns an ExperimentConfig into a pipeline: its data_dir's
    `split` shards ("train" or "val") at its image size, batch size and seed, with
    the backbone's `preprocess`; the train split also with its augmentation and
    shuffle buffer (training=True). `options` go to make_dataset as they are
    (num_examples, balance, passes, ...), so the feature cache and the training
    loop read the same images the same way.
    """
    training = split == "train"
    kwargs = dict(
        image_size=config.data.image_size,
        preprocess=preprocess,
        batch_size=config.data.batch_size,
        seed=config.data.seed,
        training=training,
    )
    if training:
        kwargs.update(augment_policy=config.data.augment, shuffle_buffer=config.data.shuffle_buffer)
    kwargs.update(options)
    return make_dataset(records.shard_pattern(config.data.data_dir, split), **kwargs)


def make_dataset(
    file_pattern: str,
    image_size: int,
    preprocess: Callable[[tf.Tensor], tf.Tensor],
    batch_size: int,
    training: bool,
    augment_policy: str = "light",
    shuffle_buffer: int = 2048,
    seed: int | None = None,
    with_ids: bool = False,
    num_examples: int | None = None,
    balance: str = "none",
    class_counts: Sequence[int] | None = None,
    passes: int = 0,
    deterministic: bool | None = None,
) -> tf.data.Dataset:
    """Builds the input pipeline over TFRecord shards.

    Args:
      file_pattern: glob of shards, e.g. tf_records/demo/train-*.tfrecord.
      image_size: side of the square model input (from the backbone spec).
      preprocess: the backbone's normalization, applied per batch.
      batch_size: global batch size; a training batch is always full.
      training: shuffle, repeat forever and augment; otherwise one ordered pass.
      augment_policy: name in lmrec.data.augment.AUGMENTATIONS (training only).
      shuffle_buffer: examples held for shuffling (training only).
      seed: makes shuffling and augmentation repeatable.
      with_ids: also yield each image's id (for reports).
      num_examples: examples in the shards (from stats.json), if known; an
        evaluation pass then has a known length (progress bars, and Keras does
        not warn that validation data "ran out").
      balance: a name in BALANCE (training only). "resample" draws classes
        uniformly (resample_balanced; needs class_counts); "class_weights" is a
        loss weighting that the caller adds after mixing (with_class_weights),
        so here it changes nothing, like "none".
      class_counts: training images per class (index = label), for "resample".
      passes: training only. 0 repeats forever; N > 0 yields N shuffled,
        augmented passes one after the other (each image once per pass, the
        random augmentation continuing from pass to pass, the last batch maybe
        short), then ends: what lmrec.feature_cache runs the backbone over.
      deterministic: None: training yields elements in any order (faster; an
        element may even cross into the next pass), evaluation and counted passes
        in order; True or False forces it (True makes a training stream
        repeatable for a fixed seed).

    Returns:
      Dataset of (images float32 [B, S, S, 3] preprocessed, labels int32 [B]) or,
      with with_ids, (images, labels, ids).

    Raises:
      UserError: no file matches file_pattern, an unknown policy or balance, or
        "resample" without class_counts.
    """
    files = tf.io.gfile.glob(file_pattern)
    if not files:
        raise UserError(f"No TFRecord shards match {file_pattern}")
    policy = augment.get_policy(augment_policy if training else "none")
    check_balance(balance)
    resample = training and balance == "resample"
    if resample and class_counts is None:
        raise UserError("--balance=resample needs the per-class training counts (stats.json)")
    dataset = tf.data.Dataset.from_tensor_slices(sorted(files))
    if training:
        dataset = dataset.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
    dataset = dataset.interleave(
        tf.data.TFRecordDataset,
        cycle_length=min(len(files), 8),
        num_parallel_calls=AUTOTUNE,
        deterministic=not training if deterministic is None else deterministic,
    )
    # Counted passes keep their order through the maps below, so pass p is rows p*n..(p+1)*n-1.
    ordered = (not training or passes > 0) if deterministic is None else deterministic
    if training:
        # Shuffle before repeat, so each epoch sees every example once.
        dataset = dataset.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
        dataset = dataset.repeat(passes or None)
    if resample:
        dataset = resample_balanced(dataset, class_counts, seed)

    def parse(serialized):
        example = records.parse_example(serialized)
        encoded = example[records.ENCODED]
        if training and policy.random_crop:
            image = random_crop_and_resize(encoded, image_size, policy, seed)
        else:
            image = decode_and_resize(encoded, image_size)
        if training and policy.flip:
            image = tf.image.random_flip_left_right(image, seed=seed)
        label = tf.cast(example[records.LABEL], tf.int32)
        return image, label, example[records.IMAGE_ID]

    dataset = dataset.map(parse, num_parallel_calls=AUTOTUNE, deterministic=ordered)
    dataset = dataset.batch(
        batch_size, drop_remainder=training and not passes, num_parallel_calls=AUTOTUNE
    )
    batch_layer = policy.batch_layer(seed or 0) if (training and policy.batch_layer) else None

    def finish(images, labels, ids):
        if batch_layer is not None:
            images = batch_layer(images, training=True)
        images = preprocess(images)
        return (images, labels, ids) if with_ids else (images, labels)

    dataset = dataset.map(finish, num_parallel_calls=AUTOTUNE, deterministic=ordered)
    if num_examples is not None and not training:
        batches = -(-num_examples // batch_size)
        dataset = dataset.apply(tf.data.experimental.assert_cardinality(batches))
    return dataset.prefetch(AUTOTUNE)
