"""TFRecords -> tf.data: parse -> decode (train: random resized crop + flip) -> resize ->
batch -> (batch augmentation) -> the backbone's own preprocessing -> prefetch.

Image size and normalization come from the backbone's spec; nothing here
hard-codes either. decode_and_resize() is shared with lmrec.export so the
served model sees exactly what evaluation saw.
"""

from __future__ import annotations

from collections.abc import Callable

import tensorflow as tf

from lmrec.data import augment, records
from lmrec.errors import UserError

AUTOTUNE = tf.data.AUTOTUNE


def decode_and_resize(encoded: tf.Tensor, image_size: int) -> tf.Tensor:
    """Decodes one encoded image (JPEG/PNG/GIF/BMP/WebP) to float32 [size, size, 3] in [0, 255].

    The whole photo is resized (no crop), with antialiasing so large photos do
    not alias; export and evaluation both use this function.
    """
    image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
    return resize(image, image_size)


def resize(image: tf.Tensor, image_size: int) -> tf.Tensor:
    """Resizes uint8 or float images (one or a batch) to image_size, float32 in [0, 255]."""
    image = tf.image.resize(image, [image_size, image_size], method="bilinear", antialias=True)
    return tf.clip_by_value(image, 0.0, 255.0)


def random_crop_and_resize(
    encoded: tf.Tensor, image_size: int, policy: augment.AugmentPolicy, seed: int | None
) -> tf.Tensor:
    """Decodes only a random crop of a JPEG (Inception-style area/aspect jitter), then resizes."""
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
    image = tf.io.decode_and_crop_jpeg(encoded, window, channels=3)
    return resize(image, image_size)


def make_dataset(
    file_pattern: str,
    image_size: int,
    preprocess: Callable[[tf.Tensor], tf.Tensor],
    batch_size: int,
    training: bool,
    augment_policy: str = "crop_flip",
    shuffle_buffer: int = 2048,
    seed: int | None = None,
    with_ids: bool = False,
    num_examples: int | None = None,
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

    Returns:
      Dataset of (images float32 [B, S, S, 3] preprocessed, labels int32 [B]) or,
      with with_ids, (images, labels, ids).

    Raises:
      UserError: no file matches file_pattern.
    """
    files = tf.io.gfile.glob(file_pattern)
    if not files:
        raise UserError(f"No TFRecord shards match {file_pattern}")
    policy = augment.get_policy(augment_policy if training else "none")
    dataset = tf.data.Dataset.from_tensor_slices(sorted(files))
    if training:
        dataset = dataset.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
    dataset = dataset.interleave(
        tf.data.TFRecordDataset,
        cycle_length=min(len(files), 8),
        num_parallel_calls=AUTOTUNE,
        deterministic=not training,
    )
    if training:
        # Shuffle before repeat, so each epoch sees every example once.
        dataset = dataset.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
        dataset = dataset.repeat()

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

    dataset = dataset.map(parse, num_parallel_calls=AUTOTUNE, deterministic=not training)
    dataset = dataset.batch(batch_size, drop_remainder=training, num_parallel_calls=AUTOTUNE)
    batch_layer = policy.batch_layer(seed or 0) if (training and policy.batch_layer) else None

    def finish(images, labels, ids):
        if batch_layer is not None:
            images = batch_layer(images, training=True)
        images = preprocess(images)
        return (images, labels, ids) if with_ids else (images, labels)

    dataset = dataset.map(finish, num_parallel_calls=AUTOTUNE, deterministic=not training)
    if num_examples is not None and not training:
        batches = -(-num_examples // batch_size)
        dataset = dataset.apply(tf.data.experimental.assert_cardinality(batches))
    return dataset.prefetch(AUTOTUNE)
