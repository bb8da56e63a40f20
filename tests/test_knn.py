"""Exact search, kNN voting, the classifiers and open-set thresholds, against numpy references."""

from __future__ import annotations

import importlib.util
import math

import numpy as np
import pytest
import tensorflow as tf

from lmrec import knn
from lmrec.errors import UserError

DISTRACTOR = knn.NO_LANDMARK_NEIGHBOUR


def _unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def _random_unit(rng, n: int, dimension: int = 16) -> np.ndarray:
    return _unit(rng.normal(size=(n, dimension)))


def _reference(queries, gallery, k):
    similarities = queries.astype(np.float64) @ gallery.astype(np.float64).T
    order = np.argsort(-similarities, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(similarities, order, axis=1), order


# --- search -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "num_queries, size, k, query_chunk, gallery_chunk",
    [
        (9, 50, 5, 1024, 32768),  # one block
        (9, 50, 5, 4, 8),  # blocks that do not divide Q or N
        (10, 48, 7, 5, 16),  # blocks that divide both
        (3, 4, 10, 2, 3),  # a gallery smaller than k
        (6, 40, 40, 4, 7),  # k == N
        (1, 100, 1, 1, 1),  # one row at a time
    ],
)
def test_search_matches_numpy_argsort(num_queries, size, k, query_chunk, gallery_chunk):
    rng = np.random.default_rng(size + k)
    queries, gallery = _random_unit(rng, num_queries), _random_unit(rng, size)
    similarities, indices = knn.search(queries, gallery, k, query_chunk, gallery_chunk)
    expected_similarities, expected_indices = _reference(queries, gallery, k)
    assert similarities.dtype == np.float32 and indices.dtype == np.int32
    assert indices.shape == (num_queries, min(k, size))
    np.testing.assert_array_equal(indices, expected_indices)
    np.testing.assert_allclose(similarities, expected_similarities, atol=1e-5)


def test_search_of_a_float16_gallery_ranks_its_float16_values():
    rng = np.random.default_rng(1)
    queries = _random_unit(rng, 20, 32)
    gallery = _random_unit(rng, 300, 32).astype(np.float16)
    similarities, indices = knn.search(queries, gallery, 10, query_chunk=7, gallery_chunk=64)
    expected_similarities, expected_indices = _reference(queries, gallery, 10)
    np.testing.assert_array_equal(indices, expected_indices)
    np.testing.assert_allclose(similarities, expected_similarities, atol=1e-5)


def test_ties_rank_the_earlier_gallery_row_first_across_blocks():
    gallery = np.tile(np.eye(4, dtype=np.float32), (3, 1))  # rows 0, 4, 8 are equal
    _, indices = knn.search(np.eye(4, dtype=np.float32)[:1], gallery, 3, gallery_chunk=5)
    assert indices.tolist() == [[0, 4, 8]]


def test_empty_queries_and_empty_gallery():
    rng = np.random.default_rng(2)
    similarities, indices = knn.search(np.zeros((0, 16), np.float32), _random_unit(rng, 5), 3)
    assert similarities.shape == indices.shape == (0, 3)
    similarities, indices = knn.search(_random_unit(rng, 2), np.zeros((0, 16), np.float32), 3)
    assert similarities.shape == indices.shape == (2, 0)


def test_search_refuses_shapes_that_do_not_fit():
    rng = np.random.default_rng(3)
    with pytest.raises(UserError, match="another model"):
        knn.search(_random_unit(rng, 2, 8), _random_unit(rng, 5, 16), 3)
    with pytest.raises(UserError, match="knn_k"):
        knn.search(_random_unit(rng, 2), _random_unit(rng, 5), 0)


def test_search_tf_runs_in_a_graph_with_unknown_batch_and_gallery_size():
    rng = np.random.default_rng(4)
    queries, gallery = _random_unit(rng, 11), _random_unit(rng, 37).astype(np.float16)
    function = tf.function(
        lambda q, g: knn.search_tf(q, g, 6, query_chunk=4, gallery_chunk=10),
        input_signature=[
            tf.TensorSpec([None, 16], tf.float32),
            tf.TensorSpec([None, 16], tf.float16),
        ],
    )
    similarities, indices = function(queries, gallery)
    np.testing.assert_array_equal(indices.numpy(), _reference(queries, gallery, 6)[1])
    assert function(queries, gallery[:2])[1].shape == (11, 2)


def test_exact_index_searches_like_search():
    rng = np.random.default_rng(5)
    queries, gallery = _random_unit(rng, 6), _random_unit(rng, 30)
    index = knn.build_index(gallery.astype(np.float16))
    assert index.size == 30
    np.testing.assert_array_equal(index.search(queries, 4)[1], _reference(queries, gallery, 4)[1])
    with pytest.raises(UserError, match="faiss"):
        knn.build_index(gallery, "fiass")


@pytest.mark.skipif(importlib.util.find_spec("faiss") is None, reason="faiss is not installed")
def test_faiss_flat_index_agrees_with_exact_search():
    rng = np.random.default_rng(6)
    queries, gallery = _random_unit(rng, 6), _random_unit(rng, 30)
    similarities, indices = knn.FaissIndex(gallery, "Flat").search(queries, 4)
    expected_similarities, expected_indices = _reference(queries, gallery, 4)
    np.testing.assert_array_equal(indices, expected_indices)
    np.testing.assert_allclose(similarities, expected_similarities, atol=1e-5)


@pytest.mark.skipif(importlib.util.find_spec("faiss") is not None, reason="faiss is installed")
def test_faiss_index_without_faiss_says_how_to_install_it():
    with pytest.raises(UserError, match="pip install faiss-cpu"):
        knn.build_index(np.eye(3, dtype=np.float32), "faiss")


def test_gather_labels_marks_missing_neighbours_as_distractors():
    labels = knn.gather_labels(np.array([4, 5, DISTRACTOR]), np.array([[2, 0, -1]]))
    assert labels.tolist() == [[DISTRACTOR, 4, DISTRACTOR]]


# --- voting -----------------------------------------------------------------------------


def _brute_force_votes(similarities, labels, num_classes, power):
    class_scores = np.zeros((len(labels), num_classes))
    no_landmark = np.zeros(len(labels))
    top1 = np.full(len(labels), -1.0)
    for q in range(len(labels)):
        for similarity, label in zip(similarities[q], labels[q], strict=True):
            vote = max(similarity, 0.0) ** power
            if label == DISTRACTOR:
                no_landmark[q] += vote
            else:
                class_scores[q, label] += vote
                top1[q] = max(top1[q], similarity)
    return class_scores, no_landmark, top1


def test_knn_scores_equal_a_brute_force_vote():
    rng = np.random.default_rng(7)
    similarities = np.sort(rng.uniform(-0.3, 1.0, (30, 8)), axis=1)[:, ::-1].astype(np.float32)
    labels = rng.integers(-1, 5, (30, 8))
    labels[0] = DISTRACTOR  # a query whose neighbours are all distractors
    result = knn.knn_scores(similarities, labels, 5, power=2.5)
    class_scores, no_landmark, top1 = _brute_force_votes(similarities, labels, 5, 2.5)
    np.testing.assert_allclose(result.class_scores, class_scores, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(result.no_landmark_score, no_landmark, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(result.top1_similarity, top1, rtol=1e-6)
    assert result.top1_similarity[0] == -1.0 and result.class_scores[0].sum() == 0


def test_knn_probabilities_divide_by_all_votes_including_distractors():
    similarities = np.array([[0.9, 0.8, 0.5], [0.9, 0.8, 0.5], [-0.2, -0.3, -0.4]], np.float32)
    labels = np.array([[1, 1, 0], [DISTRACTOR, DISTRACTOR, 0], [0, 1, 1]])
    votes = knn.knn_scores(similarities, labels, 2, power=1.0)
    probabilities = knn.knn_probabilities(votes)
    np.testing.assert_allclose(probabilities[0], [0.5 / 2.2, 1.7 / 2.2], rtol=1e-6)
    np.testing.assert_allclose(probabilities[1], [0.5 / 2.2, 0.0], rtol=1e-6)
    np.testing.assert_array_equal(probabilities[2], [0.0, 0.0])  # no positive similarity
    np.testing.assert_allclose(knn.vote_share(votes), [1.0, 0.5 / 2.2, 0.0], rtol=1e-6)


def test_knn_scores_refuse_a_label_outside_the_classes():
    with pytest.raises(UserError, match="outside"):
        knn.knn_scores(np.ones((1, 2), np.float32), np.array([[0, 3]]), 3)


def test_hybrid_is_the_plain_average_when_knn_knows_only_trained_classes():
    softmax = np.array([[0.7, 0.2, 0.1]], np.float32)
    knn_probabilities = np.array([[0.1, 0.6, 0.3]], np.float32)
    np.testing.assert_allclose(
        knn.hybrid(softmax, knn_probabilities, 0.25), 0.25 * knn_probabilities + 0.75 * softmax
    )


def test_hybrid_pads_added_classes_and_trusts_knn_on_them():
    softmax = np.array([[0.95, 0.05]], np.float32)  # a confident softmax on trained class 0
    knn_probabilities = np.array([[0.05, 0.0, 0.95]], np.float32)  # kNN: added class 2
    result = knn.hybrid(softmax, knn_probabilities, 0.5)
    assert result.shape == (1, 3) and int(np.argmax(result)) == 2
    np.testing.assert_allclose(result, [[0.5 * 0.05 + 0.5 * 0.95 * 0.05, 0.5 * 0.05 * 0.05, 0.95]])
    np.testing.assert_allclose(result.sum(), knn_probabilities.sum(), rtol=1e-6)
    with pytest.raises(UserError, match="trained on 2"):
        knn.hybrid(softmax, knn_probabilities[:, :1], 0.5)
    with pytest.raises(UserError, match=r"\[0, 1\]"):
        knn.hybrid(softmax, knn_probabilities, 1.5)


def test_classifier_and_open_set_registries_name_their_flags():
    assert knn.CLASSIFIERS.names() == ["softmax", "knn", "hybrid"]
    with pytest.raises(UserError, match="--classifier='hybird'.*did you mean 'hybrid'"):
        knn.classify("hybird", np.ones((1, 2)), None)
    with pytest.raises(UserError, match="gallery"):
        knn.classify("knn", np.ones((1, 2)), None)
    with pytest.raises(UserError, match="--open_set_score"):
        knn.open_set_score("vote_share", np.ones((1, 2)), None)
    assert set(knn.OPEN_SET_SCORES) == {"top_probability", "top_similarity", "margin", "vote_share"}


def test_open_set_scores_by_hand():
    probabilities = np.array([[0.6, 0.3, 0.1], [0.2, 0.2, 0.1]], np.float32)
    votes = knn.KnnResult(
        class_scores=np.array([[2.0, 1.0, 0.0], [0.5, 0.0, 0.0]], np.float32),
        no_landmark_score=np.array([1.0, 1.5], np.float32),
        top1_similarity=np.array([0.9, 0.4], np.float32),
    )
    expected = {
        "top_probability": [0.6, 0.2],
        "top_similarity": [0.9, 0.4],
        "margin": [0.3, 0.0],
        "vote_share": [0.75, 0.25],
    }
    for kind, values in expected.items():
        np.testing.assert_allclose(
            knn.open_set_score(kind, probabilities, votes), values, atol=1e-6
        )
    np.testing.assert_allclose(knn.margin(np.array([[0.8]])), [0.8])  # one class: vs. 0


def test_the_whole_chain_runs_inside_a_tf_function():
    rng = np.random.default_rng(8)
    queries, gallery = _random_unit(rng, 5), _random_unit(rng, 20).astype(np.float16)
    gallery_labels = np.array([0, 1, 2, DISTRACTOR] * 5)
    softmax = rng.dirichlet(np.ones(2), 5).astype(np.float32)

    def chain(queries, softmax):
        similarities, indices = knn.search_tf(queries, gallery, 4, gallery_chunk=6)
        votes = knn.knn_scores(similarities, knn.gather_labels(gallery_labels, indices), 3)
        probabilities = knn.classify("hybrid", softmax, votes)
        return probabilities, knn.open_set_score("vote_share", probabilities, votes)

    in_graph = tf.function(chain)(tf.constant(queries), tf.constant(softmax))
    eager = chain(queries, softmax)
    assert isinstance(eager[0], np.ndarray) and eager[0].shape == (5, 3)
    for graph_value, eager_value in zip(in_graph, eager, strict=True):
        np.testing.assert_allclose(graph_value.numpy(), eager_value, rtol=1e-5)


# --- threshold --------------------------------------------------------------------------


def _scores(rng, landmarks: int, distractors: int):
    """Overlapping score distributions: landmarks high, distractors low."""
    return rng.normal(0.7, 0.1, landmarks), rng.normal(0.35, 0.12, distractors)


@pytest.mark.parametrize("max_rejected", [0.02, 0.05, 0.2])
def test_threshold_keeps_its_landmark_bound_on_the_data_and_on_fresh_samples(max_rejected):
    rng = np.random.default_rng(9)
    landmarks, distractors = _scores(rng, 400, 400)
    threshold = knn.choose_threshold(landmarks, distractors, max_rejected)
    assert threshold.landmarks_rejected <= max_rejected
    assert threshold.landmarks_rejected == pytest.approx(np.mean(landmarks < threshold.value))
    assert threshold.distractors_rejected == pytest.approx(np.mean(distractors < threshold.value))
    assert threshold.distractors_rejected > 0.5  # it does reject distractors
    fresh = [np.mean(_scores(rng, 2000, 0)[0] < threshold.value) for _ in range(50)]
    # On test data from the same distribution: within the bound at least ~confidence of the
    # time (the validation sample decides the threshold once; fresh samples add their noise).
    assert np.mean(np.array(fresh) <= max_rejected) >= 0.8


def test_threshold_bound_holds_over_repeated_validation_samples():
    """Over many validation draws, the true rejection rate exceeds the bound <= 10% of times."""
    rng = np.random.default_rng(10)
    exceeded = []
    for _ in range(300):
        landmarks, distractors = _scores(rng, 200, 50)
        value = knn.choose_threshold(landmarks, distractors, 0.05, confidence=0.9).value
        true_rate = 0.5 * (1 + math.erf((value - 0.7) / (0.1 * math.sqrt(2))))
        exceeded.append(true_rate > 0.05)
    assert np.mean(exceeded) <= 0.1 + 3 * np.sqrt(0.1 * 0.9 / 300)


def test_threshold_rejects_the_most_distractors_its_rule_allows():
    landmarks = np.linspace(0.5, 1.0, 1000)
    distractors = np.linspace(0.0, 0.6, 100)
    threshold = knn.choose_threshold(landmarks, distractors, 0.05, confidence=0.5)
    # With confidence 0.5 the rule rejects about the allowed 5% of validation landmarks.
    assert 0.04 <= threshold.landmarks_rejected <= 0.05
    looser = knn.choose_threshold(landmarks, distractors, 0.05, confidence=0.99)
    assert looser.value < threshold.value
    assert looser.distractors_rejected <= threshold.distractors_rejected


def test_threshold_with_few_landmarks_rejects_none_of_them():
    threshold = knn.choose_threshold([0.8, 0.6, 0.9], [0.1, 0.7], 0.05)
    assert threshold.value < 0.6 and threshold.landmarks_rejected == 0.0
    assert threshold.distractors_rejected == 0.5
    assert np.isnan(knn.choose_threshold([0.5], [], 0.05).distractors_rejected)
    with pytest.raises(UserError, match="landmarks"):
        knn.choose_threshold([], [0.1], 0.05)
    with pytest.raises(UserError, match=r"\[0, 1\)"):
        knn.choose_threshold([0.5], [0.1], 1.0)


# --- end to end -------------------------------------------------------------------------


def test_knn_and_hybrid_recognize_an_added_class_that_the_softmax_cannot():
    """Two trained classes and one added from 5 gallery photos, plus distractors."""
    rng = np.random.default_rng(11)
    dimension, spread = 32, 0.12
    centres = _random_unit(rng, 4, dimension)  # classes 0, 1 trained, 2 added; 3: no landmark

    def photos(centre: int, n: int) -> np.ndarray:
        return _unit(centres[centre] + spread * rng.normal(size=(n, dimension)))

    gallery = np.concatenate([photos(0, 40), photos(1, 40), photos(2, 5)]).astype(np.float16)
    gallery_labels = np.repeat([0, 1, 2], [40, 40, 5])
    queries = np.concatenate([photos(0, 20), photos(1, 20), photos(2, 20)])
    query_labels = np.repeat([0, 1, 2], 20)
    # The trained head: a softmax over cosine to the two trained class centres.
    softmax = tf.nn.softmax(20.0 * queries @ centres[:2].T).numpy()

    similarities, indices = knn.search(queries, gallery, knn.DEFAULT_K)
    votes = knn.knn_scores(similarities, knn.gather_labels(gallery_labels, indices), 3)
    predicted = {
        name: np.argmax(knn.classify(name, softmax, votes), axis=1) for name in knn.CLASSIFIERS
    }
    added = query_labels == 2
    assert np.mean(predicted["softmax"][added] == 2) == 0.0
    for name in ("knn", "hybrid"):
        assert np.mean(predicted[name][added] == 2) >= 0.9, name
        assert np.mean(predicted[name][~added] == query_labels[~added]) >= 0.95, name
    assert np.mean(predicted["softmax"][~added] == query_labels[~added]) >= 0.95

    # Distractor photos in the gallery and among the queries: vote_share rejects them.
    distractor_gallery = np.concatenate([gallery, photos(3, 30).astype(np.float16)])
    distractor_labels = np.concatenate([gallery_labels, np.full(30, DISTRACTOR)])
    validation = np.concatenate([queries, photos(3, 20)])
    similarities, indices = knn.search(validation, distractor_gallery)
    votes = knn.knn_scores(similarities, knn.gather_labels(distractor_labels, indices), 3)
    share = knn.open_set_score("vote_share", knn.classify("knn", None, votes), votes)
    threshold = knn.choose_threshold(share[:60], share[60:], 0.05)
    assert threshold.landmarks_rejected <= 0.05 and threshold.distractors_rejected >= 0.9
