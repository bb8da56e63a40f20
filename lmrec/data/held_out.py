"""Held-out photos in a trained model's label space, for evaluation and export checks.

--data (lmrec.evaluate, lmrec.export --tflite) may be a prepared dataset (its
val shards), a glob of shards, or a folder of photos with one subfolder per
class; classes are matched to the model's labels by name. --distractors is a
folder of photos without landmarks, labelled metrics.NO_LANDMARK.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
import tensorflow as tf

from lmrec import metrics, photo_archive
from lmrec.data import pipeline, prepare, records
from lmrec.data.sources import folders
from lmrec.errors import UserError


@dataclass
class EvalData:
    """A dataset of (pixels in [0, 255], model labels, ids) and what it is."""

    dataset: tf.data.Dataset
    description: str
    skipped: list[dict[str, str]] = field(default_factory=list)
    count: int | None = None  # photos it reads (some may fail to decode), when known upfront


def _label_map(data_labels: list[str], model_labels: list[str]) -> tuple[np.ndarray, list[str]]:
    """Maps dataset label indices to model indices by class name; -1 for unknown classes."""
    index = {name: i for i, name in enumerate(model_labels)}
    mapping = np.array([index.get(name, -1) for name in data_labels], dtype=np.int32)
    unknown = [name for name in data_labels if name not in index]
    return mapping, unknown


def _shard_data(
    trained, pattern: str, label_dir: str, batch_size: int, num_examples: int | None = None
) -> EvalData:
    data_labels = records.label_names(records.read_labels(label_dir))
    mapping, unknown = _label_map(data_labels, trained.class_names)
    if len(unknown) == len(data_labels):
        raise UserError(f"None of the classes in {label_dir}/labels.json is known to the model")
    dataset = pipeline.make_dataset(
        pattern,
        trained.image_size,
        _pixels,
        batch_size,
        training=False,
        with_ids=True,
        num_examples=None if unknown else num_examples,
    )
    if not np.array_equal(mapping, np.arange(len(mapping))):
        table = tf.constant(mapping)
        dataset = dataset.map(lambda x, y, i: (x, tf.gather(table, y), i))
        if unknown:
            dataset = dataset.unbatch().filter(lambda x, y, i: y >= 0).batch(batch_size)
    skipped = [{"class": name, "reason": "class unknown to the model"} for name in unknown]
    return EvalData(dataset, pattern, skipped)


def _pixels(images: tf.Tensor) -> tf.Tensor:
    """The pipelines here yield pixels in [0, 255]; run_model normalizes them (the gallery
    keeps the pixels)."""
    return images


def _folder_data(trained, folder: str, batch_size: int) -> EvalData:
    class_names, found, rejected = folders.list_class_folder(folder)
    model_index = {name: i for i, name in enumerate(trained.class_names)}
    skipped = [{"file": path, "reason": reason} for path, reason in rejected]
    skipped += [
        {"class": name, "reason": "class unknown to the model"}
        for name in class_names
        if name not in model_index
    ]
    usable = [(rel, path, model_index[c]) for rel, path, c in found if c in model_index]
    if not usable:
        raise UserError(f"--data={folder} has no photos in folders named after the model's classes")
    max_side = trained.config.prepare.max_image_side
    dataset = pipeline.photo_dataset(usable, trained.image_size, batch_size, max_side, skipped)
    return EvalData(dataset, folder, skipped, count=len(usable))


def distractor_data(trained, folder: str, batch_size: int) -> EvalData:
    """Photos without a landmark (any folder layout), labelled metrics.NO_LANDMARK."""
    if not os.path.isdir(folder):
        raise UserError(f"--distractors={folder!r} is not a folder")
    scan = photo_archive.scan([folder])
    paths, ignored = scan.photos, scan.ignored
    if not paths:
        raise UserError(f"--distractors={folder} holds no photos")
    skipped = [dict(entry) for entry in [*scan.failures, *ignored]]  # + unreadable folders
    items = [
        ("distractors/" + os.path.relpath(path, folder), path, metrics.NO_LANDMARK)
        for path in paths
    ]
    max_side = trained.config.prepare.max_image_side
    dataset = pipeline.photo_dataset(items, trained.image_size, batch_size, max_side, skipped)
    return EvalData(dataset, folder, skipped)


def _val_split(trained, data_dir: str, batch_size: int) -> EvalData:
    pattern = records.shard_pattern(data_dir, "val")
    if not tf.io.gfile.glob(pattern):
        raise UserError(f"{data_dir} has no validation shards; pass --data=... to evaluate")
    count = prepare.read_stats(data_dir)["totals"]["val"]
    return _shard_data(trained, pattern, data_dir, batch_size, num_examples=count)


def eval_data(trained, data: str, batch_size: int) -> EvalData:
    """Resolves --data (see module docstring) into a dataset in the model's label space."""
    if not data:
        return _val_split(trained, trained.config.data.data_dir, batch_size)
    if any(ch in data for ch in "*?["):
        return _shard_data(trained, data, os.path.dirname(data), batch_size)
    if not os.path.isdir(data):
        raise UserError(f"--data={data!r} is neither a folder nor a shard pattern")
    if prepare.is_prepared(data):
        return _val_split(trained, data, batch_size)
    return _folder_data(trained, data, batch_size)


def train_data(trained, data: str, batch_size: int) -> EvalData:
    """The photos a gallery is built from (lmrec.gallery build), in the model's label space.

    "" is the train shards of the dataset the model was trained on, a prepared dataset
    folder its train shards; a glob of shards or a folder of class folders is read as
    eval_data reads it.
    """
    if data and (any(ch in data for ch in "*?[") or not prepare.is_prepared(data)):
        return eval_data(trained, data, batch_size)
    data_dir = data or trained.config.data.data_dir
    pattern = records.shard_pattern(data_dir, "train")
    if not tf.io.gfile.glob(pattern):
        raise UserError(f"{data_dir!r} has no train shards; pass --data=a folder of class folders")
    count = prepare.read_stats(data_dir)["totals"]["train"]
    found = _shard_data(trained, pattern, data_dir, batch_size, num_examples=count)
    found.count = None if found.skipped else count
    return found


def held_out_images(trained, data: str, max_images: int) -> tuple[np.ndarray, np.ndarray, str]:
    """Up to max_images (uint8 [N, S, S, 3], labels [N], description) from --data.

    --data as eval_data reads it; "" is the model_dir's validation shards. The TFLite
    and ONNX exports compare their files with the SavedModel on these.
    """
    source = eval_data(trained, data, batch_size=min(max_images, 32))
    images, labels = [], []
    count = 0
    for pixels, batch_labels, _ in source.dataset:
        images.append(pixels.numpy())
        labels.append(batch_labels.numpy())
        count += len(images[-1])
        if count >= max_images:
            break
    if not count:
        raise UserError(f"No images to check the TFLite files on in {source.description}")
    pixels = np.concatenate(images)[:max_images]
    uint8 = np.clip(np.round(pixels), 0, 255).astype(np.uint8)
    return uint8, np.concatenate(labels)[:max_images], source.description
