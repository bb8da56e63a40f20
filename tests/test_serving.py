"""TF Serving's side of the export: warm-up file, REST JSON round-trip, gRPC on loopback."""

from __future__ import annotations

import base64
import json
from concurrent import futures

import numpy as np
import pytest
import tensorflow as tf

from lmrec import export, serving
from lmrec import model_dir as run_files
from lmrec.config import ExportConfig
from lmrec.data import pipeline
from lmrec.data.sources import demo


@pytest.fixture(scope="module")
def exported(trained_demo, tmp_path_factory):
    trained = run_files.load(trained_demo.model_dir)
    path = export.export_saved_model(
        trained_demo.model_dir,
        ExportConfig(export_dir=str(tmp_path_factory.mktemp("export")), top_k=3),
        verbose=False,
        trained=trained,
    )
    return trained, path, tf.saved_model.load(path)


def _jpegs(count: int) -> list[bytes]:
    return [demo.make_image(i % 8, 2000 + i, 90, seed=11).encoded for i in range(count)]


def _expected(trained, photos: list[bytes]) -> np.ndarray:
    images = tf.stack([pipeline.decode_and_resize(p, trained.image_size) for p in photos])
    return trained.model(trained.preprocess(images), training=False).numpy()


def _tf_serving_rest(loaded, body: str) -> str:
    """What TF Serving's REST predict does with a row-format body (its documented rules).

    {"b64": ...} becomes the decoded bytes, instances are stacked into one batch
    per input name, and each instance gets an object of named outputs back.
    """
    request = json.loads(body)
    signature = loaded.signatures[request.get("signature_name", "serving_default")]
    (name,) = signature.structured_input_signature[1]
    spec = signature.structured_input_signature[1][name]

    def value(item):
        return base64.b64decode(item["b64"]) if isinstance(item, dict) else item

    batch = [value(instance[name]) for instance in request["instances"]]
    outputs = signature(**{name: tf.constant(batch, dtype=spec.dtype)})
    rows = []
    for i in range(len(batch)):
        row = {}
        for output, tensor in outputs.items():
            item = tensor[i].numpy()
            row[output] = [v.decode() for v in item] if tensor.dtype == tf.string else item.tolist()
        rows.append(row)
    return json.dumps({"predictions": rows})


def test_rest_request_round_trip_returns_named_top_k_rows(exported):
    trained, _, loaded = exported
    photos = _jpegs(4)
    expected = _expected(trained, photos)
    names = np.array(trained.class_names)
    for signature_name in ("", "serving_default"):
        body = serving.rest_request(photos, signature_name)
        parsed = json.loads(body)
        assert set(parsed) == ({"instances", "signature_name"} if signature_name else {"instances"})
        assert base64.b64decode(parsed["instances"][0]["image_bytes"]["b64"]) == photos[0]
        response = json.loads(_tf_serving_rest(loaded, body))
        assert len(response["predictions"]) == 4
        for row, probabilities in zip(response["predictions"], expected, strict=True):
            assert set(row) == {"classes", "scores", "probabilities"}
            top = np.argsort(-probabilities)[:3]
            assert row["classes"] == names[top].tolist()
            np.testing.assert_allclose(row["scores"], probabilities[top], atol=1e-5)
            assert len(row["probabilities"]) == len(names)


def test_rest_uint8_signature_takes_nested_pixel_lists(exported):
    trained, _, loaded = exported
    photos = _jpegs(2)
    pixels = [tf.io.decode_jpeg(p).numpy().tolist() for p in photos]
    body = json.dumps(
        {"signature_name": "serving_images", "instances": [{"images": p} for p in pixels]}
    )
    response = json.loads(_tf_serving_rest(loaded, body))
    np.testing.assert_allclose(
        [row["probabilities"] for row in response["predictions"]],
        _expected(trained, photos),
        atol=1e-5,
    )


def test_warmup_file_holds_requests_every_signature_answers(exported):
    trained, path, loaded = exported
    requests = serving.read_warmup_file(f"{path}/assets.extra/{serving.WARMUP_FILE}")
    seen = {(r.model_spec.signature_name, r.model_spec.name) for r in requests}
    assert seen == {("serving_default", "demo"), ("serving_images", "demo")}
    sizes = set()
    for request in requests:
        signature = loaded.signatures[request.model_spec.signature_name]
        inputs = {name: tf.make_ndarray(proto) for name, proto in request.inputs.items()}
        batch = len(next(iter(inputs.values())))
        sizes.add(batch)
        outputs = signature(**{k: tf.constant(v) for k, v in inputs.items()})
        assert outputs["probabilities"].shape == (batch, len(trained.class_names))
        np.testing.assert_allclose(outputs["probabilities"].numpy().sum(axis=1), 1, atol=1e-4)
    assert sizes == set(serving.WARMUP_BATCH_SIZES)


def test_grpc_client_against_a_loopback_prediction_service(exported):
    """The documented gRPC call, answered by a PredictionService that runs the SavedModel."""
    grpc = pytest.importorskip("grpc")
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    trained, _, loaded = exported
    received = []

    class Service(prediction_service_pb2_grpc.PredictionServiceServicer):
        def Predict(self, request, context):  # noqa: N802 - gRPC's method name.
            received.append(request)
            signature = loaded.signatures[request.model_spec.signature_name]
            inputs = {k: tf.constant(tf.make_ndarray(v)) for k, v in request.inputs.items()}
            response = predict_pb2.PredictResponse()
            for name, tensor in signature(**inputs).items():
                response.outputs[name].CopyFrom(tf.make_tensor_proto(tensor.numpy()))
            return response

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(Service(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        photos = _jpegs(3)
        outputs = serving.grpc_predict(f"127.0.0.1:{port}", "demo", photos, version=1)
    finally:
        server.stop(None)
    assert received[0].model_spec.name == "demo"
    assert received[0].model_spec.version.value == 1
    expected = _expected(trained, photos)
    np.testing.assert_allclose(outputs["probabilities"], expected, atol=1e-5)
    names = np.array(trained.class_names)
    assert outputs["classes"].tolist() == names[np.argsort(-expected, 1)[:, :3]].tolist()
