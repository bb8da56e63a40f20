"""The classifier: normalized image -> backbone -> head -> probabilities.

Both parts are sub-models reachable as model.backbone and model.head, so
freezing, Grad-CAM (gradient with respect to backbone(x)) and feature caching
need no per-architecture layer names.
"""

from __future__ import annotations

import keras

from lmrec.config import ModelConfig
from lmrec.models import backbones, heads


@keras.saving.register_keras_serializable(package="lmrec")
class Classifier(keras.Model):
    """A functional model with named `backbone` and `head` sub-models."""

    @property
    def backbone(self) -> keras.Model:
        return self.get_layer("backbone")

    @property
    def head(self) -> keras.Model:
        return self.get_layer("head")


def build_classifier(
    config: ModelConfig, num_classes: int, image_size: int, load_weights: bool = True
) -> Classifier:
    """Builds backbone + head for num_classes at image_size x image_size.

    A pretrained backbone is called with training=False, so its BatchNorm
    layers keep their ImageNet statistics in both phases (the Keras
    fine-tuning recipe); a backbone trained from scratch updates them.

    Args:
      config: backbone, weights and head settings.
      num_classes: outputs of the softmax.
      image_size: side of the square input.
      load_weights: False builds the same graph without fetching config.weights
        (for restoring a checkpoint, which overwrites them anyway).
    """
    if num_classes < 2:
        raise ValueError(f"A classifier needs at least 2 classes, got {num_classes}")
    weights = config.weights if load_weights else "none"
    backbone = backbones.build_backbone(config.backbone, image_size, weights)
    inputs = keras.Input((image_size, image_size, 3), name="image")
    if backbones.uses_pretrained_weights(config.weights):
        features = backbone(inputs, training=False)
    else:
        features = backbone(inputs)
    head = heads.build_head(tuple(features.shape[1:]), num_classes, config)
    outputs = head(features)
    return Classifier(inputs=inputs, outputs=outputs, name=f"{config.backbone}_{config.head}")
