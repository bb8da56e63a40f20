"""A photo's answer from a trained model and, for knn and hybrid, its gallery.

One forward pass gives the softmax and the embedding (lmrec.embeddings); the
gallery's nearest photos vote (lmrec.knn); --classifier picks softmax, knn or
hybrid probabilities over the model's classes plus the landmarks added to the
gallery; an open-set score below the threshold answers "no landmark".

evaluate, predict and the export all answer through a Recognizer, so a photo
gets the same answer everywhere. The threshold and its score are chosen by
`python -m lmrec.evaluate --choose_threshold` on validation photos plus
distractors and stored in <model_dir>/open_set.json (OpenSetChoice), which
predict and the export read.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from lmrec import atomic, console, embeddings, gallery, knn, run_files
from lmrec.config import ClassifierConfig
from lmrec.errors import UserError

OPEN_SET_FILE = "open_set.json"
DEFAULT_SCORE = "top_probability"
# Galleries up to this size are searched in float32 (cast once); bigger ones stay float16.
FLOAT32_GALLERY_BYTES = 1 << 30


@dataclass(frozen=True)
class OpenSetChoice:
    """What --choose_threshold measured and stored with the model.

    Attributes:
      classifier, knn_k, knn_power, knn_weight: the classifier the threshold is for.
      score: the OPEN_SET_SCORES kind; a photo scoring below threshold is "no landmark".
      threshold: the value chosen on validation data (knn.choose_threshold).
      gallery_fingerprint: the model's fingerprint when the gallery was used ("" for softmax).
      model_fingerprint: the weights the threshold was chosen with (lmrec.embeddings
        fingerprint): a threshold does not carry over to retrained weights.
      measured: what the threshold did on the data it was chosen on.
    """

    classifier: str
    score: str
    threshold: float
    knn_k: int = knn.DEFAULT_K
    knn_power: float = knn.DEFAULT_POWER
    knn_weight: float = knn.DEFAULT_KNN_WEIGHT
    gallery_fingerprint: str = ""
    model_fingerprint: str = ""
    measured: dict = dataclasses.field(default_factory=dict)


def read_choice(model_dir: str) -> OpenSetChoice | None:
    """The stored OpenSetChoice of a model_dir, or None when there is none."""
    path = os.path.join(model_dir, OPEN_SET_FILE)
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            return OpenSetChoice(**json.load(f))
    except (OSError, ValueError, TypeError) as error:
        raise UserError(f"{path} is unreadable ({error}); choose the threshold again") from None


def _current(choice: OpenSetChoice | None, model_dir: str) -> OpenSetChoice | None:
    """The stored choice, or None (with a warning) when other weights than model_dir's made it."""
    if choice is None or not choice.model_fingerprint:
        return choice
    try:
        current = embeddings.fingerprint(model_dir)
    except UserError:  # no run files to compare with
        return choice
    if current == choice.model_fingerprint:
        return choice
    console.warn(
        f"{os.path.join(model_dir, OPEN_SET_FILE)} was chosen with other weights than those "
        f"now in {model_dir} (fingerprint {choice.model_fingerprint[:12]}, now {current[:12]}); "
        "its threshold is not used. Choose it again: python -m lmrec.evaluate "
        f"--model_dir={model_dir} --classifier={choice.classifier} --choose_threshold "
        "--distractors=<a folder of photos of no landmark>"
    )
    return None


def write_choice(model_dir: str, choice: OpenSetChoice) -> str:
    path = os.path.join(model_dir, OPEN_SET_FILE)
    atomic.write_json(path, dataclasses.asdict(choice))
    return path


@dataclass(frozen=True)
class Settings:
    """The resolved classifier, its kNN parameters, and the open-set rule."""

    classifier: str = "softmax"
    knn_k: int = knn.DEFAULT_K
    knn_power: float = knn.DEFAULT_POWER
    knn_weight: float = knn.DEFAULT_KNN_WEIGHT
    score: str = DEFAULT_SCORE
    threshold: float = 0.0  # 0 with a score >= 0 never rejects

    @property
    def uses_gallery(self) -> bool:
        return knn.CLASSIFIERS.get(self.classifier).uses_gallery or (
            knn.OPEN_SET_SCORES.get(self.score).uses_gallery
        )


def resolve(
    model_dir: str,
    config: ClassifierConfig,
    reject_threshold: float | None = None,
    stored_reject_threshold: float = 0.0,
) -> Settings:
    """The settings a command runs with: its flags, then what the model_dir stores.

    The score and threshold come from <model_dir>/open_set.json when it was chosen for
    the same classifier (and --open_set_score is not set to another score); otherwise
    the score is --open_set_score (top_probability by default) with the model's stored
    --reject_threshold. An explicit reject_threshold overrides either.
    """
    knn.CLASSIFIERS.get(config.classifier)
    stored = _current(read_choice(model_dir), model_dir)
    score = config.open_set_score or DEFAULT_SCORE
    threshold = stored_reject_threshold if score == DEFAULT_SCORE else 0.0
    if (
        stored is not None
        and stored.classifier == config.classifier
        and config.open_set_score in ("", stored.score)
    ):
        score, threshold = stored.score, stored.threshold
    knn.OPEN_SET_SCORES.get(score)
    if reject_threshold is not None:
        threshold = reject_threshold
    return Settings(
        classifier=config.classifier,
        knn_k=config.knn_k,
        knn_power=config.knn_power,
        knn_weight=config.knn_weight,
        score=score,
        threshold=float(threshold),
    )


@dataclass
class Answer:
    """A batch's answer: probabilities [Q, C] over class_names, open-set scores [Q]
    (below the threshold: "no landmark"), embeddings [Q, D], and the kNN votes."""

    probabilities: np.ndarray
    scores: np.ndarray
    rejected: np.ndarray  # bool [Q]
    embeddings: np.ndarray
    softmax: np.ndarray
    knn: knn.KnnResult | None = None


class Recognizer:
    """A trained model (and its gallery when the settings need one), answering batches.

    Attributes:
      class_names: the columns of Answer.probabilities: the trained classes, then the
        landmarks added to the gallery.
    """

    def __init__(self, trained: run_files.TrainedModel, settings: Settings, the_gallery=None):
        self.trained = trained
        self.settings = settings
        if settings.uses_gallery and the_gallery is None:
            the_gallery = gallery.load(trained.model_dir, trained)
        self.gallery = the_gallery if settings.uses_gallery else None
        self.class_names = list(trained.class_names)
        self._gallery_embeddings = None
        if self.gallery is not None:
            self._prepare_gallery()
        model = embeddings.probabilities_and_embeddings_model(trained.model)
        preprocess = trained.preprocess
        size = trained.image_size

        @tf.function(input_signature=[tf.TensorSpec([None, size, size, 3], tf.float32)])
        def forward(pixels):
            probabilities, embedding = model(preprocess(pixels), training=False)
            return tf.cast(probabilities, tf.float32), embedding

        self._forward = forward

    def _prepare_gallery(self) -> None:
        """Gallery labels -> vote labels: trained classes keep their index, added landmarks
        follow, distractor rows vote "no landmark"."""
        names = self.gallery.class_names()
        origins = self.gallery.origins()
        trained = {name: i for i, name in enumerate(self.class_names)}
        missing = [name for name in self.class_names if name not in names]
        if missing and len(missing) == len(self.class_names):
            raise UserError(
                f"The gallery of {self.trained.model_dir} holds none of the model's classes"
            )
        column = {}
        for index, (name, origin) in enumerate(zip(names, origins, strict=True)):
            if origin == "distractor":
                column[index] = knn.NO_LANDMARK_NEIGHBOUR
            elif name in trained:
                column[index] = trained[name]
            else:
                self.class_names.append(name)
                column[index] = len(self.class_names) - 1
        lookup = np.array([column[i] for i in range(len(names))], np.int32)
        self._vote_labels = lookup[self.gallery.label_ids]
        stored = self.gallery.embeddings
        # search_tf casts float16 blocks a few MiB at a time, which is fast only while
        # those buffers are reused; once a tf.data generator has run, TensorFlow's malloc
        # settings map each one afresh and the search takes about twice as long. A gallery
        # within FLOAT32_GALLERY_BYTES is cast once here instead (the same values).
        if stored.size * 4 <= FLOAT32_GALLERY_BYTES:
            stored = stored.astype(np.float32)
        self._gallery_embeddings = tf.constant(stored)

    @property
    def vote_labels(self) -> np.ndarray | None:
        """int32 [N]: each gallery row's column in class_names, or knn.NO_LANDMARK_NEIGHBOUR
        for a distractor; None without a gallery."""
        return None if self.gallery is None else self._vote_labels

    def answer_tf(self, softmax, embedding, gallery_embeddings=None, vote_labels=None):
        """(probabilities [Q, C], open-set scores [Q]) in TensorFlow ops only.

        The graph form of answer_embeddings, for the export's serving functions: the
        gallery comes in as tensors or variables (embeddings [N, D], vote_labels [N]), so
        a SavedModel stores it as variables rather than as constants of its graph.
        """
        settings = self.settings
        votes = None
        if self.gallery is not None:
            similarities, indices = knn.search_tf(embedding, gallery_embeddings, settings.knn_k)
            votes = knn.knn_scores(
                similarities,
                knn.gather_labels(vote_labels, indices),
                len(self.class_names),
                settings.knn_power,
            )
        probabilities = knn.classify(settings.classifier, softmax, votes, settings.knn_weight)
        return probabilities, knn.open_set_score(settings.score, probabilities, votes)

    def answer_embeddings(self, softmax: np.ndarray, embedding: np.ndarray) -> Answer:
        """The answer for photos whose softmax and embedding are known."""
        settings = self.settings
        votes = None
        if self.gallery is not None:
            similarities, indices = knn.search(embedding, self._gallery_embeddings, settings.knn_k)
            votes = knn.knn_scores(
                similarities,
                knn.gather_labels(self._vote_labels, indices),
                len(self.class_names),
                settings.knn_power,
            )
        probabilities = np.asarray(
            knn.classify(settings.classifier, softmax, votes, settings.knn_weight)
        )
        scores = np.asarray(knn.open_set_score(settings.score, probabilities, votes))
        return Answer(
            probabilities=probabilities,
            scores=scores,
            rejected=scores < settings.threshold,
            embeddings=np.asarray(embedding),
            softmax=np.asarray(softmax),
            knn=votes,
        )

    def __call__(self, pixels) -> Answer:
        """pixels: float [Q, S, S, 3] in [0, 255] at the model's size."""
        softmax, embedding = self._forward(tf.cast(pixels, tf.float32))
        return self.answer_embeddings(softmax.numpy(), embedding.numpy())
