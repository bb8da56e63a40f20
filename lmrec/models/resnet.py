"""ResNet-18 and ResNet-34 (He et al. 2016), which keras.applications lacks.

The layout is torchvision's resnet18/resnet34: a 7x7/2 convolution and a 3x3/2
max pool, then four stages of BasicBlocks (two 3x3 convolutions) with 64, 128,
256 and 512 filters; the first block of stages 3-5 halves the resolution and
projects its shortcut with a 1x1/2 convolution + BatchNorm. Padding is
torchvision's symmetric padding (explicit ZeroPadding2D before every strided
layer: Keras' "same" pads stride-2 layers asymmetrically), BatchNorm has
epsilon 1e-5 and momentum 0.9 (PyTorch's 0.1), and convolutions start from
kaiming_normal(fan_out), so a torchvision state dict maps one tensor per layer.

Layer names follow keras.applications' ResNet50 ("conv1_conv",
"conv4_block2_1_conv", shortcut "conv3_block1_0_conv"), so --unfreeze_from=conv5
means the same stage for resnet18, resnet34 and resnet50. Without the ImageNet
classifier, resnet18 has 11,176,512 trainable parameters and resnet34
21,284,672, exactly torchvision's counts minus the fc layer; BatchNorm's moving
mean and variance (buffers in PyTorch) are Keras non-trainable weights.
"""

from __future__ import annotations

import keras

STAGE_FILTERS = (64, 128, 256, 512)
BLOCKS_PER_STAGE = {"resnet18": (2, 2, 2, 2), "resnet34": (3, 4, 6, 3)}

_BATCHNORM = dict(epsilon=1e-5, momentum=0.9)
# torchvision: kaiming_normal_(mode="fan_out", nonlinearity="relu").
_CONV = dict(
    use_bias=False,
    kernel_initializer=keras.initializers.VarianceScaling(2.0, "fan_out", "untruncated_normal"),
)


def build(variant: str, input_shape: tuple[int, int, int]) -> keras.Model:
    """Builds resnet18 or resnet34 without top: images -> (H/32, W/32, 512) feature map.

    Args:
      variant: "resnet18" or "resnet34" (a key of BLOCKS_PER_STAGE).
      input_shape: (height, width, 3), ImageNet mean/std normalized.
    """
    layers = keras.layers
    inputs = keras.Input(input_shape, name="image")
    x = layers.ZeroPadding2D(3, name="conv1_pad")(inputs)
    x = layers.Conv2D(64, 7, strides=2, name="conv1_conv", **_CONV)(x)
    x = layers.BatchNormalization(name="conv1_bn", **_BATCHNORM)(x)
    x = layers.ReLU(name="conv1_relu")(x)
    # Zeros pad like PyTorch's -inf here: the inputs are ReLU outputs, never below 0.
    x = layers.ZeroPadding2D(1, name="pool1_pad")(x)
    x = layers.MaxPooling2D(3, strides=2, name="pool1_pool")(x)
    for stage, (filters, blocks) in enumerate(
        zip(STAGE_FILTERS, BLOCKS_PER_STAGE[variant], strict=True), start=2
    ):
        for block in range(1, blocks + 1):
            stride = 2 if stage > 2 and block == 1 else 1
            x = _basic_block(x, filters, stride, name=f"conv{stage}_block{block}")
    return keras.Model(inputs, x, name=variant)


def _basic_block(x, filters: int, stride: int, name: str):
    """torchvision's BasicBlock: 3x3 conv-BN-ReLU, 3x3 conv-BN, + shortcut, ReLU."""
    layers = keras.layers
    shortcut = x
    if stride != 1 or x.shape[-1] != filters:
        shortcut = layers.Conv2D(filters, 1, strides=stride, name=f"{name}_0_conv", **_CONV)(x)
        shortcut = layers.BatchNormalization(name=f"{name}_0_bn", **_BATCHNORM)(shortcut)
    if stride != 1:
        x = layers.ZeroPadding2D(1, name=f"{name}_1_pad")(x)
    x = layers.Conv2D(
        filters,
        3,
        strides=stride,
        padding="valid" if stride != 1 else "same",
        name=f"{name}_1_conv",
        **_CONV,
    )(x)
    x = layers.BatchNormalization(name=f"{name}_1_bn", **_BATCHNORM)(x)
    x = layers.ReLU(name=f"{name}_1_relu")(x)
    x = layers.Conv2D(filters, 3, padding="same", name=f"{name}_2_conv", **_CONV)(x)
    x = layers.BatchNormalization(name=f"{name}_2_bn", **_BATCHNORM)(x)
    x = layers.Add(name=f"{name}_add")([shortcut, x])
    return layers.ReLU(name=f"{name}_out")(x)
