"""lmrec.recognizer: one answer (softmax | knn | hybrid, open-set score) for evaluate,
predict and the export, and the open-set choice stored with a model."""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import pytest
import tensorflow as tf

from lmrec import embeddings, gallery, knn, recognizer, run_files
from lmrec.config import ClassifierConfig
from lmrec.data import held_out
from lmrec.errors import UserError
from tests.conftest import jpeg_bytes
from tests.tiny_model_dir import write_model_dir


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, demo_records) -> str:
    """A tiny model with a gallery of its train split plus an added landmark."""
    root = tmp_path_factory.mktemp("recognizer")
    model_dir = write_model_dir(str(root / "model"), demo_records)
    gallery.build(model_dir, verbose=False)
    added = root / "Ponte Vecchio"
    added.mkdir()
    for i in range(4):
        (added / f"p{i}.jpg").write_bytes(jpeg_bytes(300 + i, size=(48, 40)))
    gallery.add(model_dir, "Ponte Vecchio", [str(added)], verbose=False)
    return model_dir


def _val_pixels(trained, count: int = 16):
    data = held_out.eval_data(trained, "", batch_size=count)
    pixels, labels, _ = next(iter(data.dataset))
    return pixels, labels.numpy()


def test_softmax_answers_equal_the_model_and_embeddings_equal_embed(model_dir):
    trained = run_files.load(model_dir)
    rec = recognizer.Recognizer(trained, recognizer.Settings())
    pixels, _ = _val_pixels(trained)
    answer = rec(pixels)
    expected = trained.model(trained.preprocess(pixels), training=False).numpy()
    np.testing.assert_allclose(answer.probabilities, expected, atol=1e-5)
    np.testing.assert_allclose(answer.scores, expected.max(axis=1), atol=1e-5)
    model = embeddings.embedding_model(trained.model)
    np.testing.assert_allclose(
        answer.embeddings, model(trained.preprocess(pixels)).numpy(), atol=1e-5
    )
    assert rec.gallery is None and rec.class_names == trained.class_names


@pytest.mark.parametrize("name", ["knn", "hybrid"])
def test_knn_and_hybrid_know_the_added_landmark(model_dir, name):
    trained = run_files.load(model_dir)
    rec = recognizer.Recognizer(trained, recognizer.Settings(classifier=name, knn_k=5))
    assert rec.class_names == [*trained.class_names, "Ponte Vecchio"]
    pixels, _ = _val_pixels(trained)
    answer = rec(pixels)
    assert answer.probabilities.shape == (len(pixels), len(trained.class_names) + 1)
    assert np.all(answer.probabilities.sum(axis=1) <= 1 + 1e-5)
    # The same votes by hand: search, gather, vote.
    loaded = gallery.load(model_dir)
    similarities, indices = knn.search(answer.embeddings, loaded.embeddings, 5)
    names = loaded.class_names()
    columns = [rec.class_names.index(names[i]) for i in loaded.label_ids[indices].ravel()]
    votes = knn.knn_scores(similarities, np.reshape(columns, indices.shape), len(rec.class_names))
    np.testing.assert_allclose(answer.knn.class_scores, votes.class_scores, atol=1e-5)


def test_a_photo_of_the_added_landmark_is_answered_with_it(model_dir, tmp_path):
    trained = run_files.load(model_dir)
    rec = recognizer.Recognizer(trained, recognizer.Settings(classifier="knn", knn_k=3))
    added = gallery.load(model_dir)
    rows = [i for i, n in enumerate(added.class_names()) if n == "Ponte Vecchio"]
    own = added.embeddings[np.isin(added.label_ids, rows)].astype(np.float32)
    softmax = np.full((len(own), len(trained.class_names)), 1 / len(trained.class_names))
    answer = rec.answer_embeddings(softmax.astype(np.float32), own)
    predicted = [rec.class_names[i] for i in answer.probabilities.argmax(axis=1)]
    assert predicted == ["Ponte Vecchio"] * len(own)


def test_the_stored_choice_is_used_when_its_classifier_is_asked_for(model_dir, tmp_path):
    config = ClassifierConfig(classifier="knn")
    assert recognizer.resolve(model_dir, config, stored_reject_threshold=0.3).score == (
        "top_probability"
    )
    choice = recognizer.OpenSetChoice(classifier="knn", score="vote_share", threshold=0.4)
    recognizer.write_choice(model_dir, choice)
    try:
        assert recognizer.read_choice(model_dir) == choice
        settings = recognizer.resolve(model_dir, config)
        assert (settings.score, settings.threshold) == ("vote_share", 0.4)
        assert recognizer.resolve(model_dir, config, reject_threshold=0.1).threshold == 0.1
        softmax = recognizer.resolve(model_dir, ClassifierConfig(), stored_reject_threshold=0.3)
        assert (softmax.score, softmax.threshold) == ("top_probability", 0.3)
        other = recognizer.resolve(model_dir, ClassifierConfig("knn", open_set_score="margin"))
        assert (other.score, other.threshold) == ("margin", 0.0)
    finally:
        recognizer.write_choice(model_dir, choice)  # same content; other tests do not read it


def test_a_choice_made_with_other_weights_is_not_used(model_dir, capsys):
    config = ClassifierConfig(classifier="knn")
    before = recognizer.read_choice(model_dir)
    current = embeddings.fingerprint(model_dir)
    try:
        same = recognizer.OpenSetChoice("knn", "vote_share", 0.4, model_fingerprint=current)
        recognizer.write_choice(model_dir, same)
        assert recognizer.resolve(model_dir, config).threshold == 0.4
        stale = dataclasses.replace(same, model_fingerprint="0" * 64)
        recognizer.write_choice(model_dir, stale)
        settings = recognizer.resolve(model_dir, config)
        assert (settings.score, settings.threshold) == ("top_probability", 0.0)
        assert "chosen with other weights" in capsys.readouterr().err
    finally:
        if before is None:
            os.remove(os.path.join(model_dir, recognizer.OPEN_SET_FILE))
        else:
            recognizer.write_choice(model_dir, before)


def test_unknown_classifier_or_score_names_the_flag(model_dir):
    with pytest.raises(UserError, match="--classifier='knnn'.*did you mean 'knn'"):
        recognizer.resolve(model_dir, ClassifierConfig(classifier="knnn"))
    with pytest.raises(UserError, match="--open_set_score='share'"):
        recognizer.resolve(model_dir, ClassifierConfig(open_set_score="share"))


def test_threshold_rejects_below_it(model_dir):
    trained = run_files.load(model_dir)
    pixels, _ = _val_pixels(trained)
    everything = recognizer.Recognizer(trained, recognizer.Settings(threshold=1.01))
    assert everything(pixels).rejected.all()
    nothing = recognizer.Recognizer(trained, recognizer.Settings(threshold=0.0))
    assert not nothing(tf.constant(pixels)).rejected.any()
