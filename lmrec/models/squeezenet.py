"""SqueezeNet 1.1 (Iandola et al. 2016), a small deployable network, as a Keras backbone.

The layout is torchvision's squeezenet1_1 (the 1.1 of the authors' Caffe
release): a 3x3/2 convolution with 64 filters, then fire modules fire2..fire9
(a 1x1 "squeeze" convolution feeding parallel 1x1 and 3x3 "expand"
convolutions whose outputs are concatenated), with 3x3/2 max pools after conv1,
fire3 and fire5. Every convolution has a bias and a ReLU; there is no
BatchNorm. PyTorch's pools use ceil_mode=True, rounding the output size up;
Keras has no such mode, so a pool whose input would lose its last row or column
gets one zero row or column first (its inputs are ReLU outputs, so a zero never
wins the max): the output sizes, and so a ported state dict, match torchvision
at every input size.

The classifier (dropout, a 1x1 "conv10" to the classes, ReLU, global average
pool) belongs to the head in lmrec, so the backbone ends at fire9 with 512
channels and 722,496 parameters; with torchvision's 1000-class conv10 (513,000
more) that is the 1,235,496 of squeezenet1_1.
"""

from __future__ import annotations

import keras

# fire module -> (squeeze filters, expand filters of each of the 1x1 and 3x3 branches).
FIRE_MODULES = {
    "fire2": (16, 64),
    "fire3": (16, 64),
    "fire4": (32, 128),
    "fire5": (32, 128),
    "fire6": (48, 192),
    "fire7": (48, 192),
    "fire8": (64, 256),
    "fire9": (64, 256),
}
POOL_AFTER = {"fire3": "pool3", "fire5": "pool5"}

# torchvision initializes with kaiming_uniform_ (gain sqrt(2), fan_in) and zero biases.
_CONV = dict(kernel_initializer="he_uniform")


def build(input_shape: tuple[int, int, int]) -> keras.Model:
    """Builds SqueezeNet 1.1 without its classifier: images -> (H', W', 512) feature map.

    At 224 px the feature map is 13x13; at 32 px, 1x1.
    """
    layers = keras.layers
    inputs = keras.Input(input_shape, name="image")
    x = layers.Conv2D(64, 3, strides=2, name="conv1", **_CONV)(inputs)
    x = layers.ReLU(name="conv1_relu")(x)
    x = _max_pool_ceil(x, "pool1")
    for name, (squeeze, expand) in FIRE_MODULES.items():
        x = _fire(x, squeeze, expand, name)
        if name in POOL_AFTER:
            x = _max_pool_ceil(x, POOL_AFTER[name])
    return keras.Model(inputs, x, name="squeezenet")


def _fire(x, squeeze: int, expand: int, name: str):
    layers = keras.layers
    x = layers.Conv2D(squeeze, 1, name=f"{name}_squeeze", **_CONV)(x)
    x = layers.ReLU(name=f"{name}_squeeze_relu")(x)
    left = layers.Conv2D(expand, 1, name=f"{name}_expand1x1", **_CONV)(x)
    left = layers.ReLU(name=f"{name}_expand1x1_relu")(left)
    right = layers.Conv2D(expand, 3, padding="same", name=f"{name}_expand3x3", **_CONV)(x)
    right = layers.ReLU(name=f"{name}_expand3x3_relu")(right)
    return layers.Concatenate(name=f"{name}_concat")([left, right])


def _max_pool_ceil(x, name: str):
    """3x3/2 max pool with PyTorch's ceil_mode=True output size: ceil((n - 3) / 2) + 1."""
    extra = [(0, (int(n) - 3) % 2) for n in x.shape[1:3]]
    if any(after for _, after in extra):
        x = keras.layers.ZeroPadding2D(tuple(extra), name=f"{name}_pad")(x)
    return keras.layers.MaxPooling2D(3, strides=2, name=name)(x)
