"""How a converted model file agrees with the SavedModel it came from.

The TFLite and ONNX exports both run the SavedModel's serving graph without
decode and resize (probabilities_function) on the same held-out images and
measure each file against it (check): the probabilities against serving_images,
and for TFLite the embeddings against serving_embeddings.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from lmrec import embeddings


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
    # largest |embedding difference| against serving_embeddings (TFLite; 0 when not compared)
    embeddings_max_abs_diff: float = 0.0
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
            f"{'max |de|':>9} {'accuracy':>8} {'images/s':>9}"
        ]
        for c in self.checks:
            if c.skipped:
                rows.append(f"{c.variant:<8} {c.skipped}")
                continue
            agree = f"{round(c.top1_agreement * self.images)}/{self.images}"
            rows.append(
                f"{c.variant:<8} {c.size_mb:7.2f} {agree:>12} {c.max_abs_diff:9.1e} "
                f"{c.mean_abs_diff:9.1e} {c.embeddings_max_abs_diff:9.1e} {c.accuracy:8.3f} "
                f"{c.images_per_second:9.1f}"
            )
        rows.append(
            f"SavedModel accuracy on the same {self.images} images ({self.image_source}): "
            f"{self.saved_model_accuracy:.3f}"
        )
        return "\n".join(rows)


def probabilities_function(trained, with_embeddings: bool = True) -> Callable:
    """uint8 [batch, S, S, 3] -> {"probabilities", "embeddings"}: the serving graph without
    decode/resize, in one forward pass (embeddings.probabilities_and_embeddings_model).

    The embeddings (float32 [batch, D], L2-normalized) are what serving_embeddings
    returns; with_embeddings=False leaves them out (the ONNX file).
    """
    model = embeddings.probabilities_and_embeddings_model(trained.model)
    preprocess = trained.preprocess

    def probabilities(images: tf.Tensor) -> dict[str, tf.Tensor]:
        softmax, embedding = model(preprocess(tf.cast(images, tf.float32)), training=False)
        outputs = {"probabilities": tf.cast(softmax, tf.float32)}
        if with_embeddings:
            outputs["embeddings"] = tf.cast(embedding, tf.float32)
        return outputs

    return probabilities


def input_signature(image_size: int) -> list[tf.TensorSpec]:
    return [tf.TensorSpec([None, image_size, image_size, 3], tf.uint8, name="images")]


def check(
    name: str,
    path: str,
    probs: np.ndarray,
    images_per_second: float,
    reference,
    labels,
    embeddings: np.ndarray | None = None,
    reference_embeddings: np.ndarray | None = None,
) -> VariantCheck:
    diff = np.abs(probs - reference)
    embeddings_diff = 0.0
    if embeddings is not None and reference_embeddings is not None:
        embeddings_diff = float(np.abs(embeddings - reference_embeddings).max(initial=0.0))
    return VariantCheck(
        embeddings_max_abs_diff=embeddings_diff,
        variant=name,
        file=os.path.basename(path),
        size_mb=os.path.getsize(path) / 1e6,
        top1_agreement=float(np.mean(probs.argmax(1) == reference.argmax(1))),
        max_abs_diff=float(diff.max()),
        mean_abs_diff=float(diff.mean()),
        accuracy=float(np.mean(probs.argmax(1) == labels)),
        images_per_second=images_per_second,
    )
