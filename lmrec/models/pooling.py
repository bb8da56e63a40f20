"""Pooling and attention layers for the heads: feature map [B, H, W, C] in.

  CompactBilinearPooling  -> [B, output_dim]  Tensor Sketch bilinear pooling (Gao et al. 2016)
  GeneralizedMeanPooling  -> [B, C]           GeM with a trainable exponent p (Radenović et al.)
  SpatialAttention        -> [B, H, W, C]     parameter-free re-weighting of locations
  SelfAttention2D         -> [B, H, W, C]     SAGAN self-attention (Zhang et al. 2019)

The attention layers keep the shape, so any pooling can follow them. Each layer
is registered with Keras ("lmrec>Name") and has get_config, so a model holding
it saves and loads as .keras, as a weights file and as a SavedModel. Sums of
squares, powers, FFTs and softmaxes run in float32 whatever the compute dtype.
"""

from __future__ import annotations

import numpy as np
from keras import initializers, layers, ops, saving


@saving.register_keras_serializable(package="lmrec")
class CompactBilinearPooling(layers.Layer):
    """Compact bilinear pooling by Tensor Sketch, then signed square root and L2 norm.

    Bilinear pooling sums the outer product x xᵀ of every location's C-vector x
    (C² numbers, 4M for C=2048). Tensor Sketch approximates it in output_dim
    numbers: two independent count sketches Ψ₁(x), Ψ₂(x) ∈ R^D (Ψ(x)[d] = Σ over
    channels c with h(c) = d of s(c)·x_c, with a random hash h: [C] → [D] and
    random signs s: [C] → ±1) are multiplied in the FFT domain, i.e. circularly
    convolved. The result is the count sketch of x ⊗ x with the pair hash
    (h₁(i) + h₂(j)) mod D and sign s₁(i)s₂(j), so its inner products are unbiased
    estimates of <x ⊗ x, y ⊗ y> = <x, y>² (variance about
    (‖x‖⁴‖y‖⁴ + <x, y>⁴) / D). The inverse FFT is linear, so the per-location
    products are summed over the H·W locations before one inverse FFT per image.
    The FFTs are keras.ops.rfft / irfft (tf.signal under TensorFlow, XLA-ready).

    Hashes and signs are drawn once from `seed` in build() and kept as
    non-trainable weights (hash_1, sign_1, hash_2, sign_2), so .keras files,
    weights files and SavedModels carry them and a reload never depends on the
    random generator of the NumPy version that built the model.

    Memory: the two sketches, their spectra and the product each hold
    B·H·W·D float32 numbers (about 3.3 MB per image for a 10x10 map and D=8192;
    a handful of such tensors are kept for the backward pass). It grows with D
    and the number of locations, not with C, so no 1x1 convolution shrinking C
    is needed first; the sketching itself is a segment sum, O(B·H·W·C).

    Args:
      output_dim: D, the sketch dimension (Gao et al. use 8192 for C=512).
      seed: draws the hashes and signs.
      epsilon: added under the signed square root and to the norm.
    """

    def __init__(self, output_dim: int = 8192, seed: int = 0, epsilon: float = 1e-8, **kwargs):
        # The FFT and square root need float32; a float16 sketch would overflow.
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        if output_dim < 1:
            raise ValueError(f"output_dim must be positive, got {output_dim}")
        self.output_dim = int(output_dim)
        self.seed = int(seed)
        self.epsilon = float(epsilon)

    def build(self, input_shape):
        channels = input_shape[-1]
        if channels is None:
            raise ValueError("CompactBilinearPooling needs a known number of channels")
        rng = np.random.default_rng(self.seed)
        for index in (1, 2):
            hashes = rng.integers(0, self.output_dim, size=channels, dtype=np.int32)
            signs = rng.choice(np.array([-1.0, 1.0], np.float32), size=channels)
            hash_weight = self.add_weight(
                name=f"hash_{index}",
                shape=(channels,),
                dtype="int32",
                initializer="zeros",
                trainable=False,
            )
            sign_weight = self.add_weight(
                name=f"sign_{index}",
                shape=(channels,),
                dtype="float32",
                initializer="ones",
                trainable=False,
                autocast=False,
            )
            hash_weight.assign(hashes)
            sign_weight.assign(signs)
            setattr(self, f"hash_{index}", hash_weight)
            setattr(self, f"sign_{index}", sign_weight)

    def _count_sketch_spectrum(self, x, hashes, signs):
        """x [B, N, C] -> the real and imaginary rfft of its count sketch, [B, N, D//2+1]."""
        by_channel = ops.transpose(x * signs, (2, 0, 1))  # segment_sum works on axis 0
        sketch = ops.segment_sum(by_channel, hashes, num_segments=self.output_dim)
        return ops.rfft(ops.transpose(sketch, (1, 2, 0)))

    def tensor_sketch(self, inputs):
        """The sum-pooled Tensor Sketch [B, D], before the square root and normalization."""
        if not self.built:  # called directly rather than through __call__
            self.build(tuple(inputs.shape))
            self.built = True
        x = ops.cast(inputs, "float32")
        x = ops.reshape(x, (ops.shape(x)[0], -1, x.shape[-1]))  # [B, H·W, C]
        real_1, imag_1 = self._count_sketch_spectrum(x, self.hash_1, self.sign_1)
        real_2, imag_2 = self._count_sketch_spectrum(x, self.hash_2, self.sign_2)
        real = ops.sum(real_1 * real_2 - imag_1 * imag_2, axis=1)
        imag = ops.sum(real_1 * imag_2 + imag_1 * real_2, axis=1)
        return ops.irfft((real, imag), fft_length=self.output_dim)

    def call(self, inputs):
        y = self.tensor_sketch(inputs)
        y = ops.sign(y) * ops.sqrt(ops.abs(y) + self.epsilon)
        norm = ops.sqrt(ops.sum(ops.square(y), axis=-1, keepdims=True))
        return y / (norm + self.epsilon)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.output_dim)

    def get_config(self):
        config = super().get_config()
        config.update(output_dim=self.output_dim, seed=self.seed, epsilon=self.epsilon)
        return config


@saving.register_keras_serializable(package="lmrec")
class GeneralizedMeanPooling(layers.Layer):
    """GeM: (mean over locations of x^p)^(1/p) per channel, [B, H, W, C] -> [B, C].

    p = 1 is average pooling and p → ∞ max pooling; p = 3 is the usual start
    for landmark retrieval (Radenović et al. 2018). Inputs are clamped at eps
    (x^p needs x > 0) and p at 1 (below it 1/p grows without bound). Computed
    in float32: x³ of ReLU features overflows float16.

    Args:
      p: initial exponent.
      trainable_p: whether p is learned.
      eps: lower clamp of the inputs.
    """

    def __init__(self, p: float = 3.0, trainable_p: bool = True, eps: float = 1e-6, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.initial_p = float(p)
        self.trainable_p = bool(trainable_p)
        self.eps = float(eps)

    def build(self, input_shape):
        self.p = self.add_weight(
            name="p",
            shape=(),
            initializer=initializers.Constant(self.initial_p),
            trainable=self.trainable_p,
        )

    def call(self, inputs):
        p = ops.maximum(ops.cast(self.p, "float32"), 1.0)
        x = ops.maximum(ops.cast(inputs, "float32"), self.eps)
        return ops.power(ops.mean(ops.power(x, p), axis=(1, 2)), 1.0 / p)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[-1])

    def get_config(self):
        config = super().get_config()
        config.update(p=self.initial_p, trainable_p=self.trainable_p, eps=self.eps)
        return config


@saving.register_keras_serializable(package="lmrec")
class SpatialAttention(layers.Layer):
    """Parameter-free spatial attention: locations weighted by their activation energy.

    Energy e = ‖x_l‖₂ (the L2 norm of each location's C-vector), standardized
    over the locations of each image (z-score, so the weighting does not depend
    on the backbone's activation scale), then softmaxed over locations into
    weights a_l (summing to 1). The output is x_l · a_l · H·W: a uniform map is
    left unchanged and GlobalAveragePooling after it gives the attention-weighted
    mean Σ a_l x_l, so strong, object-like regions count more than background.

    The weights are a function of the features, not something to learn, so no
    gradient flows through them (only through x_l): through the norm and the
    z-score (1/std, and 1/‖x_l‖ at all-zero ReLU locations) it was unbounded,
    and fine-tuning EfficientNet-Lite0 under this head collapsed to chance in
    one epoch (lmrec.compare on vietnam_landmarks).
    """

    def __init__(self, epsilon: float = 1e-6, **kwargs):
        super().__init__(**kwargs)
        self.epsilon = float(epsilon)

    def attention(self, inputs):
        """Weights [B, H, W, 1] over locations, summing to 1 per image."""
        x = ops.cast(inputs, "float32")
        energy = ops.sqrt(ops.sum(ops.square(x), axis=-1, keepdims=True) + self.epsilon)
        mean = ops.mean(energy, axis=(1, 2), keepdims=True)
        std = ops.std(energy, axis=(1, 2), keepdims=True)
        z = (energy - mean) / (std + self.epsilon)
        z = z - ops.max(z, axis=(1, 2), keepdims=True)
        weights = ops.exp(z)
        return weights / ops.sum(weights, axis=(1, 2), keepdims=True)

    def call(self, inputs):
        weights = ops.stop_gradient(self.attention(inputs))
        locations = ops.cast(ops.shape(inputs)[1] * ops.shape(inputs)[2], "float32")
        return inputs * ops.cast(weights * locations, inputs.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(epsilon=self.epsilon)
        return config


@saving.register_keras_serializable(package="lmrec")
class SelfAttention2D(layers.Layer):
    """SAGAN self-attention over the H·W locations, output γ·attended + input.

    1x1 convolutions give queries and keys with C/reduction channels and values
    with C; location i attends to every location j with softmax_j(q_i · k_j)
    (no 1/√d scaling, as in SAGAN). γ is a trainable scalar starting at 0, so
    the layer begins as the identity and the network learns how much non-local
    context to mix in. The attention matrix is [B, H·W, H·W]: 100² per image
    for a 10x10 map, 361² for 19x19.

    Args:
      reduction: channel reduction of queries and keys.
    """

    def __init__(self, reduction: int = 8, **kwargs):
        super().__init__(**kwargs)
        if reduction < 1:
            raise ValueError(f"reduction must be at least 1, got {reduction}")
        self.reduction = int(reduction)

    def build(self, input_shape):
        channels = input_shape[-1]
        inner = max(1, channels // self.reduction)
        self.query = layers.Conv2D(inner, 1, dtype=self.dtype_policy, name="query")
        self.key = layers.Conv2D(inner, 1, dtype=self.dtype_policy, name="key")
        self.value = layers.Conv2D(channels, 1, dtype=self.dtype_policy, name="value")
        for conv in (self.query, self.key, self.value):
            conv.build(input_shape)
        self.gamma = self.add_weight(name="gamma", shape=(), initializer="zeros")

    def call(self, inputs):
        shape = ops.shape(inputs)
        batch, locations = shape[0], shape[1] * shape[2]
        query = ops.reshape(self.query(inputs), (batch, locations, -1))
        key = ops.reshape(self.key(inputs), (batch, locations, -1))
        value = ops.reshape(self.value(inputs), (batch, locations, -1))
        query, key = ops.cast(query, "float32"), ops.cast(key, "float32")
        logits = ops.matmul(query, ops.transpose(key, (0, 2, 1)))  # [B, N, N]
        attention = ops.softmax(logits, axis=-1)
        attended = ops.matmul(ops.cast(attention, value.dtype), value)
        attended = ops.reshape(attended, shape)
        return ops.cast(self.gamma, inputs.dtype) * attended + inputs

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(reduction=self.reduction)
        return config
