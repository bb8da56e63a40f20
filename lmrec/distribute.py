"""The tf.distribute strategy, picked by name in one place.

Build and compile inside strategy.scope(); Keras' fit() splits each global
batch across the replicas. --batch_size is per replica: the pipeline batches
global_batch_size() photos, and --lr_scaling may raise the learning rates with it.

multi_worker is MultiWorkerMirroredStrategy configured from the TF_CONFIG
environment variable (one process per machine, each started with its own
task index); every worker trains in lockstep, and only the chief (worker 0)
writes the model_dir; the others write to model_dir/workers/<task>.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable

import keras
import tensorflow as tf

from lmrec.errors import UserError
from lmrec.registry import Registry


def _auto() -> tf.distribute.Strategy:
    """MirroredStrategy over the visible GPUs when there are any, else the default strategy."""
    if tf.config.list_logical_devices("GPU"):
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def _mirrored() -> tf.distribute.Strategy:
    # All local GPUs; with none, every logical CPU device (tests split the CPU in two).
    return tf.distribute.MirroredStrategy(
        devices=[d.name for d in tf.config.list_logical_devices("GPU")]
        or [d.name for d in tf.config.list_logical_devices("CPU")]
    )


def cluster_from_env() -> dict:
    """TF_CONFIG, checked: {"cluster": {"worker": [host:port, ...]}, "task": {...}}.

    Raises:
      UserError: TF_CONFIG is unset, not JSON, or lacks the cluster or the task.
    """
    raw = os.environ.get("TF_CONFIG", "")
    example = (
        'TF_CONFIG=\'{"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
        '"task": {"type": "worker", "index": 0}}\''
    )
    if not raw:
        raise UserError(
            "--strategy=multi_worker reads the cluster from the TF_CONFIG environment "
            f"variable, which is not set. On each machine set e.g. {example} (index 0, 1, ...) "
            "and start the same command (README: Training on several machines)."
        )
    try:
        tf_config = json.loads(raw)
        workers = tf_config["cluster"]["worker"]
        task = tf_config["task"]
        task_type, index = task["type"], int(task["index"])
    except (ValueError, KeyError, TypeError) as error:
        raise UserError(f"TF_CONFIG is not valid ({error!r}); expected e.g. {example}") from None
    if task_type in ("worker", "chief") and not 0 <= index < len(
        tf_config["cluster"].get(task_type, [])
    ):
        raise UserError(f"TF_CONFIG's task index {index} is not in its {task_type} list")
    if not workers:
        raise UserError(f"TF_CONFIG lists no workers; expected e.g. {example}")
    return tf_config


def _multi_worker() -> tf.distribute.Strategy:
    cluster_from_env()
    _fix_keras_for_multi_worker()
    return tf.distribute.MultiWorkerMirroredStrategy()


def _tpu() -> tf.distribute.Strategy:
    """TPUStrategy on a Colab or Cloud TPU (TPU_NAME, or the runtime's own TPU).

    TPUs read training data from Google Cloud Storage (gs://...), not local disks:
    prepare the TFRecords into a bucket and pass it as --data_dir.
    """
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(
            tpu=os.environ.get("TPU_NAME", "")
        )
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
    except (ValueError, RuntimeError, tf.errors.OpError) as error:
        raise UserError(
            f"--strategy=tpu found no TPU ({error}). In Colab choose Runtime > Change runtime "
            "type > TPU; on Cloud TPU set TPU_NAME."
        ) from None
    return tf.distribute.TPUStrategy(resolver)


STRATEGIES: Registry[Callable[[], tf.distribute.Strategy]] = Registry(
    "strategy",
    {
        "auto": _auto,
        "default": tf.distribute.get_strategy,
        "mirrored": _mirrored,
        "multi_worker": _multi_worker,
        "tpu": _tpu,
    },
)


def get_factory(name: str) -> Callable[[], tf.distribute.Strategy]:
    """Looks up a strategy by name; an unknown name raises UserError listing the valid ones."""
    return STRATEGIES.get(name)


def get_strategy(name: str) -> tf.distribute.Strategy:
    return get_factory(name)()


def is_multi_worker(strategy: tf.distribute.Strategy) -> bool:
    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) and bool(
        strategy.cluster_resolver.cluster_spec().as_dict()
    )


def task(strategy: tf.distribute.Strategy) -> tuple[str, int]:
    """(task type, index) of this process; ("worker", 0) outside a cluster."""
    if not is_multi_worker(strategy):
        return "worker", 0
    resolver = strategy.cluster_resolver
    return resolver.task_type, int(resolver.task_id)


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """The task that writes the model_dir: "chief" if the cluster has one, else worker 0."""
    task_type, index = task(strategy)
    if not is_multi_worker(strategy):
        return True
    has_chief = "chief" in strategy.cluster_resolver.cluster_spec().as_dict()
    return task_type == "chief" or (not has_chief and task_type == "worker" and index == 0)


def worker_model_dir(model_dir: str, strategy: tf.distribute.Strategy) -> str:
    """Where this task writes: the model_dir for the chief, a folder of its own for others.

    Every worker must save its checkpoints (they hold the same weights), but two
    processes writing one file would corrupt it.
    """
    if is_chief(strategy):
        return model_dir
    task_type, index = task(strategy)
    return os.path.join(model_dir, "workers", f"{task_type}-{index}")


def num_workers(strategy: tf.distribute.Strategy) -> int:
    if not is_multi_worker(strategy):
        return 1
    spec = strategy.cluster_resolver.cluster_spec().as_dict()
    return len(spec.get("worker", [])) + len(spec.get("chief", []))


def shard_across_workers(dataset: tf.data.Dataset, num_files: int, strategy) -> tf.data.Dataset:
    """How workers split a dataset: by file when each gets a file, else by record.

    tf.data's AUTO policy fails outright when a split has fewer files than there are
    workers (a small val split is often one file); DATA sharding then has every
    worker read everything and keep its 1/n.
    """
    if not is_multi_worker(strategy):
        return dataset
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = (
        tf.data.experimental.AutoShardPolicy.FILE
        if num_files >= num_workers(strategy)
        else tf.data.experimental.AutoShardPolicy.DATA
    )
    return dataset.with_options(options)


# --lr_scaling -> factor on the learning rates for a given number of replicas.
# linear: Goyal et al. 2017 (ImageNet in 1 hour), for SGD; sqrt: the usual rule
# for Adam-type optimizers (Krizhevsky 2014, Hoffer et al. 2017).
LR_SCALING: Registry[Callable[[int], float]] = Registry(
    "learning-rate scaling",
    {
        "none": lambda replicas: 1.0,
        "linear": float,
        "sqrt": math.sqrt,
    },
    flag="lr_scaling",
)


def global_batch_size(batch_size: int, strategy: tf.distribute.Strategy) -> int:
    """--batch_size photos per replica, times the replicas training in sync."""
    return batch_size * strategy.num_replicas_in_sync


def lr_scale(scaling: str, replicas: int) -> float:
    """Factor on the learning rates for a global batch `replicas` times --batch_size.

    Raises:
      UserError: an unknown --lr_scaling (see LR_SCALING).
    """
    return float(LR_SCALING.get(scaling)(replicas))


def sync_batchnorm(model: keras.Model, strategy: tf.distribute.Strategy) -> int:
    """Makes every BatchNormalization layer average its batch statistics over replicas.

    Without it each replica normalizes with, and updates its moving statistics from,
    its own slice of the batch: the trainable weights stay equal (gradients are
    all-reduced) but the moving means and variances drift apart per replica and
    per worker, and a small per-replica batch gives noisy statistics. Returns how
    many layers now synchronize (0 on one replica, where there is nothing to sync).
    """
    if strategy.num_replicas_in_sync < 2:
        return 0
    layers = [layer for layer in _walk(model) if isinstance(layer, keras.layers.BatchNormalization)]
    for layer in layers:
        layer.synchronized = True
    return len(layers)


def _walk(model):
    """Every layer of a model, descending into nested models (backbone, head)."""
    for layer in getattr(model, "layers", []):
        yield layer
        yield from _walk(layer)


_KERAS_FIXED = False


def _fix_keras_for_multi_worker() -> None:
    """Works around Keras 3's fit() under MultiWorkerMirroredStrategy (keras-team/keras#20585).

    Keras 3.15 fails in two places there: the symbolic build before the first step
    averages a distributed input batch with strategy.reduce (which a collective
    strategy cannot do eagerly), and each step averages the scalar logs with
    reduce(axis=0), which scalars lack. Both are replaced for multi-worker
    strategies only: the build takes this worker's first replica's batch (only
    shapes and dtypes matter), and scalar logs are averaged over all replicas
    with axis=None. Tested by a two-process training on loopback that must end
    with identical weights on both workers.
    """
    global _KERAS_FIXED
    if _KERAS_FIXED:
        return
    from keras import tree
    from keras.src.backend.tensorflow import trainer as tf_trainer

    original_build = tf_trainer.TensorFlowTrainer._maybe_symbolic_build
    original_reduce = tf_trainer.reduce_per_replica

    def local_value(strategy, value):
        if isinstance(value, tf.distribute.DistributedValues):
            return strategy.experimental_local_results(value)[0]
        return value

    def maybe_symbolic_build(self, iterator=None, data_batch=None):
        strategy = self._distribute_strategy
        if iterator is not None and tf_trainer._collective_all_reduce_multi_worker(strategy):
            for _, _, batches in iterator:
                batch = next(batches)
                data_batch = tree.map_structure(lambda v: local_value(strategy, v), batch)
                break
            iterator = None
        return original_build(self, iterator=iterator, data_batch=data_batch)

    def reduce_per_replica(values, strategy, reduction):
        if reduction in ("auto", "mean") and tf_trainer._collective_all_reduce_multi_worker(
            strategy
        ):

            def mean(value):
                if not tf_trainer._is_per_replica_instance(value):
                    return value
                return strategy.reduce("MEAN", value, axis=None)

            return tree.map_structure(mean, values)
        return original_reduce(values, strategy, reduction)

    tf_trainer.TensorFlowTrainer._maybe_symbolic_build = maybe_symbolic_build
    tf_trainer.reduce_per_replica = reduce_per_replica
    _KERAS_FIXED = True
