"""HEADS: what sits on the backbone's feature map and produces class probabilities.

Each builder returns a model named "head" from the feature map to softmax
probabilities, so the classifier is always backbone + head. The pooling and
attention layers they use live in lmrec.models.pooling. The last layer,
"probabilities", is what --loss needs (lmrec.losses): Dense + softmax, or for
the ArcFace losses a CosineClassifier then a softmax. The softmax runs in
float32 whatever the compute dtype, for a numerically sound loss.
"""

from __future__ import annotations

from collections.abc import Callable

import keras

from lmrec import losses
from lmrec.config import ModelConfig
from lmrec.errors import UserError
from lmrec.models import cosine, pooling
from lmrec.registry import Registry


def _dense_softmax(features, x, num_classes: int, config: ModelConfig) -> keras.Model:
    """Pooled features -> Dense(dense_units, relu) -> Dropout -> classifier -> softmax."""
    x = keras.layers.Dense(config.dense_units, activation="relu", name="dense")(x)
    return _softmax(features, x, num_classes, config)


def _softmax(features, x, num_classes: int, config: ModelConfig) -> keras.Model:
    """Pooled features -> Dropout -> logits -> softmax in float32, as the --loss needs.

    Dense(num_classes, softmax) for softmax and focal (the layer of checkpoints
    written before --loss existed); for the ArcFace losses a CosineClassifier
    giving s·cos θ, then a softmax, from which the loss reads the logits back.
    """
    losses.check_model(config)
    x = keras.layers.Dropout(config.dropout, name="dropout")(x)
    if not losses.LOSSES.get(config.loss).cosine:
        outputs = keras.layers.Dense(
            num_classes, activation="softmax", dtype="float32", name="probabilities"
        )(x)
        return keras.Model(features, outputs, name="head")
    logits = cosine.CosineClassifier(
        num_classes,
        config.arcface_scale,
        losses.subcenters(config),
        name="cosine_classifier",
    )(x)
    outputs = keras.layers.Activation("softmax", dtype="float32", name="probabilities")(logits)
    return keras.Model(features, outputs, name="head")


def _bilinear_pooling(x, config: ModelConfig):
    """Compact bilinear pooling, rescaled by sqrt(bilinear_dim) for the classifier after it.

    The sketch is L2-normalized, so its 8192 entries are about 0.01 each: a Dense
    layer with the usual initialization then gives near-zero logits and learns
    slowly. The rescale gives the entries unit mean square, like other
    heads' features; the normalized direction is unchanged.
    """
    if config.bilinear_dim < 1:
        raise UserError(f"--bilinear_dim must be positive, got {config.bilinear_dim}")
    x = pooling.CompactBilinearPooling(config.bilinear_dim, name="compact_bilinear")(x)
    return keras.layers.Rescaling(config.bilinear_dim**0.5, name="unit_scale")(x)


def _gap_dense512(feature_shape: tuple, num_classes: int, config: ModelConfig) -> keras.Model:
    """GlobalAveragePooling -> Dense(dense_units, relu) -> Dropout -> Dense(num_classes, softmax).

    Global pooling makes the head independent of the input size, unlike an
    AveragePooling2D((8, 8)) + Flatten head tied to one feature-map size.
    """
    features = keras.Input(feature_shape, name="features")
    x = keras.layers.GlobalAveragePooling2D(name="gap")(features)
    return _dense_softmax(features, x, num_classes, config)


def _bilinear(feature_shape: tuple, num_classes: int, config: ModelConfig) -> keras.Model:
    """Compact bilinear pooling (bilinear_dim) -> Dropout -> Dense(num_classes, softmax).

    Second-order statistics (which channels fire together) instead of the mean;
    the sketch is already signed-square-rooted and L2-normalized, so no hidden
    Dense layer follows.
    """
    features = keras.Input(feature_shape, name="features")
    x = _bilinear_pooling(features, config)
    return _softmax(features, x, num_classes, config)


def _gem(feature_shape: tuple, num_classes: int, config: ModelConfig) -> keras.Model:
    """GeM pooling (trainable p, starts at 3) -> Dense -> Dropout -> softmax."""
    features = keras.Input(feature_shape, name="features")
    x = pooling.GeneralizedMeanPooling(name="gem")(features)
    return _dense_softmax(features, x, num_classes, config)


def _spatial_attention(feature_shape: tuple, num_classes: int, config: ModelConfig) -> keras.Model:
    """Parameter-free spatial attention -> GlobalAveragePooling -> Dense -> Dropout -> softmax."""
    features = keras.Input(feature_shape, name="features")
    x = pooling.SpatialAttention(name="spatial_attention")(features)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    return _dense_softmax(features, x, num_classes, config)


def _self_attention(feature_shape: tuple, num_classes: int, config: ModelConfig) -> keras.Model:
    """SAGAN self-attention (γ starts at 0) -> GAP -> Dense -> Dropout -> softmax."""
    features = keras.Input(feature_shape, name="features")
    x = pooling.SelfAttention2D(name="self_attention")(features)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    return _dense_softmax(features, x, num_classes, config)


def _bilinear_self_attention(
    feature_shape: tuple, num_classes: int, config: ModelConfig
) -> keras.Model:
    """SAGAN self-attention -> compact bilinear pooling -> Dropout -> softmax.

    Non-local context first, then second-order pooling of the attended map.
    """
    features = keras.Input(feature_shape, name="features")
    x = pooling.SelfAttention2D(name="self_attention")(features)
    x = _bilinear_pooling(x, config)
    return _softmax(features, x, num_classes, config)


# Each builder: (feature map shape, number of classes, ModelConfig) -> the "head" model.
HEADS: Registry[Callable[[tuple, int, ModelConfig], keras.Model]] = Registry(
    "head",
    {
        "gap_dense512": _gap_dense512,
        "bilinear": _bilinear,
        "gem": _gem,
        "spatial_attention": _spatial_attention,
        "self_attention": _self_attention,
        "bilinear_self_attention": _bilinear_self_attention,
    },
)


def get_builder(name: str) -> Callable[[tuple, int, ModelConfig], keras.Model]:
    """Looks up a head; an unknown name raises UserError listing the valid ones."""
    return HEADS.get(name)


def build_head(feature_shape: tuple, num_classes: int, config: ModelConfig) -> keras.Model:
    return get_builder(config.head)(feature_shape, num_classes, config)
