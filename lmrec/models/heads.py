"""HEADS: what sits on the backbone's feature map and produces class probabilities.

Each builder returns a model named "head" from the feature map to softmax
probabilities, so the classifier is always backbone + head. The final softmax
runs in float32 whatever the compute dtype, for a numerically sound loss.
"""

from __future__ import annotations

from collections.abc import Callable

import keras

from lmrec.config import ModelConfig
from lmrec.errors import UserError


def _gap_dense512(feature_shape: tuple, num_classes: int, config: ModelConfig) -> keras.Model:
    """GlobalAveragePooling -> Dense(dense_units, relu) -> Dropout -> Dense(num_classes, softmax).

    The user's design: pooling makes it independent of the input size, unlike
    the AveragePooling2D((8, 8)) + Flatten heads of older landmark projects.
    """
    features = keras.Input(feature_shape, name="features")
    x = keras.layers.GlobalAveragePooling2D(name="gap")(features)
    x = keras.layers.Dense(config.dense_units, activation="relu", name="dense")(x)
    x = keras.layers.Dropout(config.dropout, name="dropout")(x)
    outputs = keras.layers.Dense(
        num_classes, activation="softmax", dtype="float32", name="probabilities"
    )(x)
    return keras.Model(features, outputs, name="head")


HEADS: dict[str, Callable[[tuple, int, ModelConfig], keras.Model]] = {
    "gap_dense512": _gap_dense512,
}


def get_builder(name: str) -> Callable[[tuple, int, ModelConfig], keras.Model]:
    """Looks up a head; an unknown name raises UserError listing the valid ones."""
    try:
        return HEADS[name]
    except KeyError:
        raise UserError(
            f"Unknown --head={name!r}; valid heads: {', '.join(sorted(HEADS))}"
        ) from None


def build_head(feature_shape: tuple, num_classes: int, config: ModelConfig) -> keras.Model:
    return get_builder(config.head)(feature_shape, num_classes, config)
