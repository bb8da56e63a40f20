"""Open-set recognition in the export and predict: a hybrid SavedModel carrying the gallery
answers as the in-memory Recognizer, serving_embeddings as lmrec.embeddings.embed, and a
landmark added with lmrec.gallery add is a label of the export and of predict."""

from __future__ import annotations

import csv
import os

import numpy as np
import pytest
import tensorflow as tf

from lmrec import embeddings, export, gallery, predict, recognizer, run_files, serving
from lmrec.config import ClassifierConfig, ExportConfig
from lmrec.data import pipeline
from lmrec.errors import UserError
from tests.conftest import jpeg_bytes
from tests.tiny_model_dir import write_model_dir

ADDED = "Ponte Vecchio"
COLOR = (250, 20, 200)  # the added landmark's photos: one flat colour, no demo photo has it
HYBRID = ClassifierConfig(classifier="hybrid", knn_k=3)


def _added_photo(i: int) -> bytes:
    return jpeg_bytes(300 + i, size=(48 + 4 * i, 40), color=COLOR)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, demo_records) -> str:
    """A tiny model with a gallery of its train split plus an added landmark, and a stored
    hybrid open-set choice whose threshold rejects about half of the demo photos."""
    root = tmp_path_factory.mktemp("open_set_export")
    model_dir = write_model_dir(str(root / "model"), demo_records)
    gallery.build(model_dir, verbose=False)
    added = root / ADDED
    added.mkdir()
    for i in range(4):
        (added / f"p{i}.jpg").write_bytes(_added_photo(i))
    gallery.add(model_dir, ADDED, [str(added)], verbose=False)
    trained = run_files.load(model_dir)
    settings = recognizer.Settings(classifier="hybrid", knn_k=3, score="top_similarity")
    scores = recognizer.Recognizer(trained, settings)(_pixels(trained, _photos())).scores
    choice = recognizer.OpenSetChoice(
        classifier="hybrid", score="top_similarity", threshold=float(np.median(scores)), knn_k=3
    )
    recognizer.write_choice(model_dir, choice)
    return model_dir


def _photos() -> list[bytes]:
    return [jpeg_bytes(700 + i, size=(50, 40 + i)) for i in range(5)] + [_added_photo(9)]


def _pixels(trained, photos: list[bytes]) -> tf.Tensor:
    return tf.stack([pipeline.decode_and_resize(p, trained.image_size) for p in photos])


@pytest.fixture(scope="module")
def exported(model_dir, tmp_path_factory):
    trained = run_files.load(model_dir)
    path = export.export_saved_model(
        model_dir,
        ExportConfig(export_dir=str(tmp_path_factory.mktemp("export")), top_k=3),
        verbose=False,
        trained=trained,
        classifier=HYBRID,
    )
    return trained, path, tf.saved_model.load(path)


@pytest.mark.slow
def test_the_hybrid_export_answers_as_the_recognizer(model_dir, exported):
    trained, path, loaded = exported
    rec = recognizer.Recognizer(trained, recognizer.resolve(model_dir, HYBRID))
    assert rec.settings.score == "top_similarity" and rec.class_names[-1] == ADDED
    photos = _photos()
    expected = rec(_pixels(trained, photos))
    assert 0 < expected.rejected.sum() < len(photos)  # the threshold decides something
    outputs = loaded.signatures["serving_default"](
        image_bytes=tf.constant(photos[:3] + [b"not an image"] + photos[3:])
    )
    assert set(outputs) == {
        "ok", "classes", "scores", "probabilities", "open_set_score", "no_landmark"
    }  # fmt: skip
    ok = outputs["ok"].numpy()
    assert ok.tolist() == [True] * 3 + [False] + [True] * 3
    probabilities = outputs["probabilities"].numpy()
    assert probabilities.shape == (7, len(rec.class_names))
    np.testing.assert_allclose(probabilities[ok], expected.probabilities, atol=1e-4)
    np.testing.assert_allclose(outputs["open_set_score"].numpy()[ok], expected.scores, atol=1e-4)
    assert outputs["no_landmark"].numpy()[ok].tolist() == expected.rejected.tolist()
    names = np.array(rec.class_names)
    top = np.argsort(-expected.probabilities, axis=1, kind="stable")[:, :3]
    classes = outputs["classes"].numpy().astype(str)
    assert classes[ok].tolist() == names[top].tolist()
    assert classes[~ok].tolist() == [["", "", ""]]
    assert not outputs["scores"].numpy()[~ok].any() and not probabilities[~ok].any()
    assert not outputs["no_landmark"].numpy()[~ok].any()
    assert classes[-1][0] == ADDED  # a photo of the added landmark, not in the gallery

    metadata = export.read_metadata(path)
    assert metadata["classifier"] == "hybrid" and metadata["knn_k"] == 3
    assert metadata["class_names"] == rec.class_names
    assert (metadata["open_set_score"], metadata["open_set_threshold"]) == (
        "top_similarity",
        rec.settings.threshold,
    )
    assert metadata["gallery_size"] == len(rec.gallery.embeddings)
    assert metadata["fingerprint"] == embeddings.fingerprint(model_dir)
    stored, labels = loaded.gallery  # variables in variables/, not graph constants
    assert stored.dtype == tf.float16 and labels.dtype == tf.int32
    np.testing.assert_array_equal(stored.numpy(), rec.gallery.embeddings)
    np.testing.assert_array_equal(labels.numpy(), rec.vote_labels)
    graph = loaded.signatures["serving_default"].graph.as_graph_def()
    largest = max(
        (node.attr["value"].tensor.ByteSize() for node in graph.node if node.op == "Const"),
        default=0,
    )
    assert largest < stored.numpy().nbytes


@pytest.mark.slow
def test_serving_embeddings_equal_embed_on_the_same_files(model_dir, exported, tmp_path):
    trained, path, loaded = exported
    files = []
    for i, photo in enumerate(_photos()):
        files.append(str(tmp_path / f"{i}.jpg"))
        (tmp_path / f"{i}.jpg").write_bytes(photo)
    found = embeddings.embed(trained, files, verbose=False)
    outputs = loaded.signatures["serving_embeddings"](
        image_bytes=tf.constant(_photos() + [b"\xff\xd8 broken"])
    )
    assert set(outputs) == {"embeddings", "ok"}
    assert outputs["ok"].numpy().tolist() == [True] * len(files) + [False]
    vectors = outputs["embeddings"].numpy()
    assert vectors.dtype == np.float32 and not vectors[-1].any()
    np.testing.assert_allclose(vectors[:-1], found.embeddings, atol=1e-4)
    np.testing.assert_allclose(np.linalg.norm(vectors[:-1], axis=1), 1.0, atol=1e-5)
    requests = serving.read_warmup_file(f"{path}/assets.extra/{serving.WARMUP_FILE}")
    assert serving.EMBEDDINGS_SIGNATURE in {r.model_spec.signature_name for r in requests}


@pytest.mark.slow
def test_predict_with_knn_on_the_model_dir_writes_the_added_label(model_dir, tmp_path):
    folder = tmp_path / "trip"
    folder.mkdir()
    (folder / "bridge.jpg").write_bytes(_added_photo(11))
    (folder / "street.jpg").write_bytes(jpeg_bytes(900, size=(60, 44)))
    out = tmp_path / "tags.csv"
    result = predict.predict(
        model_dir,
        [str(folder)],
        str(out),
        verbose=False,
        write_xmp=True,
        classifier=ClassifierConfig(classifier="knn", knn_k=3),
    )
    labels = {os.path.basename(row.file): row.label for row in result.rows}
    assert labels["bridge.jpg"] == ADDED
    with open(out, encoding="utf-8") as f:
        written = {os.path.basename(r["file"]): r["label"] for r in csv.DictReader(f)}
    assert written["bridge.jpg"] == ADDED
    assert ADDED in (folder / "bridge.xmp").read_text(encoding="utf-8")
    softmax = predict.predict(model_dir, [str(folder)], verbose=False)
    assert ADDED not in {row.label for row in softmax.rows}


@pytest.mark.slow
def test_an_export_refuses_another_classifier(model_dir, exported, tmp_path):
    _, path, _ = exported
    folder = tmp_path / "trip"
    folder.mkdir()
    (folder / "bridge.jpg").write_bytes(_added_photo(12))
    with pytest.raises(UserError, match="--classifier=hybrid.*export the model_dir again"):
        predict.predict(
            path, [str(folder)], verbose=False, classifier=ClassifierConfig(classifier="knn")
        )
    with pytest.raises(UserError, match="TFLite files do not hold"):
        predict.load_tagger(path, "tflite")
    tagged = predict.predict(path, [str(folder)], verbose=False, classifier=HYBRID)
    assert tagged.rows[0].label in (ADDED, predict.NO_LANDMARK)
    softmax = export.export_saved_model(
        model_dir, ExportConfig(export_dir=os.path.dirname(os.path.dirname(path))), verbose=False
    )
    assert os.path.basename(softmax) == "2"  # a new version beside the hybrid one
    assert export.read_metadata(softmax)["classifier"] == "softmax"
    with pytest.raises(UserError, match="answers with --classifier=softmax"):
        predict.predict(
            softmax, [str(folder)], verbose=False, classifier=ClassifierConfig(classifier="knn")
        )
