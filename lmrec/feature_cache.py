"""Phase 1 on cached features: the frozen backbone runs once, the head trains for many epochs.

While the backbone is frozen its output does not change, yet an ordinary phase 1
runs it on every image in every epoch, which is nearly all of the phase's time:
the head is a few small layers. With the cache (--cache_frozen_features), the
backbone runs over the training images once (--augment=none) or
--feature_cache_passes times (each pass with its own random crops and flips;
epoch e trains on pass e mod K), and over the validation images once. The head
then trains on the stored outputs with the same optimizer, schedule, loss, batch
size, steps per epoch and callbacks, so history.csv, the checkpoints (of the
whole classifier), TensorBoard and its sample images come out as without it.

What is stored is the output of the head's leading fixed layers (FIXED_LAYERS:
no trainable weights, no randomness) when the head begins with one:
gap_dense512's GlobalAveragePooling turns EfficientNet-Lite0's 7x7x1280 map
into 1280 numbers, 49 times less memory and work per epoch.

When the cache is exact, and when it is not used:
- The backbone is called with training=False. A pretrained backbone always runs
  so; a backbone trained from scratch runs in training mode, but in phase 1 it is
  not trainable, and Keras 3's BatchNormalization then uses its moving
  statistics, so its features are the same. Random layers in a scratch backbone
  (dropout, noise) would still draw in training mode: no cache.
- --mixing (MixUp, CutMix) mixes images, and the backbone's features of a mixed
  image are not the mix of its features: no cache. (Mixing cached features
  would be manifold mixup, a different regularizer.)
- --balance=resample draws the cached examples with the same per-class
  rejection sampling as the image stream; --balance=class_weights weights them
  the same way.
- With augmentation, the head sees K augmented versions of each image instead
  of one per epoch: the approximation that buys the speed (K = epochs is the
  uncached phase up to the random draws).
- auto also leaves the cache off where it saves nothing: when running the
  backbone over the cached passes reads as many images as the phase would.

The cache is in memory when it fits in MEMORY_FRACTION of the free memory, else
(or with --feature_cache_dir) a .npy file per split on disk, memory-mapped; it
is deleted when phase 1 ends. The order in which examples arrive differs from
the image pipeline's (which is not repeatable anyway: its maps run in any
order), so the two give equal weights exactly where order does not matter, as
with one batch per epoch (tests/test_feature_cache.py).
"""

from __future__ import annotations

import itertools
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf
from tensorflow.python.framework import convert_to_constants

from lmrec import atomic, performance
from lmrec.config import ExperimentConfig
from lmrec.data import pipeline
from lmrec.errors import UserError
from lmrec.models import backbones, pooling
from lmrec.registry import Registry

# --cache_frozen_features: whether phase 1 trains on cached features.
CACHE_MODES = Registry(
    "feature cache mode",
    {
        "auto": "when the cache is exact and saves time",
        "on": "always; an error where the cache would not be exact",
        "off": "never",
    },
    flag="cache_frozen_features",
)
# An in-memory cache may take this share of the free memory; a larger one goes to disk.
MEMORY_FRACTION = 0.5
# Head layers that may run once, before training: no trainable weights, no randomness, the
# same output in training and inference. The head's leading run of them is cached.
FIXED_LAYERS = (
    keras.layers.GlobalAveragePooling2D,
    keras.layers.GlobalMaxPooling2D,
    keras.layers.Flatten,
    pooling.SpatialAttention,
    pooling.CompactBilinearPooling,
)


def check(config: ExperimentConfig) -> None:
    """Checks the cache flags.

    Raises:
      UserError: naming the flag.
    """
    train = config.train
    CACHE_MODES.get(train.cache_frozen_features)
    if train.feature_cache_passes < 1:
        raise UserError(f"--feature_cache_passes must be >= 1, got {train.feature_cache_passes}")


def fixed_prefix(head: keras.Model) -> list[keras.layers.Layer]:
    """The head's leading FIXED_LAYERS, in order, each the only consumer of the one before."""
    layers = [layer for layer in head.layers if not isinstance(layer, keras.layers.InputLayer)]
    tensor = head.input
    prefix = []
    for layer in layers:
        consumers = [
            other for other in layers if any(t is tensor for t in keras.tree.flatten(other.input))
        ]
        if consumers != [layer] or not isinstance(layer, FIXED_LAYERS):
            break
        prefix.append(layer)
        tensor = layer.output
    return prefix


def random_layers(model: keras.Model) -> list[str]:
    """Names of the layers that draw random numbers when called in training mode.

    Keras 3 layers that do (Dropout and its kin, noise, random augmentation) hold
    a SeedGenerator, which Keras tracks in _seed_generators.
    """
    return [
        layer.name
        for layer in model._flatten_layers(include_self=False)
        if getattr(layer, "_seed_generators", None)
    ]


@dataclass
class Plan:
    """Whether phase 1 trains on cached features and what the cache will hold.

    Attributes:
      reason: why phase 1 reads images instead; "" when it uses the cache.
      passes: training passes cached.
      train_images, val_images: images per training pass, and validation images.
      shape, dtype: of one cached feature (dtype: the backbone's output dtype, stored
        exactly; bfloat16 as float32).
      prefix: the head's layers that run while caching (fixed_prefix).
      directory: the parent folder of an on-disk cache; None keeps it in memory.
      extract: normalized images -> what is cached (_extract_function: a frozen graph).
      augmented: whether the passes are augmented (--augment other than none).
      seconds: the time planning took (tracing the backbone), part of the cache's cost.
    """

    reason: str = ""
    passes: int = 0
    train_images: int = 0
    val_images: int = 0
    shape: tuple[int, ...] = ()
    dtype: np.dtype | None = None
    prefix: tuple[keras.layers.Layer, ...] = ()
    directory: str | None = None
    extract: Callable[[tf.Tensor], tf.Tensor] | None = None
    augmented: bool = False
    seconds: float = 0.0

    @property
    def use(self) -> bool:
        return not self.reason

    @property
    def nbytes(self) -> int:
        rows = self.passes * self.train_images + self.val_images
        return rows * math.prod(self.shape) * np.dtype(self.dtype).itemsize

    def describe(self) -> str:
        """One line for the run's log: what is cached, or why not."""
        if not self.use:
            return f"Phase frozen reads images (no feature cache): {self.reason}."
        kind = ("augmented " if self.augmented else "") + ("passes" if self.passes > 1 else "pass")
        where = "in memory" if self.directory is None else f"on disk in {self.directory}"
        after = f" after {', '.join(layer.name for layer in self.prefix)}" if self.prefix else ""
        return (
            f"Phase frozen on cached features: the backbone runs once over {self.passes} {kind} "
            f"of {self.train_images} training images and {self.val_images} validation images; "
            f"{math.prod(self.shape)} numbers each (shape {list(self.shape)}{after}), "
            f"{np.dtype(self.dtype).name}, {_megabytes(self.nbytes)} {where}."
        )


def _megabytes(nbytes: int) -> str:
    return f"{nbytes / 2**20:.1f} MB"


def _available_memory() -> int:
    """Bytes of memory free for new allocations (Linux MemAvailable, else free pages)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def cached_passes(config: ExperimentConfig) -> int:
    """Training passes the cache holds: 1 without augmentation, else K, at most the epochs."""
    if config.data.augment == "none":
        return 1
    return max(1, min(config.train.feature_cache_passes, config.train.epochs_frozen))


def plan(
    model, config: ExperimentConfig, stats: dict, steps_per_epoch: int, model_dir: str
) -> Plan:
    """Decides whether phase 1 trains on cached features, and where they go.

    Args:
      model: the Classifier (its backbone and head).
      config: the resolved experiment (data_dir and image_size filled in).
      stats: the dataset's stats.json (image counts).
      steps_per_epoch: of phase 1, as train computed it.
      model_dir: the run folder, home of an on-disk cache without --feature_cache_dir.

    Returns:
      A Plan; its reason says why not when the cache is not used.

    Raises:
      UserError: --cache_frozen_features=on where the cache would not be exact, or
        where it does not fit on disk.
    """
    mode = config.train.cache_frozen_features
    epochs = config.train.epochs_frozen
    if mode == "off":
        return Plan(reason="--cache_frozen_features=off")
    if epochs <= 0:
        return Plan(reason="no frozen epochs")
    train_images = int(stats["totals"]["train"])
    val_images = int(stats["totals"].get("val", 0))
    passes = cached_passes(config)

    def refuse(reason: str) -> Plan:
        if mode == "on":
            raise UserError(f"--cache_frozen_features=on, but {reason}")
        return Plan(reason=reason)

    if config.data.mixing != "none":
        return refuse(
            f"--mixing={config.data.mixing} mixes images, and the backbone's features of a "
            "mixed image are not the mix of their features (--mixing=none allows the cache)"
        )
    if not backbones.uses_pretrained_weights(config.model.weights):
        drawing = random_layers(model.backbone)
        if drawing:
            return refuse(
                f"the backbone trained from scratch runs in training mode, where its random "
                f"layers ({', '.join(drawing[:3])}{', ...' if len(drawing) > 3 else ''}) "
                "make its features change from call to call"
            )
    batch_size = config.data.batch_size
    read_uncached = epochs * (steps_per_epoch * batch_size + val_images)
    read_cached = passes * train_images + val_images
    if mode == "auto" and read_cached >= read_uncached:
        return Plan(
            reason=f"caching {passes} pass(es) runs the backbone on {read_cached} images, no "
            f"fewer than the {read_uncached} that {epochs} frozen epoch(s) read"
        )

    started = time.time()
    prefix = tuple(fixed_prefix(model.head))
    extract, output = _extract_function(
        model, prefix, config.data.image_size, config.train.jit_compile
    )
    dtype = np.dtype(np.float16 if output.dtype == tf.float16 else np.float32)
    result = Plan(
        passes=passes,
        train_images=train_images,
        val_images=val_images,
        shape=tuple(int(d) for d in output.shape[1:]),
        dtype=dtype,
        prefix=prefix,
        extract=extract,
        augmented=config.data.augment != "none",
        seconds=time.time() - started,
    )
    if not config.train.feature_cache_dir and result.nbytes <= MEMORY_FRACTION * (
        _available_memory()
    ):
        return result
    result.directory = config.train.feature_cache_dir or model_dir
    os.makedirs(result.directory, exist_ok=True)
    free = shutil.disk_usage(result.directory).free
    if result.nbytes > free:
        return refuse(
            f"the features ({_megabytes(result.nbytes)}) fit neither in memory nor in the "
            f"{_megabytes(free)} free in {result.directory} (--feature_cache_dir)"
        )
    return result


def _extract_function(model, prefix, image_size: int, jit_compile: str):
    """Normalized images -> the backbone in inference mode -> the head's fixed layers.

    A plain function, not a Keras model: calling the layers on KerasTensors would
    add nodes to the classifier's graph. The traced graph is frozen: the
    backbone's weights become constants, as they are for the whole phase, so
    TensorFlow's graph optimizer folds BatchNormalization into the convolutions
    (15-25% faster on a 2-core CPU for EfficientNet-Lite0; the features agree to 1e-5).
    With --jit_compile XLA compiles the traced function as it is.

    Returns:
      (extract, output): the callable, and a tf.Tensor spec of its output (shape, dtype).
    """

    def features(images):
        out = model.backbone(images, training=False)
        for layer in prefix:
            out = layer(out)
        return out

    signature = [tf.TensorSpec([None, image_size, image_size, 3], tf.float32)]
    jit = performance.jit_compile(jit_compile) is True
    traced = tf.function(features, input_signature=signature, jit_compile=jit)
    concrete = traced.get_concrete_function()
    output = concrete.structured_outputs
    if jit:
        return traced, output
    try:
        frozen = convert_to_constants.convert_variables_to_constants_v2(concrete)
    except ValueError:  # A graph over protobuf's 2 GB limit: run it with its variables.
        return traced, output

    def extract(images):
        return frozen(images)[0]

    return extract, output


@dataclass
class FeatureCache:
    """Phase 1's cached features and the part of the head that trains on them.

    Attributes:
      features: [passes * images, *shape], pass after pass.
      labels: int32 class ids of those rows.
      passes: training passes held.
      val_features, val_labels: the validation split's, in order; None without one.
      head: what trains: the head after its fixed prefix (the whole head without one);
        its variables are the classifier's.
      plan: what was decided.
      seconds: the time planning and extraction took.
      directory: the folder of an on-disk cache, deleted by close().
    """

    features: np.ndarray
    labels: np.ndarray
    passes: int
    val_features: np.ndarray | None
    val_labels: np.ndarray | None
    head: keras.Model
    plan: Plan
    seconds: float
    directory: str | None = None

    @property
    def images(self) -> int:
        """Training images per pass."""
        return len(self.labels) // self.passes

    def training_dataset(
        self, config: ExperimentConfig, num_classes: int, class_counts: list[int] | None = None
    ) -> tf.data.Dataset:
        """(features, one-hot labels[, sample weights]) batches, forever, as train.datasets().

        Pass after pass (0, 1, ..., K-1, 0, ...), each shuffled (seeded by --seed);
        --balance=resample rejection-samples each pass by label, class_weights adds
        the same per-example weights.
        """
        balance = config.data.balance
        keep = None
        if balance == "resample":
            keep = pipeline.resample_probabilities(class_counts)
        batches = _index_batches(
            self.labels, self.passes, config.data.batch_size, config.data.seed, keep
        )
        dataset = self._dataset(lambda: batches, self.features, self.labels, num_classes)
        if balance == "class_weights":
            dataset = pipeline.with_class_weights(dataset, pipeline.class_weights(class_counts))
        return dataset.prefetch(tf.data.AUTOTUNE)

    def validation_dataset(self, batch_size: int, num_classes: int) -> tf.data.Dataset | None:
        """The cached validation features in order, batched; None without a val split."""
        if self.val_features is None:
            return None
        count = len(self.val_labels)

        def batches():
            for start in range(0, count, batch_size):
                yield np.arange(start, min(start + batch_size, count))

        dataset = self._dataset(batches, self.val_features, self.val_labels, num_classes)
        dataset = dataset.apply(tf.data.experimental.assert_cardinality(-(-count // batch_size)))
        return dataset.prefetch(tf.data.AUTOTUNE)

    def _dataset(self, make_batches, features, labels, num_classes: int) -> tf.data.Dataset:
        def generate():
            for rows in make_batches():
                yield features[rows], labels[rows]

        signature = (
            tf.TensorSpec([None, *features.shape[1:]], tf.as_dtype(features.dtype)),
            tf.TensorSpec([None], tf.int32),
        )
        dataset = tf.data.Dataset.from_generator(generate, output_signature=signature)
        return dataset.map(lambda x, y: (x, tf.one_hot(y, num_classes)))

    def predict(self, images):
        """Normalized images -> probabilities, as the classifier in inference mode computes them,
        through the traced extraction (no second trace of the backbone)."""
        return self.head(self.plan.extract(images), training=False)

    def describe(self) -> str:
        return f"Features cached in {self.seconds:.1f} s."

    def info(self) -> dict:
        """What the cache held, for TrainResult.feature_cache and benchmarks."""
        return {
            "used": True,
            "passes": self.passes,
            "train_images": self.images,
            "val_images": 0 if self.val_labels is None else len(self.val_labels),
            "shape": list(self.plan.shape),
            "dtype": np.dtype(self.plan.dtype).name,
            "megabytes": round(self.plan.nbytes / 2**20, 1),
            "storage": "memory" if self.plan.directory is None else "disk",
            "seconds": self.seconds,
        }

    def close(self) -> None:
        """Deletes an on-disk cache (an in-memory one goes with its last reference)."""
        if self.directory:
            shutil.rmtree(self.directory, ignore_errors=True)
            self.directory = None


def _index_batches(labels, passes: int, batch_size: int, seed: int, keep=None):
    """Row indices of each batch, forever: pass after pass, each pass shuffled.

    Batches run across pass boundaries, as the image pipeline's run across
    epochs; a batch's rows are sorted (a batch is a set, and a memory-mapped file
    reads faster in order).
    """
    rng = np.random.default_rng(seed)
    images = len(labels) // passes
    pending = np.empty(0, np.int64)
    for pass_index in itertools.cycle(range(passes)):
        order = pass_index * images + rng.permutation(images)
        if keep is not None:
            order = order[rng.random(images) < keep[labels[order]]]
        pending = np.concatenate([pending, order])
        while len(pending) >= batch_size:
            yield np.sort(pending[:batch_size])
            pending = pending[batch_size:]


def extract(
    model, config: ExperimentConfig, plan: Plan, strategy, verbose: int = 0
) -> FeatureCache:
    """Runs the frozen backbone (and the head's fixed prefix) over the images once.

    Args:
      model: the Classifier, backbone frozen.
      config: the resolved experiment.
      plan: from plan(), with plan.use.
      strategy: the run's tf.distribute strategy; the head part that trains on the
        features is built in its scope (the extraction itself runs on one device).
      verbose: 0 silent, 1 a progress bar, 2 a line per split.

    Returns:
      The cache; call close() after the phase.
    """
    started = time.time()
    preprocess = backbones.get_spec(config.model.backbone).preprocess
    directory = None
    if plan.directory is not None:
        directory = tempfile.mkdtemp(prefix=".feature-cache-", dir=plan.directory)
    try:
        train_rows = plan.passes * plan.train_images
        images = pipeline.run_dataset(config, "train", preprocess, passes=plan.passes)
        features, labels = _fill(plan, images, train_rows, directory, "train", verbose)
        val_features = val_labels = None
        if plan.val_images:
            images = pipeline.run_dataset(config, "val", preprocess, num_examples=plan.val_images)
            val_features, val_labels = _fill(
                plan, images, plan.val_images, directory, "val", verbose
            )
    except BaseException:
        if directory:
            shutil.rmtree(directory, ignore_errors=True)
        raise
    with strategy.scope(), performance.dtype_policy(model.head.dtype_policy.name):
        head = _head_after(model.head, plan.prefix)
    return FeatureCache(
        features=features,
        labels=labels,
        passes=plan.passes,
        val_features=val_features,
        val_labels=val_labels,
        head=head,
        plan=plan,
        seconds=round(plan.seconds + time.time() - started, 2),
        directory=directory,
    )


def _head_after(head: keras.Model, prefix) -> keras.Model:
    """The head from its fixed prefix's output on, sharing the head's layers and variables."""
    if not prefix:
        return head
    return keras.Model(prefix[-1].output, head.output, name="head_on_cached_features")


def _fill(plan: Plan, dataset, rows: int, directory: str | None, split: str, verbose: int):
    """Runs plan.extract over the dataset into a [rows, *shape] array (memory or .npy file)."""
    labels = np.empty(rows, np.int32)
    shape = (rows, *plan.shape)
    progress = keras.utils.Progbar(rows, verbose=verbose, unit_name="image") if verbose else None

    def fill(features):
        row = 0
        for images, batch_labels in dataset:
            out = plan.extract(images).numpy()
            count = out.shape[0]
            if row + count > rows:
                raise UserError(
                    f"The {split} shards in the data folder hold more images than stats.json "
                    f"counts ({rows // (plan.passes if split == 'train' else 1)}): re-prepare it"
                )
            features[row : row + count] = out
            labels[row : row + count] = batch_labels.numpy()
            row += count
            if progress is not None:
                progress.update(row)
        if row != rows:
            raise UserError(
                f"The {split} shards hold fewer images than stats.json counts: re-prepare it"
            )

    if directory is None:
        features = np.empty(shape, plan.dtype)
        fill(features)
        return features, labels
    path = os.path.join(directory, f"{split}.npy")
    with atomic.replacing(path) as tmp:
        array = np.lib.format.open_memmap(tmp, mode="w+", dtype=plan.dtype, shape=shape)
        fill(array)
        array.flush()
        del array
    return np.load(path, mmap_mode="r"), labels
