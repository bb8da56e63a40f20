"""model.onnx beside the TFLite files, when tf2onnx and onnxruntime are installed.

The graph is the one the TFLite files hold (agreement.probabilities_function):
uint8 images [batch, S, S, 3] in, probabilities out. It is checked with
onnxruntime on the same held-out images as the TFLite variants.
"""

from __future__ import annotations

import os
import time

import numpy as np
import tensorflow as tf

from lmrec import atomic
from lmrec.export.agreement import VariantCheck, check, input_signature, probabilities_function

ONNX_FILE = "model.onnx"
ONNX_MISSING = "skipped: pip install tf2onnx onnxruntime"


def export_onnx(trained, folder: str, images, reference, labels, num_threads) -> VariantCheck:
    """model.onnx via tf2onnx, checked with onnxruntime; skipped when either is missing."""
    try:
        import onnxruntime
        import tf2onnx
    except ImportError:
        return VariantCheck("onnx", skipped=ONNX_MISSING)
    function = tf.function(
        probabilities_function(trained, with_embeddings=False),
        input_signature=input_signature(trained.image_size),
    )
    try:
        proto, _ = tf2onnx.convert.from_function(
            function, input_signature=input_signature(trained.image_size)
        )
    except Exception as error:  # tf2onnx lags TF releases; a failure must not lose the TFLite files
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
        return VariantCheck("onnx", skipped=f"skipped: tf2onnx failed: {first_line[:200]}")
    path = os.path.join(folder, ONNX_FILE)
    atomic.write_bytes(path, proto.SerializeToString())
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = num_threads
    runtime = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    input_name = runtime.get_inputs()[0].name
    runtime.run(None, {input_name: images[:1]})
    start = time.perf_counter()
    probs = np.concatenate(
        [runtime.run(None, {input_name: images[i : i + 1]})[0] for i in range(len(images))]
    )
    rate = len(images) / (time.perf_counter() - start)
    return check("onnx", path, probs, rate, reference, labels)
