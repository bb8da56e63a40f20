"""TF Serving's side of the export: warm-up file, REST JSON round-trip, gRPC on loopback."""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
from concurrent import futures

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from lmrec import export, run_files, serving
from lmrec.config import ExportConfig
from lmrec.data import pipeline
from lmrec.data.sources import demo
from tests.conftest import REPO

# Trains, exports or runs commands: left out by `pytest -m "not slow"`.
pytestmark = pytest.mark.slow


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
            assert set(row) == {"ok", "classes", "scores", "probabilities"}
            assert row["ok"] is True
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
    signatures = ("serving_default", "serving_images", "serving_embeddings")
    assert seen == {(name, "demo") for name in signatures}
    sizes = set()
    for request in requests:
        signature = loaded.signatures[request.model_spec.signature_name]
        inputs = {name: tf.make_ndarray(proto) for name, proto in request.inputs.items()}
        batch = len(next(iter(inputs.values())))
        sizes.add(batch)
        outputs = signature(**{k: tf.constant(v) for k, v in inputs.items()})
        if request.model_spec.signature_name == "serving_embeddings":
            assert outputs["ok"].numpy().all()
            np.testing.assert_allclose(np.linalg.norm(outputs["embeddings"], axis=1), 1, atol=1e-5)
            continue
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


def _png_bomb() -> bytes:
    """10000x10000 of one bilevel color: a small file, 300 MB as decoded RGB."""
    out = io.BytesIO()
    Image.new("1", (10000, 10000)).save(out, "PNG")
    return out.getvalue()


def _corrupt_jpeg() -> bytes:
    data = bytearray(_jpegs(1)[0])
    data[300:] = bytes(len(data) - 300)  # the header reads, the scan data does not decode
    return bytes(data)


def test_a_bad_image_is_marked_and_the_rest_of_its_batch_answered(exported):
    trained, _, loaded = exported
    serve = loaded.signatures["serving_default"]
    good = _jpegs(1)[0]
    outputs = serve(image_bytes=tf.constant([good, b"not an image" * 20, _png_bomb()]))
    alone = serve(image_bytes=tf.constant([good]))
    assert outputs["ok"].numpy().tolist() == [True, False, False]
    assert alone["ok"].numpy().tolist() == [True]
    assert outputs["classes"].numpy()[:1].tolist() == alone["classes"].numpy().tolist()
    for name in ("scores", "probabilities"):
        np.testing.assert_allclose(outputs[name].numpy()[:1], alone[name].numpy(), atol=1e-6)
        assert not outputs[name].numpy()[1:].any()
    np.testing.assert_allclose(
        outputs["probabilities"].numpy()[0], _expected(trained, [good])[0], atol=1e-5
    )
    assert outputs["classes"].numpy()[1:].tolist() == [[b""] * 3] * 2


def test_batches_of_every_size_and_all_bad_batches(exported):
    trained, _, loaded = exported
    serve = loaded.signatures["serving_default"]
    good = _jpegs(3)
    bad = [b"", _png_bomb(), _corrupt_jpeg(), good[0][:100]]
    mixed = [good[0], bad[0], good[1], bad[1], bad[2], good[2], bad[3]]
    expected = _expected(trained, good)
    for count in range(1, len(mixed) + 1):
        outputs = serve(image_bytes=tf.constant(mixed[:count]))
        ok = outputs["ok"].numpy()
        assert ok.tolist() == [photo in good for photo in mixed[:count]]
        answered = [good.index(photo) for photo in mixed[:count] if photo in good]
        np.testing.assert_allclose(
            outputs["probabilities"].numpy()[ok], expected[answered], atol=1e-5
        )
    outputs = serve(image_bytes=tf.constant(bad))
    assert not outputs["ok"].numpy().any()
    assert outputs["probabilities"].shape == (len(bad), len(trained.class_names))
    assert not outputs["probabilities"].numpy().any() and not outputs["scores"].numpy().any()


def test_every_format_answers_like_the_same_pixels_as_jpeg(exported):
    """PNG, BMP and lossless WebP of a JPEG's pixels answer exactly as the JPEG; a GIF
    (256 colors) and a lossy WebP answer close to it, with its top class when that is clear."""
    _, _, loaded = exported
    serve = loaded.signatures["serving_default"]
    for photo in _jpegs(4):
        pixels = Image.fromarray(tf.io.decode_jpeg(photo).numpy())  # the JPEG's pixels, as TF sees
        exact = [_save(pixels, "PNG"), _save(pixels, "BMP"), _save(pixels, "WEBP", lossless=True)]
        close = [_save(pixels.quantize(256), "GIF"), _save(pixels, "WEBP", quality=90)]
        outputs = serve(image_bytes=tf.constant([photo, *exact, *close]))
        assert outputs["ok"].numpy().all()
        top = outputs["classes"].numpy()[:, 0]
        probabilities = outputs["probabilities"].numpy()
        np.testing.assert_allclose(probabilities[1:4], probabilities[[0, 0, 0]], atol=1e-5)
        assert (top[1:4] == top[0]).all()
        np.testing.assert_allclose(probabilities[4:], probabilities[[0, 0]], atol=0.1)
        margin = np.diff(np.sort(probabilities[0])[-2:])[0]
        if margin > 0.1:
            assert (top[4:] == top[0]).all(), (top, np.round(probabilities, 3))


def _save(image: Image.Image, fmt: str, **options) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **options)
    return out.getvalue()


MEMORY_CHECK = r"""
import json, re, sys
import tensorflow as tf

serve = tf.saved_model.load(sys.argv[1]).signatures["serving_default"]
good, bomb = (open(path, "rb").read() for path in sys.argv[2:4])


def peak_growth_mb(run):  # how far run() lifts the peak resident memory above its start
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets the peak (VmHWM) to the current resident size

    def status(name):
        with open("/proc/self/status") as f:
            return int(re.search(name + r":\s+(\d+)", f.read()).group(1)) / 1024

    before = status("VmRSS")
    result = run()
    return result, status("VmHWM") - before


serve(image_bytes=tf.constant([good, good]))
outputs, served = peak_growth_mb(lambda: serve(image_bytes=tf.constant([good, bomb])))
_, decoded = peak_growth_mb(lambda: tf.io.decode_png(bomb, channels=3))
ok = outputs["ok"].numpy().tolist()
print(json.dumps({"ok": ok, "served_mb": served, "decoded_mb": decoded}))
"""


def test_a_pixel_bomb_is_refused_before_it_is_decoded(exported, tmp_path, env_for_subprocess):
    """Peak memory in a fresh process: serving the bomb adds next to nothing, decoding it 300 MB.

    Linux's clear_refs resets the peak, so each step is measured from where it starts.
    """
    if not os.path.exists("/proc/self/clear_refs"):
        pytest.skip("needs Linux /proc/self/clear_refs to reset the peak resident memory")
    _, path, _ = exported
    (tmp_path / "good.jpg").write_bytes(_jpegs(1)[0])
    (tmp_path / "bomb.png").write_bytes(_png_bomb())
    result = subprocess.run(
        [sys.executable, "-c", MEMORY_CHECK, path, tmp_path / "good.jpg", tmp_path / "bomb.png"],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env_for_subprocess,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    measured = json.loads(result.stdout.strip().splitlines()[-1])
    assert measured["ok"] == [True, False]
    assert measured["decoded_mb"] > 250, measured
    assert measured["served_mb"] < 50, measured


def test_the_pixel_cap_is_stored_with_the_model(exported):
    _, path, _ = exported
    assert export.read_metadata(path)["max_megapixels"] == export.MAX_MEGAPIXELS
