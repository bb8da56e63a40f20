"""Global descriptors: every trained model's L2-normalized embedding of a photo.

The embedding is the feature the classifier layer of the head sees: the input of the
head's layer named "dropout", whatever the head and the loss. That is the Dense
output for gap_dense512, gem and the attention heads, the rescaled compact bilinear
sketch for the bilinear heads, and the feature the CosineClassifier normalizes for the
ArcFace losses. One function (embedding_model) computes it for the gallery, evaluate,
predict and the export alike, from the classifier's own layers (shared weights), so it
needs no per-architecture layer names and no second copy of the weights.

    found = embed("runs/demo", ["photos/", "extra.jpg"])   # Embedded(embeddings, ids, failures)

fingerprint(model_dir) names the weights an embedding came from, so a gallery built
by another model (or an earlier checkpoint) is refused instead of silently mixed.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import keras
import numpy as np
import tensorflow as tf
from tqdm import tqdm

from lmrec import console, photo_archive, run_files
from lmrec.data import pipeline
from lmrec.errors import UserError

# The head layer whose input is the embedding (every head in lmrec.models.heads has it).
FEATURE_LAYER = "dropout"
EMBEDDING_LAYER = "embedding"
_HASH_BLOCK = 1 << 20


def probabilities_and_embeddings_model(model: keras.Model) -> keras.Model:
    """normalized image [B, S, S, 3] -> [softmax probabilities, L2-normalized embedding
    float32 [B, D]], in one forward pass.

    Built from the classifier's own layer objects, so it shares their weights and
    follows any weights loaded later. The backbone runs in inference mode (BatchNorm
    with its moving statistics, no dropout), as evaluation runs it.

    Args:
      model: a lmrec.models.classifier.Classifier (with .backbone and .head).

    Raises:
      ValueError: the head has no layer named FEATURE_LAYER.
    """
    head = model.head
    try:
        feature = head.get_layer(FEATURE_LAYER).input
    except ValueError as error:
        raise ValueError(
            f"The head {head.name!r} has no {FEATURE_LAYER!r} layer, whose input is the "
            "embedding (every head in lmrec.models.heads has one)"
        ) from error
    features = keras.Model(head.input, feature, name="head_features")
    inputs = keras.Input(tuple(model.input.shape[1:]), name="image")
    feature_map = model.backbone(inputs, training=False)
    embedding = keras.layers.UnitNormalization(axis=-1, dtype="float32", name=EMBEDDING_LAYER)(
        features(feature_map)
    )
    return keras.Model(inputs, [head(feature_map), embedding], name=f"{model.name}_recognizer")


def embedding_model(model: keras.Model) -> keras.Model:
    """normalized image [B, S, S, 3] -> L2-normalized embedding float32 [B, D]: the second
    output of probabilities_and_embeddings_model (same layers, same weights)."""
    joint = probabilities_and_embeddings_model(model)
    return keras.Model(joint.inputs, joint.outputs[1], name=f"{model.name}_embedding")


def _embedder(trained: run_files.TrainedModel):
    """A compiled pixels in [0, 255] -> embedding function (the backbone's preprocess inside)."""
    model = embedding_model(trained.model)
    preprocess = trained.preprocess
    size = trained.image_size

    @tf.function(input_signature=[tf.TensorSpec([None, size, size, 3], tf.float32)])
    def run(pixels):
        return model(preprocess(pixels), training=False)

    return run


def _trained(model: str | run_files.TrainedModel) -> run_files.TrainedModel:
    return run_files.load(model) if isinstance(model, str) else model


@dataclass
class Embedded:
    """Embeddings of photo files, and the photos that gave none."""

    embeddings: np.ndarray  # float32 [N, D], L2-normalized
    ids: list[str]  # each photo's absolute path, row by row
    failures: list[dict] = field(default_factory=list)  # {"file", "reason"}: unreadable
    ignored: list[dict] = field(default_factory=list)  # {"file", "reason"}: not photos


@dataclass
class PhotoList:
    """Photo files to embed, expanded from files and folders."""

    paths: list[str]  # absolute paths, in a stable order, each once
    failures: list[dict] = field(default_factory=list)  # folders that could not be listed
    ignored: list[dict] = field(default_factory=list)  # missing paths, non-image files, RAWs


def list_photos(photos: Sequence[str]) -> PhotoList:
    """Expands files and folders (lmrec.photo_archive.scan) into absolute photo paths.

    A photo's id everywhere in the gallery is its absolute path, so the same file
    named relative to another working folder is still the same photo.
    """
    if isinstance(photos, str):
        photos = [photos]
    scan = photo_archive.scan(list(photos))
    paths = list(dict.fromkeys(os.path.abspath(path) for path in scan.photos))
    return PhotoList(paths, [dict(entry) for entry in scan.failures], list(scan.ignored))


def embed(
    model: str | run_files.TrainedModel,
    photos: Sequence[str],
    batch_size: int = 32,
    verbose: bool = True,
) -> Embedded:
    """Embeds photo files and folders with a trained model.

    Photos are read, turned upright and decoded as evaluation and the export decode
    them (lmrec.data.pipeline.photo_dataset); one that cannot be decoded becomes a
    failure row with its reason, never an exception.

    Args:
      model: a model_dir, or a model loaded by lmrec.run_files.load.
      photos: photo files and/or folders (searched recursively).
      batch_size: photos per forward pass.
      verbose: show a progress bar (never while lmrec.console is quiet).

    Returns:
      Embedded: float32 [N, D] rows for the photos that decoded, their ids (absolute
      paths), failures (undecodable photos, unlistable folders) and ignored files.

    Raises:
      UserError: model is not a trained model_dir.
    """
    trained = _trained(model)
    listed = list_photos(photos)
    found = embed_paths(trained, listed.paths, batch_size, verbose)
    found.failures = listed.failures + found.failures
    found.ignored = listed.ignored + found.ignored
    return found


def embed_paths(
    trained: run_files.TrainedModel,
    paths: Sequence[str],
    batch_size: int = 32,
    verbose: bool = True,
) -> Embedded:
    """Embeds photo files given as paths (no folder expansion); ids are the paths as given."""
    failures: list[dict] = []
    items = [(path, path, 0) for path in paths]
    max_side = trained.config.prepare.max_image_side
    dataset = pipeline.photo_dataset(items, trained.image_size, batch_size, max_side, failures)
    chunks, ids = [], []
    for embeddings, _, batch_ids in embed_batches(trained, dataset, len(items), verbose):
        chunks.append(embeddings)
        ids.extend(batch_ids)
    return Embedded(_stack(chunks, trained), ids, failures)


def embed_dataset(
    trained: run_files.TrainedModel, dataset: tf.data.Dataset, verbose: bool = False
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Embeds (pixels in [0, 255], labels, ids) batches, such as held_out.EvalData.dataset.

    Returns:
      (embeddings float32 [N, D], labels int32 [N], ids).
    """
    chunks, labels, ids = [], [], []
    for embeddings, batch_labels, batch_ids in embed_batches(trained, dataset, None, verbose):
        chunks.append(embeddings)
        labels.append(batch_labels)
        ids.extend(batch_ids)
    label_array = np.concatenate(labels).astype(np.int32) if labels else np.zeros(0, np.int32)
    return _stack(chunks, trained), label_array, ids


def embed_batches(
    trained: run_files.TrainedModel,
    dataset: tf.data.Dataset,
    total: int | None = None,
    verbose: bool = True,
    initial: int = 0,
) -> Iterator[tuple[np.ndarray, np.ndarray, list[str]]]:
    """Yields (embeddings float32 [B, D], labels [B], ids) per (pixels, labels, ids) batch.

    The progress bar counts photos (total and initial, when known); it is off when
    verbose is False or lmrec.console is quiet.
    """
    run = _embedder(trained)
    with tqdm(
        total=total,
        initial=initial,
        desc="embed",
        unit="photo",
        disable=not verbose or console.is_quiet(),
    ) as progress:
        for pixels, labels, ids in dataset:
            embeddings = run(tf.cast(pixels, tf.float32)).numpy()
            progress.update(len(embeddings))
            yield embeddings, labels.numpy(), [i.decode("utf-8") for i in ids.numpy()]


def embedding_dimension(trained: run_files.TrainedModel) -> int:
    """D, the length of the model's embedding."""
    return int(trained.model.head.get_layer(FEATURE_LAYER).input.shape[-1])


def _stack(chunks: list[np.ndarray], trained: run_files.TrainedModel) -> np.ndarray:
    if chunks:
        return np.concatenate(chunks).astype(np.float32)
    return np.zeros((0, embedding_dimension(trained)), np.float32)


_fingerprints: dict[tuple, str] = {}


def fingerprint(model_dir: str) -> str:
    """The sha256 (hex) of a model_dir's best weights and the model section of its config.

    The weights identify the training run and the epoch; the model section (backbone,
    head, loss...) how they are wired. Cached per process by the weights file's path,
    size and modification time.

    Raises:
      UserError: model_dir has no config.json or no best weights.
    """
    config_path = os.path.join(model_dir, run_files.CONFIG_FILE)
    weights_path = os.path.join(model_dir, run_files.BEST_WEIGHTS)
    for path in (config_path, weights_path):
        if not os.path.isfile(path):
            raise UserError(f"{path} is missing: {model_dir} is not a trained lmrec model_dir")
    with open(config_path, encoding="utf-8") as f:
        model_section = json.load(f).get("model", {})
    stat = os.stat(weights_path)
    key = (os.path.realpath(weights_path), stat.st_size, stat.st_mtime_ns, repr(model_section))
    if key not in _fingerprints:
        digest = hashlib.sha256()
        with open(weights_path, "rb") as f:
            while block := f.read(_HASH_BLOCK):
                digest.update(block)
        digest.update(json.dumps(model_section, sort_keys=True).encode("utf-8"))
        _fingerprints[key] = digest.hexdigest()
    return _fingerprints[key]
