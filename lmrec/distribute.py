"""The tf.distribute strategy, picked by name in one place.

Build and compile inside strategy.scope(); Keras' fit() splits each global
batch across the replicas.
"""

from __future__ import annotations

from collections.abc import Callable

import tensorflow as tf

from lmrec.errors import UserError


def _auto() -> tf.distribute.Strategy:
    """MirroredStrategy over the visible GPUs when there are any, else the default strategy."""
    if tf.config.list_logical_devices("GPU"):
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


STRATEGIES: dict[str, Callable[[], tf.distribute.Strategy]] = {
    "auto": _auto,
    "default": tf.distribute.get_strategy,
    # All local GPUs; with none, every logical CPU device (tests split the CPU in two).
    "mirrored": lambda: tf.distribute.MirroredStrategy(
        devices=[d.name for d in tf.config.list_logical_devices("GPU")]
        or [d.name for d in tf.config.list_logical_devices("CPU")]
    ),
}


def get_factory(name: str) -> Callable[[], tf.distribute.Strategy]:
    """Looks up a strategy by name; an unknown name raises UserError listing the valid ones."""
    try:
        return STRATEGIES[name]
    except KeyError:
        raise UserError(
            f"Unknown --strategy={name!r}; valid strategies: {', '.join(sorted(STRATEGIES))}"
        ) from None


def get_strategy(name: str) -> tf.distribute.Strategy:
    return get_factory(name)()
