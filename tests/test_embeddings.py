"""lmrec.embeddings: the L2-normalized global descriptor of every head and loss."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from lmrec import embeddings, run_files
from lmrec.config import ModelConfig
from lmrec.data import held_out
from lmrec.errors import UserError
from lmrec.models import classifier, heads
from tests.conftest import jpeg_bytes
from tests.tiny_model_dir import write_model_dir

SIZE = 32
DENSE = 24
BILINEAR = 40
CASES = [(head, "softmax") for head in heads.HEADS.names()] + [("gap_dense512", "arcface")]


def _classifier(head: str, loss: str):
    config = ModelConfig(
        backbone="baseline",
        weights="none",
        head=head,
        loss=loss,
        dense_units=DENSE,
        bilinear_dim=BILINEAR,
        dropout=0.5,
    )
    return classifier.build_classifier(config, 3, SIZE, load_weights=False)


@pytest.mark.parametrize(("head", "loss"), CASES)
def test_the_embedding_is_unit_norm_deterministic_and_shares_the_weights(head, loss):
    model = _classifier(head, loss)
    embedder = embeddings.embedding_model(model)
    x = np.random.default_rng(0).uniform(-1, 1, (4, SIZE, SIZE, 3)).astype(np.float32)
    first = np.asarray(embedder(x))
    assert first.dtype == np.float32
    assert first.shape == (4, BILINEAR if "bilinear" in head else DENSE)
    np.testing.assert_allclose(np.linalg.norm(first, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(first, np.asarray(embedder(x)))  # dropout is off
    assert not np.allclose(first[0], first[1])
    # The same variables, not copies: changing the classifier's weights changes the embedding.
    owned = {id(v) for v in model.weights}
    assert embedder.weights and all(id(v) in owned for v in embedder.weights)
    kernel = next(v for v in model.backbone.weights if v.name == "kernel")
    kernel.assign(np.asarray(kernel) * -1.0)
    assert not np.allclose(np.asarray(embedder(x)), first)


def test_gap_dense512_embedding_is_the_normalized_dense_activation():
    model = _classifier("gap_dense512", "softmax")
    x = np.random.default_rng(1).uniform(-1, 1, (3, SIZE, SIZE, 3)).astype(np.float32)
    features = model.backbone(x, training=False)
    dense = np.asarray(model.head.get_layer("dense")(model.head.get_layer("gap")(features)))
    expected = dense / np.linalg.norm(dense, axis=1, keepdims=True)
    np.testing.assert_allclose(
        np.asarray(embeddings.embedding_model(model)(x)), expected, rtol=1e-5, atol=1e-6
    )


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, demo_records) -> str:
    root = tmp_path_factory.mktemp("embed_model")
    return write_model_dir(str(root / "model"), demo_records)


def test_embed_photos_and_folders_lists_the_unreadable_ones(tmp_path, model_dir):
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    for i in range(3):
        (folder / f"p{i}.jpg").write_bytes(jpeg_bytes(i))
    (folder / "sub" / "deep.png").write_bytes(jpeg_bytes(7))  # a JPEG named .png: still read
    (folder / "broken.jpg").write_bytes(b"not a photo at all" * 10)
    (folder / "notes.txt").write_text("hello")
    single = tmp_path / "single.jpg"
    single.write_bytes(jpeg_bytes(0))  # the same pixels as p0.jpg
    found = embeddings.embed(model_dir, [str(folder), str(single)], batch_size=2, verbose=False)
    expected = [str(folder / f"p{i}.jpg") for i in range(3)]
    expected += [str(folder / "sub" / "deep.png"), str(single)]
    assert sorted(found.ids) == sorted(expected)
    assert found.embeddings.shape == (5, embeddings.embedding_dimension(run_files.load(model_dir)))
    np.testing.assert_allclose(np.linalg.norm(found.embeddings, axis=1), 1.0, atol=1e-5)
    assert [f["file"] for f in found.failures] == [str(folder / "broken.jpg")]
    assert found.failures[0]["reason"]
    assert [f["file"] for f in found.ignored] == [str(folder / "notes.txt")]
    row = {photo_id: i for i, photo_id in enumerate(found.ids)}
    same = found.embeddings[row[str(single)]], found.embeddings[row[expected[0]]]
    np.testing.assert_allclose(*same, atol=1e-6)
    assert not np.allclose(found.embeddings[row[expected[0]]], found.embeddings[row[expected[1]]])


def test_embed_dataset_matches_embed_on_the_same_photos(tmp_path, model_dir):
    trained = run_files.load(model_dir)
    root = tmp_path / "classes"
    names = trained.class_names[:2]
    for n, name in enumerate(names):
        (root / name).mkdir(parents=True)
        (root / name / "a.jpg").write_bytes(jpeg_bytes(10 + n))
    source = held_out.eval_data(trained, str(root), batch_size=4)
    vectors, labels, ids = embeddings.embed_dataset(trained, source.dataset)
    assert sorted(labels.tolist()) == [0, 1] and labels.dtype == np.int32
    photos = [str(root / name / "a.jpg") for name in names]
    direct = embeddings.embed(trained, photos, verbose=False)
    by_id = dict(zip(direct.ids, direct.embeddings, strict=True))
    for photo_id, vector in zip(ids, vectors, strict=True):
        np.testing.assert_allclose(vector, by_id[str(root / photo_id)], atol=1e-6)


def test_fingerprint_follows_the_weights_and_the_model_section(tmp_path, demo_records):
    model_dir = write_model_dir(str(tmp_path / "model"), demo_records)
    first = embeddings.fingerprint(model_dir)
    assert first == embeddings.fingerprint(model_dir) and len(first) == 64
    other = write_model_dir(str(tmp_path / "other"), demo_records, seed=1)
    assert embeddings.fingerprint(other) != first
    config_path = os.path.join(model_dir, run_files.CONFIG_FILE)
    with open(config_path, encoding="utf-8") as f:
        config = json.load(f)
    config["model"]["dropout"] = 0.9
    with open(config_path, "w", encoding="utf-8") as f:
        json.dump(config, f)
    assert embeddings.fingerprint(model_dir) != first
    with pytest.raises(UserError, match="not a trained lmrec model_dir"):
        embeddings.fingerprint(str(tmp_path / "missing"))
