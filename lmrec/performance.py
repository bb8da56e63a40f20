"""How training uses the hardware: --mixed_precision (Keras dtype policy) and --jit_compile (XLA).

After Model Garden's official/modeling/performance.py. Mixed precision computes
in float16 or bfloat16 and keeps the variables, the heads' softmax and the
losses in float32 (lmrec.models.heads, lmrec.losses); Keras' compile() wraps
the optimizer in a LossScaleOptimizer for mixed_float16 by itself
(auto_scale_loss), so float16 gradients do not underflow. The policy applies to
training only: evaluate, export and predict rebuild the model in float32
(the variables are float32 either way, so the checkpoint loads unchanged), and
the SavedModel serves float32 everywhere, CPUs included.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import keras
import tensorflow as tf

from lmrec.registry import Registry

# --mixed_precision -> Keras dtype policy. "auto" is mixed_float16 with a GPU and
# float32 without one: most CPUs have no bfloat16 arithmetic and run mixed_bfloat16
# slower than float32, so it is only ever used when asked for.
MIXED_PRECISION: Registry[str] = Registry(
    "mixed precision",
    {
        "none": "float32",
        "auto": "",  # resolved by dtype_policy_name()
        "float16": "mixed_float16",
        "bfloat16": "mixed_bfloat16",
    },
)

# --jit_compile -> model.compile(jit_compile=...). Keras' "auto" uses XLA when the
# model supports it, except on CPU-only machines and under tf.distribute.
JIT_COMPILE: Registry[bool | str] = Registry(
    "XLA setting", {"auto": "auto", "true": True, "false": False}, flag="jit_compile"
)


def gpu_visible() -> bool:
    return bool(tf.config.list_logical_devices("GPU"))


def dtype_policy_name(mixed_precision: str) -> str:
    """The Keras dtype policy that --mixed_precision asks for on this machine.

    Raises:
      UserError: an unknown value, naming the flag.
    """
    name = MIXED_PRECISION.get(mixed_precision)
    if mixed_precision == "auto":
        return "mixed_float16" if gpu_visible() else "float32"
    return name


@contextlib.contextmanager
def dtype_policy(name: str) -> Iterator[None]:
    """Builds layers under the global dtype policy `name`, then restores the previous one.

    Layers take the global policy when they are created, so only the model's
    construction needs it; restoring it keeps notebooks and tests that build
    other models afterwards in their own precision.
    """
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(name)
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


def jit_compile(value: str) -> bool | str:
    """--jit_compile as model.compile() takes it, in any letter case ("True" is "true").

    Raises:
      UserError: an unknown value, naming the flag.
    """
    return JIT_COMPILE.get(str(value).lower())


def warnings_for(mixed_precision: str, jit: str, backbone: str) -> list[str]:
    """Settings that run, but slowly, on this machine; train prints them and goes on.

    Nothing here requires a GPU, so nothing is refused: XLA on a CPU slows the
    EfficientNets several-fold, and float16 on a CPU is slower than float32.
    """
    if gpu_visible():
        return []
    messages = []
    if jit_compile(jit) is True and "efficientnet" in backbone:
        messages.append(
            f"--jit_compile=true on a CPU-only machine: XLA slows {backbone} several-fold "
            "on CPU; --jit_compile=auto leaves XLA off here."
        )
    if dtype_policy_name(mixed_precision) == "mixed_float16":
        messages.append(
            "--mixed_precision=float16 without a GPU: it runs, but slower than float32 on CPU."
        )
    return messages
