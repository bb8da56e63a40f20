"""Freezing and unfreezing the backbone for the two training phases.

Phase 1 freezes the whole backbone. Phase 2 unfreezes it from a named layer
(or all of it); layers below stay frozen, and BatchNorm layers of pretrained
backbones stay frozen, since updating their statistics with small batches of a
new domain destroys the features (keras-io EfficientNet fine-tuning example).
"""

from __future__ import annotations

from dataclasses import dataclass

import keras

from lmrec.errors import UserError


@dataclass(frozen=True)
class ParameterCount:
    trainable: int
    non_trainable: int

    @property
    def total(self) -> int:
        return self.trainable + self.non_trainable

    def __str__(self) -> str:
        return (
            f"{self.trainable:,} trainable + {self.non_trainable:,} non-trainable "
            f"= {self.total:,} parameters"
        )


def count_parameters(model: keras.Model) -> ParameterCount:
    trainable = sum(int(w.numpy().size) for w in model.trainable_weights)
    non_trainable = sum(int(w.numpy().size) for w in model.non_trainable_weights)
    return ParameterCount(trainable, non_trainable)


def freeze_backbone(model) -> None:
    """Phase 1: only the head trains."""
    model.backbone.trainable = False
    model.head.trainable = True


def unfreeze_backbone(
    model, from_layer: str = "", keep_batchnorm_frozen: bool = True, freeze_layers: int = 0
) -> int:
    """Phase 2: unfreezes the backbone from `from_layer` to the top.

    Args:
      model: a Classifier.
      from_layer: a layer name, or a prefix such as "block13" matching its first
        layer; "" unfreezes every layer.
      keep_batchnorm_frozen: keep BatchNormalization layers frozen.
      freeze_layers: backbone.layers[:freeze_layers] stay frozen; with from_layer,
        the later starting point wins.

    Returns:
      How many backbone layers are trainable afterwards.

    Raises:
      UserError: from_layer names no layer of the backbone, or freeze_layers is
        negative or not below the number of layers.
    """
    backbone = model.backbone
    layers = backbone.layers
    if not 0 <= freeze_layers < len(layers):
        raise UserError(
            f"--freeze_layers={freeze_layers} must be in [0, {len(layers)}): "
            f"{backbone.name} has {len(layers)} layers"
        )
    start = freeze_layers
    if from_layer:
        matches = [i for i, layer in enumerate(layers) if layer.name == from_layer]
        matches = matches or [
            i for i, layer in enumerate(layers) if layer.name.startswith(from_layer)
        ]
        if not matches:
            raise UserError(
                f"--unfreeze_from={from_layer!r} matches no layer of {backbone.name}; "
                f"some layer names: {_name_sample(layers)}"
            )
        start = max(start, matches[0])
    backbone.trainable = True
    trainable = 0
    for index, layer in enumerate(layers):
        is_batchnorm = isinstance(layer, keras.layers.BatchNormalization)
        layer.trainable = index >= start and not (keep_batchnorm_frozen and is_batchnorm)
        trainable += int(layer.trainable and bool(layer.weights))
    return trainable


def _name_sample(layers, count: int = 12) -> str:
    names = [layer.name for layer in layers if layer.weights]
    step = max(1, len(names) // count)
    return ", ".join(names[::step][:count])
