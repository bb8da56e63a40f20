"""CosineClassifier: scaled cosine logits, the last layer of a head trained with ArcFace.

ArcFace (Deng et al. 2019) compares directions, not lengths: the logit of class
j is s·cos θ_j, θ_j the angle between the L2-normalized feature and the
L2-normalized class weight W_j. The loss (lmrec.losses) adds the angular margin
to the target class; the layer itself has none, so inference is the plain
softmax of s·cos θ. Sub-center ArcFace (Deng et al. 2020) gives each class K
weights and takes the closest, cos θ_j = max_k cos θ_jk, so a class with
several looks (inside and outside of a building) need not squeeze them into
one direction, and noisy images can gather at a minor sub-center.
"""

from __future__ import annotations

from keras import layers, ops, saving


@saving.register_keras_serializable(package="lmrec")
class CosineClassifier(layers.Layer):
    """Features [B, D] -> scale · cos(feature, class weight) [B, num_classes], in float32.

    Args:
      num_classes: outputs.
      scale: s, the logits' range is [-s, s]; the ArcFace loss divides by it to
        get the cosines back, so both must use the same value.
      subcenters: K weights per class (kernel [D, num_classes·K], class j's
        sub-centers in columns j·K ... j·K + K - 1); 1 is the plain cosine classifier.
    """

    def __init__(self, num_classes: int, scale: float = 30.0, subcenters: int = 1, **kwargs):
        # Normalizing in float16 loses the small angles the margin works on.
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        if num_classes < 1 or subcenters < 1 or scale <= 0:
            raise ValueError(
                f"CosineClassifier needs num_classes >= 1, subcenters >= 1 and scale > 0; got "
                f"{num_classes}, {subcenters} and {scale}"
            )
        self.num_classes = int(num_classes)
        self.scale = float(scale)
        self.subcenters = int(subcenters)

    def build(self, input_shape):
        self.kernel = self.add_weight(
            name="kernel",
            shape=(input_shape[-1], self.num_classes * self.subcenters),
            initializer="glorot_uniform",
        )

    def cosine(self, inputs):
        """cos θ_j [B, num_classes]: the largest over each class's sub-centers."""
        features = ops.normalize(ops.cast(inputs, "float32"), axis=-1, epsilon=1e-12)
        weights = ops.normalize(ops.cast(self.kernel, "float32"), axis=0, epsilon=1e-12)
        cosines = ops.matmul(features, weights)
        if self.subcenters == 1:
            return cosines
        cosines = ops.reshape(cosines, (-1, self.num_classes, self.subcenters))
        return ops.max(cosines, axis=-1)

    def call(self, inputs):
        return self.scale * self.cosine(inputs)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.num_classes)

    def get_config(self):
        config = super().get_config()
        config.update(num_classes=self.num_classes, scale=self.scale, subcenters=self.subcenters)
        return config
