"""What talks to TF Serving: the warm-up file, REST request bodies and the gRPC call.

TF Serving loads <export_dir>/<name>/<version>/ and replays
assets.extra/tf_serving_warmup_requests (a TFRecord file of PredictionLog
protos) before it answers, so the first real request does not pay for graph
building. The request helpers build exactly what README documents, so users
(and the tests) send the same bytes.
"""

from __future__ import annotations

import base64
import io
import json
import os
from collections.abc import Sequence

import numpy as np
import tensorflow as tf

WARMUP_FILE = "tf_serving_warmup_requests"  # TF Serving's fixed name inside assets.extra/
BYTES_INPUT = "image_bytes"
UINT8_INPUT = "images"
DEFAULT_SIGNATURE = "serving_default"
UINT8_SIGNATURE = "serving_images"
EMBEDDINGS_SIGNATURE = "serving_embeddings"
WARMUP_BATCH_SIZES = (1, 8)  # a single upload and a small batch: both shapes get built.


def warmup_jpeg(image_size: int, seed: int = 0) -> bytes:
    """A smooth synthetic photo at the model's input size (no user data in the export)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:image_size, 0:image_size] / max(1, image_size - 1)
    base = rng.uniform(0, 255, size=3)
    pixels = np.stack([base[0] * x, base[1] * y, base[2] * (1 - x * y)], axis=-1)
    buffer = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def predict_request(model_name: str, signature: str, inputs: dict[str, np.ndarray]):
    """A tensorflow_serving PredictRequest: the gRPC message and the warm-up record's body."""
    from tensorflow_serving.apis import predict_pb2

    request = predict_pb2.PredictRequest()
    request.model_spec.name = model_name
    request.model_spec.signature_name = signature
    for name, value in inputs.items():
        request.inputs[name].CopyFrom(tf.make_tensor_proto(value))
    return request


def warmup_requests(model_name: str, image_size: int) -> list:
    """PredictRequests for every signature at each warm-up batch size."""
    requests = []
    for batch in WARMUP_BATCH_SIZES:
        jpegs = [warmup_jpeg(image_size, seed) for seed in range(batch)]
        for signature in (DEFAULT_SIGNATURE, EMBEDDINGS_SIGNATURE):
            requests.append(
                predict_request(model_name, signature, {BYTES_INPUT: np.array(jpegs, object)})
            )
        pixels = np.stack([tf.io.decode_jpeg(jpeg).numpy() for jpeg in jpegs])
        requests.append(predict_request(model_name, UINT8_SIGNATURE, {UINT8_INPUT: pixels}))
    return requests


def write_warmup_file(extra_dir: str, model_name: str, image_size: int) -> str:
    """Writes assets.extra/tf_serving_warmup_requests in TF Serving's format.

    Returns:
      The file's path. The caller writes into a folder that appears atomically.
    """
    from tensorflow_serving.apis import prediction_log_pb2

    path = os.path.join(extra_dir, WARMUP_FILE)
    with tf.io.TFRecordWriter(path) as writer:
        for request in warmup_requests(model_name, image_size):
            log = prediction_log_pb2.PredictionLog(
                predict_log=prediction_log_pb2.PredictLog(request=request)
            )
            writer.write(log.SerializeToString())
    return path


def read_warmup_file(path: str) -> list:
    """The PredictRequests in a warm-up file (what TF Serving replays at load)."""
    from tensorflow_serving.apis import prediction_log_pb2

    requests = []
    for record in tf.data.TFRecordDataset(path).as_numpy_iterator():
        log = prediction_log_pb2.PredictionLog.FromString(record)
        requests.append(log.predict_log.request)
    return requests


def rest_request(photos: Sequence[bytes], signature_name: str = "") -> str:
    """The JSON body of POST /v1/models/<name>:predict for encoded photos (row format).

    Binary inputs travel as {"b64": ...}; TF Serving decodes them into the
    image_bytes string tensor.
    """
    body: dict = {
        "instances": [
            {BYTES_INPUT: {"b64": base64.b64encode(data).decode("ascii")}} for data in photos
        ]
    }
    if signature_name:
        body["signature_name"] = signature_name
    return json.dumps(body)


def grpc_predict(
    target: str, model_name: str, photos: Sequence[bytes], timeout: float = 30.0, version: int = 0
) -> dict[str, np.ndarray]:
    """Calls TF Serving's gRPC Predict (default port 8500) on encoded photos.

    Returns:
      {"ok": [batch] bool, "classes": [batch, k] str, "scores", "probabilities", ...} as
      numpy arrays; an image that is not ok has empty classes and zero scores.
    """
    import grpc
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    request = predict_request(
        model_name, DEFAULT_SIGNATURE, {BYTES_INPUT: np.array(list(photos), object)}
    )
    if version:
        request.model_spec.version.value = version
    with grpc.insecure_channel(target) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        response = stub.Predict(request, timeout=timeout)
    outputs = {name: tf.make_ndarray(proto) for name, proto in response.outputs.items()}
    if "classes" in outputs:
        outputs["classes"] = np.char.decode(outputs["classes"].astype(bytes), "utf-8")
    return outputs
