"""Named training augmentation policies, read by lmrec.data.pipeline.

A policy has two parts: per-image ops that need the encoded JPEG (a random
resized crop is cheapest as decode_and_crop_jpeg, which decodes only the crop)
and optional per-batch layers (keras-cv) that run on resized uint8-range images
before the backbone's normalization.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from lmrec.registry import Registry


@dataclass(frozen=True)
class AugmentPolicy:
    """What the training pipeline does to each image and each batch."""

    random_crop: bool  # random resized crop (area and aspect jitter) while decoding
    flip: bool  # random left-right flip
    # ImageNet recipes crop down to 8% of the photo; a landmark often fills only part of the
    # frame, and small crops lose it, so crops keep at least 40% of the area.
    crop_area: tuple[float, float] = (0.4, 1.0)
    crop_aspect: tuple[float, float] = (3 / 4, 4 / 3)
    # Builds a per-batch function on float images in [0, 255]; None: no batch stage.
    batch_layer: Callable[[int], Callable] | None = None


def _randaugment(seed: int):
    import keras_cv

    return keras_cv.layers.RandAugment(
        value_range=(0, 255), augmentations_per_image=2, magnitude=0.5, seed=seed
    )


def _shift_and_color_jitter(seed: int):
    """Width/height shift (10%, reflected edges) then brightness, contrast, saturation jitter.

    With the crop and flip of every policy this is the classic transfer-learning
    set (flip, crop, width/height shift, colour jitter), as keras-cv layers that run
    inside tf.data on whole batches, each image with its own random draw.
    Brightness, contrast and saturation are keras-cv's RandomColorJitter without
    its hue step: the hue round trip through HSV doubles the cost, and a landmark's
    colours (sky, stone, water) carry information. keras-cv rather than the Keras 3
    layers because keras.layers.RandomSaturation (3.15) leaves [0, 255] inputs out
    of range (negative values); keras-cv's keep them in [0, 255].
    """
    import keras_cv

    layers = [
        keras_cv.layers.RandomTranslation(0.1, 0.1, fill_mode="reflect", seed=seed),
        keras_cv.layers.RandomBrightness(0.2, value_range=(0, 255), seed=seed),
        keras_cv.layers.RandomContrast(value_range=(0, 255), factor=0.2, seed=seed),
        keras_cv.layers.RandomSaturation((0.3, 0.7), seed=seed),  # 0.5: unchanged
    ]

    def apply(images, training=True):
        for layer in layers:
            images = layer(images, training=training)
        return images

    return apply


AUGMENTATIONS: Registry[AugmentPolicy] = Registry(
    "augmentation policy",
    {
        "none": AugmentPolicy(random_crop=False, flip=False),
        # Random resized crop (decoded as a crop) and a left-right flip. The default: the
        # training pipeline runs as fast as evaluation's (benchmarks/input_pipeline.py).
        "light": AugmentPolicy(random_crop=True, flip=True),
        # light, then width/height shift and colour jitter on each batch.
        "shift_jitter": AugmentPolicy(
            random_crop=True, flip=True, batch_layer=_shift_and_color_jitter
        ),
        "randaugment": AugmentPolicy(random_crop=True, flip=True, batch_layer=_randaugment),
    },
    flag="augment",
    # Old names, so a flagfile written before a rename fails with the new name in the message.
    renamed={"crop_flip": "light"},
)


def _mixup(seed: int):
    import keras_cv

    return keras_cv.layers.MixUp(alpha=0.2, seed=seed)


def _cutmix(seed: int):
    import keras_cv

    return keras_cv.layers.CutMix(alpha=1.0, seed=seed)


# Batch-level mixing of images *and* labels (so it runs after labels are one-hot): blends
# two photos (MixUp) or pastes a patch of one into another (CutMix), with the label mixed
# in proportion. A regularizer for small datasets with ambiguous classes.
MIXING: Registry[Callable[[int], Callable] | None] = Registry(
    "mixing",
    {
        "none": None,
        "mixup": _mixup,
        "cutmix": _cutmix,
    },
)


def check_mixing(name: str) -> None:
    """Raises UserError for an unknown --mixing."""
    MIXING.get(name)


def mix_batches(dataset, name: str, seed: int | None):
    """Applies the named mixing to a dataset of (images, one-hot labels) training batches."""
    import tensorflow as tf

    build_layer = MIXING.get(name)
    if build_layer is None:
        return dataset
    layer = build_layer(seed or 0)

    def mix(images, labels):
        mixed = layer({"images": images, "labels": tf.cast(labels, tf.float32)}, training=True)
        return mixed["images"], mixed["labels"]

    return dataset.map(mix, num_parallel_calls=tf.data.AUTOTUNE)


def get_policy(name: str) -> AugmentPolicy:
    """The --augment policy called name; an unknown name raises UserError."""
    return AUGMENTATIONS.get(name)
