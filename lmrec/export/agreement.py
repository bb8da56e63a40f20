"""How a converted model file agrees with the SavedModel it came from.

The TFLite and ONNX exports both run the SavedModel's serving graph without
decode and resize (probabilities_function) on the same held-out images and
measure each file against it (check).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import tensorflow as tf


@dataclass
class VariantCheck:
    """One converted file measured against the SavedModel on the same images."""

    variant: str
    file: str = ""  # name inside the report's folder
    size_mb: float = 0.0
    top1_agreement: float = 0.0  # fraction of images whose top class equals the SavedModel's
    max_abs_diff: float = 0.0  # largest |probability difference| over images and classes
    mean_abs_diff: float = 0.0
    accuracy: float = 0.0  # top-1 against the images' labels
    images_per_second: float = 0.0  # batch 1, after one warm-up call
    skipped: str = ""  # why it was not converted (ONNX without its packages)


@dataclass
class TfliteReport:
    """What export_tflite wrote and how well each file agrees with the SavedModel."""

    directory: str
    saved_model: str
    image_size: int
    images: int  # held-out images compared
    image_source: str
    saved_model_accuracy: float
    num_threads: int
    checks: list[VariantCheck]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def table(self) -> str:
        rows = [
            f"{'variant':<8} {'MB':>7} {'top-1 agree':>12} {'max |dp|':>9} {'mean |dp|':>9} "
            f"{'accuracy':>8} {'images/s':>9}"
        ]
        for c in self.checks:
            if c.skipped:
                rows.append(f"{c.variant:<8} {c.skipped}")
                continue
            agree = f"{round(c.top1_agreement * self.images)}/{self.images}"
            rows.append(
                f"{c.variant:<8} {c.size_mb:7.2f} {agree:>12} {c.max_abs_diff:9.1e} "
                f"{c.mean_abs_diff:9.1e} {c.accuracy:8.3f} {c.images_per_second:9.1f}"
            )
        rows.append(
            f"SavedModel accuracy on the same {self.images} images ({self.image_source}): "
            f"{self.saved_model_accuracy:.3f}"
        )
        return "\n".join(rows)


def probabilities_function(trained) -> Callable:
    """uint8 [batch, S, S, 3] -> {"probabilities"}: the serving graph without decode/resize."""
    model, preprocess = trained.model, trained.preprocess

    def probabilities(images: tf.Tensor) -> dict[str, tf.Tensor]:
        probabilities = model(preprocess(tf.cast(images, tf.float32)), training=False)
        return {"probabilities": tf.cast(probabilities, tf.float32)}

    return probabilities


def input_signature(image_size: int) -> list[tf.TensorSpec]:
    return [tf.TensorSpec([None, image_size, image_size, 3], tf.uint8, name="images")]


def check(
    name: str, path: str, probs: np.ndarray, images_per_second: float, reference, labels
) -> VariantCheck:
    diff = np.abs(probs - reference)
    return VariantCheck(
        variant=name,
        file=os.path.basename(path),
        size_mb=os.path.getsize(path) / 1e6,
        top1_agreement=float(np.mean(probs.argmax(1) == reference.argmax(1))),
        max_abs_diff=float(diff.max()),
        mean_abs_diff=float(diff.mean()),
        accuracy=float(np.mean(probs.argmax(1) == labels)),
        images_per_second=images_per_second,
    )
