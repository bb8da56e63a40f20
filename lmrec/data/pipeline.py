"""TFRecords -> tf.data: parse -> decode (train: random resized crop + flip) -> resize ->
batch -> (batch augmentation) -> the backbone's own preprocessing -> prefetch.

Image size and normalization come from the backbone's spec; nothing here
hard-codes either. decode_and_resize() is shared with lmrec.export so the
served model sees exactly what evaluation saw.

Speed (benchmarks/input_pipeline.py measures it against a bare decode + resize
of the same files): parse, decode, crop and resize are one map with AUTOTUNE
parallelism, in any order when training; training decodes only its crop
(decode_and_crop_jpeg); and a JPEG at least twice the model input on both sides
is decoded at 1/2 or 1/4 scale by libjpeg's scaled IDCT (DCT downscaling), which
skips most of the decoding and shrinks the resize; the result still is at least
the model input, so the antialiased resize only ever shrinks it. On real photos
(800x600 and 2400x1800 to 224 px) the model input then differs from a full
decode's by 0.5-1 level of 255 on average, less than an area resize of the full
decode differs from the antialiased bilinear one (1.2-1.8). The 1/8 scale keeps
only each 8x8 block's mean and differed by 1.5-2.8 levels, more than that, so it
is not used.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import numpy as np
import tensorflow as tf

from lmrec.data import augment, images, records
from lmrec.errors import UserError

AUTOTUNE = tf.data.AUTOTUNE
# Scales at which JPEGs are decoded (libjpeg's scaled IDCT; 1/8 is left out, see above).
DCT_SCALES = (1, 2, 4)

# --balance: how training copes with long-tailed classes. Evaluation never balances.
BALANCE = ("none", "class_weights", "resample")


def check_balance(name: str) -> None:
    if name not in BALANCE:
        raise UserError(f"Unknown --balance={name!r}; valid: {', '.join(BALANCE)}")


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


def _decode_jpeg_scaled(
    encoded: tf.Tensor, window: tf.Tensor | None, short_side: tf.Tensor, image_size: int
) -> tf.Tensor:
    """Decodes a JPEG (or a window [y, x, h, w] of it) at the coarsest DCT scale that keeps
    short_side (the shorter side of what is decoded) >= image_size, then resizes to a square.

    The scale is an attribute of the decode op, so each one is a branch of a switch_case.
    """
    scale_index = tf.reduce_sum(
        tf.cast(short_side >= image_size * tf.constant(DCT_SCALES[1:], tf.int32), tf.int32)
    )

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
