"""Nearest-neighbour search over an embedding gallery, kNN voting and open-set scores.

Everything here works on arrays: L2-normalized query embeddings [Q, D], a gallery
of L2-normalized embeddings [N, D] (float16 or float32) and the gallery's labels [N],
where a "no landmark" distractor photo has the label NO_LANDMARK_NEIGHBOUR. Reading
and writing galleries, and the flags, live elsewhere.

    similarities, indices = search(queries, gallery, k=DEFAULT_K)
    votes = knn_scores(similarities, gather_labels(gallery_labels, indices), num_classes)
    probabilities = classify("hybrid", softmax_probabilities, votes)
    score = open_set_score("vote_share", probabilities, votes)
    threshold = choose_threshold(landmark_scores, distractor_scores)  # on validation data

Search is exact: cosine similarity as one matrix product per block of queries and
gallery rows, keeping a running top-k, so memory is bounded by the block sizes and
not by Q or N. The functions that end in _tf, and those marked "graph-safe", are
TensorFlow ops: they run inside a tf.function or SavedModel, and eagerly they take
numpy arrays and return numpy arrays.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import NamedTuple, Protocol

import numpy as np
import tensorflow as tf

from lmrec.errors import UserError
from lmrec.metrics import NO_LANDMARK
from lmrec.registry import Registry

# The gallery label of a "no landmark" distractor photo; its votes go to no class.
NO_LANDMARK_NEIGHBOUR = NO_LANDMARK

# --knn_k: enough neighbours that one odd photo is outvoted, few enough that a class
# with a handful of gallery photos (a landmark added from 5 photos) can still win.
DEFAULT_K = 10
# --knn_power: a vote weighs max(similarity, 0) ** power. 3 lets close matches dominate
# (0.9 ** 3 = 0.73 against 0.5 ** 3 = 0.13), so the many loose neighbours of a big
# class do not outvote a few near-duplicates of a small one.
DEFAULT_POWER = 3.0
# The kNN share of a hybrid classifier's probabilities.
DEFAULT_KNN_WEIGHT = 0.5

# Block sizes of exact search. A block of similarities is query_chunk x gallery_chunk
# float32 (128 MiB at these sizes).
DEFAULT_QUERY_CHUNK = 1024
DEFAULT_GALLERY_CHUNK = 32768
# A float16 gallery block is cast to float32 this many bytes at a time (see _similarities).
CAST_BYTES = 4 << 20

# choose_threshold: the probability that test landmarks from the validation
# distribution are rejected at most max_landmarks_rejected of the time.
DEFAULT_MAX_LANDMARKS_REJECTED = 0.05
DEFAULT_THRESHOLD_CONFIDENCE = 0.9

# How far below the lowest kept landmark score a threshold sits, relative to the score.
_THRESHOLD_NUDGE = 1e-5

FAISS_MISSING = "the faiss index needs faiss: pip install faiss-cpu"


def _numpy_when_eager(function):
    """Runs a TensorFlow function; eagerly, its tensors come back as numpy arrays."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        result = function(*args, **kwargs)
        if not tf.executing_eagerly():
            return result
        return tf.nest.map_structure(
            lambda value: value.numpy() if isinstance(value, tf.Tensor) else value, result
        )

    return wrapper


# ---------------------------------------------------------------------------------------
# Search


def search_tf(
    queries,
    gallery,
    k: int,
    query_chunk: int = DEFAULT_QUERY_CHUNK,
    gallery_chunk: int = DEFAULT_GALLERY_CHUNK,
) -> tuple[tf.Tensor, tf.Tensor]:
    """The k most similar gallery rows of each query, in TensorFlow ops only.

    Works with dynamic Q and N (a SavedModel's batch, a gallery variable). Queries are
    taken query_chunk at a time; each is compared with gallery_chunk rows at a time, and
    the running top-k is merged with each block's similarities, so no [Q, N] matrix is
    ever built. Equal similarities rank the lower gallery index first.

    Args:
      queries: [Q, D] L2-normalized embeddings.
      gallery: [N, D] L2-normalized embeddings, float16 or float32.
      k: neighbours per query (a Python int).
      query_chunk, gallery_chunk: block sizes, which bound memory.

    Returns:
      (similarities [Q, min(k, N)] float32, highest first; indices [Q, min(k, N)] int32).
    """
    queries = tf.cast(tf.convert_to_tensor(queries), tf.float32)
    gallery = tf.convert_to_tensor(gallery)
    size = tf.shape(gallery, out_type=tf.int32)[0]
    num_queries = tf.shape(queries, out_type=tf.int32)[0]

    def nearest(block_of_queries):
        rows = tf.shape(block_of_queries)[0]
        best = tf.fill([rows, k], tf.constant(-np.inf, tf.float32))
        best_index = tf.fill([rows, k], tf.constant(-1, tf.int32))

        def merge(start, best, best_index):
            similarities = _similarities(gallery[start : start + gallery_chunk], block_of_queries)
            # The block's own top-k first (the last block may have fewer than k rows), then
            # a merge of 2k candidates; the running best come first, so a tie keeps the
            # earlier gallery row.
            block_best, block_index = tf.math.top_k(
                similarities, k=tf.minimum(k, tf.shape(similarities)[1])
            )
            candidates = tf.concat([best, block_best], axis=1)
            candidate_index = tf.concat([best_index, start + block_index], axis=1)
            best, position = tf.math.top_k(candidates, k=k, sorted=True)
            return start + gallery_chunk, best, tf.gather(candidate_index, position, batch_dims=1)

        _, best, best_index = tf.while_loop(
            lambda start, *_: start < size,
            merge,
            (tf.constant(0, tf.int32), best, best_index),
            # Two blocks in flight: the next block's product overlaps this one's top-k,
            # and memory stays at two blocks (the default, 10, would allow ten).
            parallel_iterations=2,
        )
        return best, best_index

    def by_query_block(start, similarities, indices):
        best, best_index = nearest(queries[start : start + query_chunk])
        return (
            start + query_chunk,
            similarities.write(start // query_chunk, best),
            indices.write(start // query_chunk, best_index),
        )

    blocks = (num_queries + query_chunk - 1) // query_chunk
    _, similarities, indices = tf.while_loop(
        lambda start, *_: start < num_queries,
        by_query_block,
        (
            tf.constant(0, tf.int32),
            tf.TensorArray(tf.float32, size=blocks, infer_shape=False, element_shape=[None, k]),
            tf.TensorArray(tf.int32, size=blocks, infer_shape=False, element_shape=[None, k]),
        ),
        parallel_iterations=1,  # query blocks are independent: one at a time bounds memory
    )
    found = tf.minimum(k, size)  # a gallery smaller than k has fewer neighbours
    similarities = tf.reshape(similarities.concat(), [-1, k])[:, :found]
    indices = tf.reshape(indices.concat(), [-1, k])[:, :found]
    return similarities, indices


def _similarities(rows, queries):
    """queries [Q, D] float32 against gallery rows [B, D] -> cosine similarities [Q, B].

    Computed as rows x queries^T, then transposed: with the big operand on the left,
    TF's CPU matmul runs about twice as fast as queries x rows^T. Rows stored in float16
    are cast CAST_BYTES at a time, so the float32 copy is a small buffer the allocator
    reuses (a cast of the whole block would be a fresh allocation, page-faulted on every
    search) and the product reads it from cache.
    """
    if rows.dtype == tf.float32:
        return tf.transpose(tf.linalg.matmul(rows, queries, transpose_b=True))
    step = tf.maximum(1, CAST_BYTES // (4 * tf.shape(rows)[1]))
    parts = (tf.shape(rows)[0] + step - 1) // step

    def product(part, found):
        cast = tf.cast(rows[part * step : (part + 1) * step], tf.float32)
        return part + 1, found.write(part, tf.linalg.matmul(cast, queries, transpose_b=True))

    _, found = tf.while_loop(
        lambda part, _: part < parts,
        product,
        (
            tf.constant(0, tf.int32),
            tf.TensorArray(tf.float32, size=parts, infer_shape=False, element_shape=[None, None]),
        ),
        parallel_iterations=1,
    )
    return tf.transpose(found.concat())


_search_function = tf.function(search_tf, reduce_retracing=True)


def _check_search(queries, gallery, k: int) -> None:
    if len(queries.shape) != 2 or len(gallery.shape) != 2:
        raise UserError(
            f"search takes queries [Q, D] and a gallery [N, D], got shapes "
            f"{tuple(queries.shape)} and {tuple(gallery.shape)}"
        )
    if queries.shape[1] != gallery.shape[1]:
        raise UserError(
            f"The queries are {queries.shape[1]}-dimensional but the gallery is "
            f"{gallery.shape[1]}-dimensional: the gallery was built with another model"
        )
    if k < 1:
        raise UserError(f"--knn_k must be at least 1, got {k}")


def search(
    queries,
    gallery,
    k: int = DEFAULT_K,
    query_chunk: int = DEFAULT_QUERY_CHUNK,
    gallery_chunk: int = DEFAULT_GALLERY_CHUNK,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact cosine search, eagerly: search_tf with numpy in and out.

    The gallery is converted to a tensor on every call; to search one gallery many
    times, keep it in an ExactIndex (or pass a tf.Tensor).

    Returns:
      (similarities [Q, min(k, N)] float32, highest first; indices [Q, min(k, N)] int32).

    Raises:
      UserError: shapes that do not fit together, or k < 1.
    """
    queries = tf.convert_to_tensor(queries)
    gallery = tf.convert_to_tensor(gallery)
    _check_search(queries, gallery, k)
    similarities, indices = _search_function(queries, gallery, k, query_chunk, gallery_chunk)
    return similarities.numpy(), indices.numpy()


class Index(Protocol):
    """A gallery prepared for search; every kind answers like search()."""

    size: int

    def search(self, queries, k: int) -> tuple[np.ndarray, np.ndarray]: ...


class ExactIndex:
    """Exact search, the gallery held as one tensor (its dtype kept: float16 stays float16)."""

    def __init__(
        self,
        gallery,
        query_chunk: int = DEFAULT_QUERY_CHUNK,
        gallery_chunk: int = DEFAULT_GALLERY_CHUNK,
    ):
        self.gallery = tf.convert_to_tensor(gallery)
        self.size = int(self.gallery.shape[0])
        self.query_chunk, self.gallery_chunk = query_chunk, gallery_chunk

    def search(self, queries, k: int = DEFAULT_K) -> tuple[np.ndarray, np.ndarray]:
        return search(queries, self.gallery, k, self.query_chunk, self.gallery_chunk)


class FaissIndex:
    """Approximate search with faiss (pip install faiss-cpu), for galleries past ~1e6.

    Args:
      gallery: [N, D] L2-normalized embeddings.
      description: a faiss.index_factory string, built with the inner-product metric;
        "HNSW32" needs no training, "Flat" is exact.

    A neighbour faiss could not find is returned with similarity -inf and index -1
    (gather_labels turns it into a distractor with no vote).

    Raises:
      UserError: faiss is not installed.
    """

    def __init__(self, gallery, description: str = "HNSW32"):
        try:
            import faiss
        except ImportError:
            raise UserError(FAISS_MISSING) from None
        gallery = np.ascontiguousarray(gallery, dtype=np.float32)
        self.size = len(gallery)
        self._index = faiss.index_factory(gallery.shape[1], description, faiss.METRIC_INNER_PRODUCT)
        self._index.add(gallery)

    def search(self, queries, k: int = DEFAULT_K) -> tuple[np.ndarray, np.ndarray]:
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        found = min(k, self.size)
        if found == 0:
            return np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0), np.int32)
        similarities, indices = self._index.search(queries, found)
        missing = indices < 0
        return (
            np.where(missing, -np.inf, similarities).astype(np.float32),
            np.where(missing, -1, indices).astype(np.int32),
        )


INDEXES: Registry[Callable[..., Index]] = Registry(
    "index", {"exact": ExactIndex, "faiss": FaissIndex}, flag="index"
)


def build_index(gallery, kind: str = "exact") -> Index:
    """The gallery in an index of the given kind ("exact" or "faiss")."""
    return INDEXES.get(kind)(gallery)


@_numpy_when_eager
def gather_labels(gallery_labels, indices):
    """The labels [Q, k] of the neighbours found; index -1 (not found) is a distractor.

    Graph-safe.
    """
    gallery_labels = tf.cast(tf.convert_to_tensor(gallery_labels), tf.int32)
    indices = tf.convert_to_tensor(indices, tf.int32)
    found = tf.gather(gallery_labels, tf.maximum(indices, 0))
    return tf.where(indices >= 0, found, NO_LANDMARK_NEIGHBOUR)


# ---------------------------------------------------------------------------------------
# kNN voting and the classifiers


class KnnResult(NamedTuple):
    """Similarity-weighted votes of a query's neighbours.

    class_scores: [Q, C] per class, the sum of max(similarity, 0) ** power over the
      query's neighbours of that class.
    no_landmark_score: [Q] the same sum over its distractor neighbours.
    top1_similarity: [Q] the similarity of its most similar landmark neighbour; -1 (the
      lowest cosine) when all k neighbours are distractors.
    """

    class_scores: np.ndarray | tf.Tensor
    no_landmark_score: np.ndarray | tf.Tensor
    top1_similarity: np.ndarray | tf.Tensor


@_numpy_when_eager
def knn_scores(
    similarities, neighbour_labels, num_classes: int, power: float = DEFAULT_POWER
) -> KnnResult:
    """Similarity-weighted voting of the top-k neighbours, for each class. Graph-safe.

    Args:
      similarities: [Q, k] from search.
      neighbour_labels: [Q, k] class ids in [0, num_classes), or NO_LANDMARK_NEIGHBOUR.
      num_classes: C, the gallery's classes (trained classes first, then added ones).
      power: p in max(similarity, 0) ** p.

    Returns:
      KnnResult (float32).

    Raises:
      UserError (eagerly): a label outside [0, num_classes) other than NO_LANDMARK_NEIGHBOUR.
    """
    similarities = tf.cast(tf.convert_to_tensor(similarities), tf.float32)
    labels = tf.cast(tf.convert_to_tensor(neighbour_labels), tf.int64)
    if tf.executing_eagerly():
        values = labels.numpy()
        bad = values[(values >= num_classes) | ((values < 0) & (values != NO_LANDMARK_NEIGHBOUR))]
        if bad.size:
            raise UserError(
                f"Neighbour label {int(bad[0])} is outside the gallery's {num_classes} "
                f"classes (and is not the distractor label {NO_LANDMARK_NEIGHBOUR})"
            )
    votes = tf.pow(tf.maximum(similarities, 0.0), power)
    is_landmark = labels >= 0
    rows = tf.shape(labels, out_type=tf.int64)[0]
    # Sum the votes per (query, class) pair: segment q * C + c of a flat [Q * C] vector.
    segment = tf.range(rows)[:, None] * num_classes + tf.where(is_landmark, labels, 0)
    class_scores = tf.math.unsorted_segment_sum(
        tf.reshape(tf.where(is_landmark, votes, 0.0), [-1]),
        tf.reshape(segment, [-1]),
        rows * num_classes,
    )
    lowest = tf.constant(-1.0, tf.float32)
    top1 = tf.reduce_max(tf.where(is_landmark, similarities, lowest), axis=1)
    return KnnResult(
        class_scores=tf.reshape(class_scores, [-1, num_classes]),
        no_landmark_score=tf.reduce_sum(tf.where(is_landmark, 0.0, votes), axis=1),
        # reduce_max over no neighbours (an empty gallery) is -inf: -1 there too.
        top1_similarity=tf.maximum(top1, lowest),
    )


@_numpy_when_eager
def knn_probabilities(knn: KnnResult):
    """[Q, C] class votes over all votes, distractor votes included. Graph-safe.

    Like a softmax, rows sum to at most 1; unlike one, a photo whose neighbours are
    mostly distractors gets low probabilities for every class (the row sums to the
    landmark share of the votes), and one with no positive similarity gets zeros.
    """
    class_scores = tf.convert_to_tensor(knn.class_scores, tf.float32)
    total = tf.reduce_sum(class_scores, axis=1) + tf.convert_to_tensor(
        knn.no_landmark_score, tf.float32
    )
    return tf.math.divide_no_nan(class_scores, total[:, None])


@_numpy_when_eager
def hybrid(softmax_probabilities, knn_probabilities, knn_weight: float = DEFAULT_KNN_WEIGHT):
    """kNN and softmax probabilities combined over the trained classes. Graph-safe.

    The softmax has a column per trained class (C_trained); the gallery may hold more
    classes, added without retraining, after the trained ones (C_total >= C_trained).
    The kNN votes say how likely a photo shows a trained class at all (trained_share,
    their share of all votes), an added one, or none (the distractors' share). The
    softmax only knows which trained class it is, given that it is one. So the
    trained classes share trained_share, split by a convex combination of the two,
    and the added classes keep their kNN probabilities:

        trained columns: knn_weight * knn + (1 - knn_weight) * softmax * trained_share
        added columns:   knn

    Rows sum to the landmark share of the votes, like knn_probabilities. With only
    trained classes and no distractors in the gallery, trained_share is 1 and this is
    the plain convex combination; a photo of an added landmark, or of no landmark, is
    not outvoted by a confident softmax.

    Args:
      softmax_probabilities: [Q, C_trained].
      knn_probabilities: [Q, C_total] from knn_probabilities().
      knn_weight: in [0, 1]; 1 is knn alone.

    Returns:
      [Q, C_total] float32, rows summing to at most 1.

    Raises:
      UserError: knn_weight outside [0, 1], or fewer kNN classes than softmax classes.
    """
    if not 0.0 <= knn_weight <= 1.0:
        raise UserError(
            f"The kNN weight of the hybrid classifier must be in [0, 1], got {knn_weight}"
        )
    softmax_probabilities = tf.cast(tf.convert_to_tensor(softmax_probabilities), tf.float32)
    knn_probabilities = tf.cast(tf.convert_to_tensor(knn_probabilities), tf.float32)
    trained, total = softmax_probabilities.shape[-1], knn_probabilities.shape[-1]
    if trained is not None and total is not None and total < trained:
        raise UserError(
            f"The gallery has {total} classes but the model was trained on {trained}: "
            "a gallery holds every trained class first, then the added ones"
        )
    trained = tf.shape(softmax_probabilities)[1]
    knn_trained = knn_probabilities[:, :trained]
    trained_share = tf.reduce_sum(knn_trained, axis=1, keepdims=True)
    combined = knn_weight * knn_trained + (1.0 - knn_weight) * softmax_probabilities * trained_share
    return tf.concat([combined, knn_probabilities[:, trained:]], axis=1)


@_numpy_when_eager
def _softmax_alone(softmax_probabilities, knn: KnnResult | None):
    """The softmax, with zero columns for the gallery's added classes when there is one."""
    softmax_probabilities = tf.cast(tf.convert_to_tensor(softmax_probabilities), tf.float32)
    if knn is None:
        return softmax_probabilities
    added = tf.shape(knn.class_scores)[1] - tf.shape(softmax_probabilities)[1]
    return tf.pad(softmax_probabilities, [[0, 0], [0, tf.maximum(added, 0)]])


class ClassifierSpec(NamedTuple):
    """One way to turn a photo's softmax and gallery votes into class probabilities.

    probabilities(softmax [Q, C_trained] or None, knn KnnResult or None, knn_weight)
    -> [Q, C]; uses_gallery and uses_softmax say which inputs it needs.
    """

    probabilities: Callable
    uses_gallery: bool
    uses_softmax: bool
    description: str


CLASSIFIERS: Registry[ClassifierSpec] = Registry(
    "classifier",
    {
        "softmax": ClassifierSpec(
            lambda softmax, knn, knn_weight: _softmax_alone(softmax, knn),
            uses_gallery=False,
            uses_softmax=True,
            description="the trained head's softmax; knows the trained classes only",
        ),
        "knn": ClassifierSpec(
            lambda softmax, knn, knn_weight: knn_probabilities(knn),
            uses_gallery=True,
            uses_softmax=False,
            description="similarity-weighted votes of the top --knn_k gallery neighbours",
        ),
        "hybrid": ClassifierSpec(
            lambda softmax, knn, knn_weight: hybrid(softmax, knn_probabilities(knn), knn_weight),
            uses_gallery=True,
            uses_softmax=True,
            description="knn and softmax combined; knows added gallery classes too",
        ),
    },
    flag="classifier",
)


def classify(
    name: str,
    softmax_probabilities=None,
    knn: KnnResult | None = None,
    knn_weight: float = DEFAULT_KNN_WEIGHT,
):
    """Class probabilities [Q, C] by the classifier called name. Graph-safe.

    Raises:
      UserError: an unknown name, or an input that classifier needs is missing.
    """
    spec = CLASSIFIERS.get(name)
    if spec.uses_gallery and knn is None:
        raise UserError(
            f"--classifier={name} needs a gallery of embeddings: build one with "
            "python -m lmrec.gallery build"
        )
    if spec.uses_softmax and softmax_probabilities is None:
        raise UserError(f"--classifier={name} needs the model's softmax probabilities")
    return spec.probabilities(softmax_probabilities, knn, knn_weight)


# ---------------------------------------------------------------------------------------
# Open-set ("no landmark") scores and their threshold


@_numpy_when_eager
def top_probability(probabilities):
    """[Q] the highest class probability."""
    return tf.reduce_max(tf.cast(tf.convert_to_tensor(probabilities), tf.float32), axis=1)


@_numpy_when_eager
def margin(probabilities):
    """[Q] best class probability minus the second best (the best alone with one class)."""
    probabilities = tf.cast(tf.convert_to_tensor(probabilities), tf.float32)
    top = tf.math.top_k(tf.pad(probabilities, [[0, 0], [0, 1]]), k=2).values
    return top[:, 0] - top[:, 1]


@_numpy_when_eager
def vote_share(knn: KnnResult):
    """[Q] landmark votes over all votes (distractor neighbours included); 0 with no votes."""
    landmark = tf.reduce_sum(tf.convert_to_tensor(knn.class_scores, tf.float32), axis=1)
    all_votes = landmark + tf.convert_to_tensor(knn.no_landmark_score, tf.float32)
    return tf.math.divide_no_nan(landmark, all_votes)


class OpenSetScoreSpec(NamedTuple):
    """A per-photo score, higher for photos that show a landmark.

    score(probabilities [Q, C], knn KnnResult or None) -> [Q]. uses_gallery says
    whether it needs the kNN votes.
    """

    score: Callable
    uses_gallery: bool
    description: str


OPEN_SET_SCORES: Registry[OpenSetScoreSpec] = Registry(
    "open-set score",
    {
        "top_probability": OpenSetScoreSpec(
            lambda probabilities, knn: top_probability(probabilities),
            uses_gallery=False,
            description="the classifier's highest class probability",
        ),
        "top_similarity": OpenSetScoreSpec(
            lambda probabilities, knn: knn.top1_similarity,
            uses_gallery=True,
            description="cosine similarity to the nearest landmark photo of the gallery",
        ),
        "margin": OpenSetScoreSpec(
            lambda probabilities, knn: margin(probabilities),
            uses_gallery=False,
            description="the best class probability minus the second best (kNN: votes)",
        ),
        "vote_share": OpenSetScoreSpec(
            lambda probabilities, knn: vote_share(knn),
            uses_gallery=True,
            description="landmark votes over all votes, distractor photos in the gallery included",
        ),
    },
    flag="open_set_score",
)


def open_set_score(kind: str, probabilities=None, knn: KnnResult | None = None):
    """[Q] the open-set score called kind; reject a photo when it is below the threshold.

    Graph-safe.

    Raises:
      UserError: an unknown kind, or one that needs the gallery without knn votes.
    """
    spec = OPEN_SET_SCORES.get(kind)
    if spec.uses_gallery and knn is None:
        raise UserError(
            f"--open_set_score={kind} needs a gallery of embeddings: build one with "
            "python -m lmrec.gallery build, or use top_probability or margin"
        )
    if not spec.uses_gallery and probabilities is None:
        raise UserError(f"--open_set_score={kind} needs class probabilities")
    return spec.score(probabilities, knn)


class Threshold(NamedTuple):
    """A reject threshold (score < value: "no landmark") and what it rejects on the
    data it was chosen on: fractions of the landmark and of the distractor photos."""

    value: float
    landmarks_rejected: float
    distractors_rejected: float


def _binomial_cdf(n: int, p: float) -> np.ndarray:
    """P(Binomial(n, p) <= m) for m = 0..n."""
    if p <= 0.0:
        return np.ones(n + 1)
    if p >= 1.0:
        return np.r_[np.zeros(n), 1.0]
    m = np.arange(n + 1)
    log_choose = np.array(
        [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) for i in m]
    )
    log_pmf = log_choose + m * math.log(p) + (n - m) * math.log1p(-p)
    return np.minimum(np.cumsum(np.exp(log_pmf)), 1.0)


def choose_threshold(
    landmark_scores,
    distractor_scores,
    max_landmarks_rejected: float = DEFAULT_MAX_LANDMARKS_REJECTED,
    confidence: float = DEFAULT_THRESHOLD_CONFIDENCE,
) -> Threshold:
    """The reject threshold, chosen on validation photos, that holds on unseen ones.

    Rejected distractors only grow with the threshold, so the best threshold on the
    validation data alone sits just below the landmark score of rank
    floor(max_landmarks_rejected * n) + 1: it rejects exactly the allowed fraction of
    validation landmarks. On test photos it would reject more about half of the time.
    Instead the threshold rejects the m lowest of the n validation landmark scores, m
    the largest count with

        P(Binomial(n, max_landmarks_rejected) <= m) <= 1 - confidence.

    For landmark photos from the validation distribution, the fraction rejected by the
    (m+1)-th lowest score exceeds max_landmarks_rejected with exactly that probability
    (an order-statistic tolerance bound: no assumption on the score distribution), so it
    holds on test data with probability >= confidence. The distractor scores decide
    nothing; they say what the threshold achieves. With fewer validation landmarks than
    about log(1 - confidence) / log(1 - max_landmarks_rejected) (45 at the defaults) no
    m meets the bound, and the threshold rejects no validation landmark.

    The value sits a hair below the lowest landmark score kept (1e-5 relative, about 100
    float32 steps; halfway to the highest score rejected when that is closer), so float
    rounding in another runtime (the SavedModel, TFLite) does not reject that photo.

    Args:
      landmark_scores: [n] open-set scores of validation photos that show a landmark.
      distractor_scores: [d] scores of validation photos that show none (may be empty).
      max_landmarks_rejected: the largest fraction of landmark photos to reject.
      confidence: the probability that unseen landmark photos keep within it.

    Returns:
      Threshold(value, landmarks_rejected, distractors_rejected) on the given data
      (distractors_rejected is nan without distractors).

    Raises:
      UserError: no landmark scores, or a fraction outside [0, 1).
    """
    landmark_scores = np.sort(np.asarray(landmark_scores, np.float64).ravel())
    distractor_scores = np.asarray(distractor_scores, np.float64).ravel()
    if not 0.0 <= max_landmarks_rejected < 1.0:
        raise UserError(
            f"The fraction of landmarks to reject must be in [0, 1), got {max_landmarks_rejected}"
        )
    if not 0.0 < confidence < 1.0:
        raise UserError(f"The threshold's confidence must be in (0, 1), got {confidence}")
    n = len(landmark_scores)
    if n == 0:
        raise UserError(
            "Choosing a no-landmark threshold needs validation photos of landmarks; none were given"
        )
    meets_bound = np.flatnonzero(_binomial_cdf(n, max_landmarks_rejected) <= 1.0 - confidence)
    rejected = int(meets_bound[-1]) if len(meets_bound) else 0
    lowest_kept = landmark_scores[rejected]
    value = lowest_kept - max(abs(lowest_kept), 1.0) * _THRESHOLD_NUDGE
    if rejected:
        value = max(value, (landmark_scores[rejected - 1] + lowest_kept) / 2.0)
    return Threshold(
        value=float(value),
        landmarks_rejected=float(np.mean(landmark_scores < value)),
        distractors_rejected=(
            float(np.mean(distractor_scores < value)) if distractor_scores.size else float("nan")
        ),
    )
