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


def get_policy(name: str) -> AugmentPolicy:
    try:
        return AUGMENTATIONS[name]
    except KeyError:
        raise UserError(
            f"Unknown --augment={name!r}; valid policies: {', '.join(sorted(AUGMENTATIONS))}"
        ) from None
