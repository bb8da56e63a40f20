"""What a benchmark ran on, recorded beside its figures (one place for every benchmark)."""

from __future__ import annotations

import os
import platform


def machine() -> dict:
    """CPUs (all and usable), platform, Python/TensorFlow/Keras versions, GPUs, load average."""
    import keras
    import tensorflow as tf

    return {
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "processor": platform.processor() or platform.machine(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "gpus": len(tf.config.list_physical_devices("GPU")),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }
