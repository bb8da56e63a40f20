"""Named training augmentation policies, read by lmrec.data.pipeline.

A policy has two parts: per-image ops that need the encoded JPEG (a random
resized crop is cheapest as decode_and_crop_jpeg, which decodes only the crop)
and optional per-batch layers (keras-cv) that run on resized uint8-range images
before the backbone's normalization.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from lmrec.errors import UserError


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


AUGMENTATIONS: dict[str, AugmentPolicy] = {
    "none": AugmentPolicy(random_crop=False, flip=False),
    "crop_flip": AugmentPolicy(random_crop=True, flip=True),
    "randaugment": AugmentPolicy(random_crop=True, flip=True, batch_layer=_randaugment),
}


def _mixup(seed: int):
    import keras_cv

    return keras_cv.layers.MixUp(alpha=0.2, seed=seed)


def _cutmix(seed: int):
    import keras_cv

    return keras_cv.layers.CutMix(alpha=1.0, seed=seed)


# Batch-level mixing of images *and* labels (so it runs after labels are one-hot): blends
# two photos (MixUp) or pastes a patch of one into another (CutMix), with the label mixed
# in proportion. A regularizer for small datasets with ambiguous classes.
MIXING: dict[str, Callable[[int], Callable] | None] = {
    "none": None,
    "mixup": _mixup,
    "cutmix": _cutmix,
}


def check_mixing(name: str) -> None:
    if name not in MIXING:
        raise UserError(f"Unknown --mixing={name!r}; valid: {', '.join(sorted(MIXING))}")


def mix_batches(dataset, name: str, seed: int | None):
    """Applies the named mixing to a dataset of (images, one-hot labels) training batches."""
    import tensorflow as tf

    check_mixing(name)
    if MIXING[name] is None:
        return dataset
    layer = MIXING[name](seed or 0)

    def mix(images, labels):
        mixed = layer({"images": images, "labels": tf.cast(labels, tf.float32)}, training=True)
        return mixed["images"], mixed["labels"]

    return dataset.map(mix, num_parallel_calls=tf.data.AUTOTUNE)


def get_policy(name: str) -> AugmentPolicy:
    try:
        return AUGMENTATIONS[name]
    except KeyError:
        raise UserError(
            f"Unknown --augment={name!r}; valid policies: {', '.join(sorted(AUGMENTATIONS))}"
        ) from None
