"""A run's data: the prepared folder (prepared on demand), its datasets and class counts."""

from __future__ import annotations

import dataclasses
import math
import os

import tensorflow as tf

from lmrec import console, distribute, resume
from lmrec.config import ExperimentConfig
from lmrec.data import augment, pipeline, prepare, records
from lmrec.errors import UserError
from lmrec.models import backbones


def ensure_data(config: ExperimentConfig, may_prepare: bool = True) -> str:
    """Returns the prepared data folder, preparing it first when the config allows.

    may_prepare=False (multi-worker training, where every worker would prepare the
    same folder at once) ignores --prepare_if_missing.

    Raises:
      UserError: no shards and --prepare_if_missing is off; the message gives
        the exact prepare command.
    """
    data_dir = config.data.data_dir or os.path.join(
        config.prepare.output_dir, prepare.dataset_name(config.prepare)
    )
    if prepare.is_prepared(data_dir):
        return data_dir
    name = os.path.basename(os.path.normpath(data_dir))
    parent = os.path.dirname(os.path.normpath(data_dir)) or "."
    if config.train.prepare_if_missing and may_prepare:
        console.say(f"No prepared data in {data_dir}: preparing it now.")
        prepare_config = dataclasses.replace(config.prepare, name=name, output_dir=parent)
        return prepare.prepare(prepare_config, verbose=not console.is_quiet()).data_dir
    source_hint = f"--source={config.prepare.source}" + (
        f" --input_dir={config.prepare.input_dir}"
        if config.prepare.input_dir
        else " --input_dir=/path/to/photos"
        if config.prepare.source == "folder"
        else ""
    )
    raise UserError(
        f"No prepared dataset in --data_dir={data_dir}. Prepare it first:\n"
        f"  python -m lmrec.prepare {source_hint} --name={name} --output_dir={parent}"
    )


def resolve_data(
    config: ExperimentConfig, may_prepare: bool = True
) -> tuple[ExperimentConfig, list[dict], dict]:
    """Finds (or prepares) the data and fills in what the config left to it.

    Returns:
      (the config with its data_dir and image size resolved, the labels, the dataset's
      stats.json).
    """
    data_dir = ensure_data(config, may_prepare)
    image_size = backbones.resolve_image_size(config.model.backbone, config.data.image_size)
    config = config.replace(data={"data_dir": data_dir, "image_size": image_size})
    return config, records.read_labels(data_dir), prepare.read_stats(data_dir)


def train_class_counts(stats: dict, num_classes: int) -> list[int]:
    """Training images per class (index = label) from a prepared dataset's stats.json."""
    counts = [0] * num_classes
    for entry in stats["classes"]:
        index = entry.get("index")
        if index is not None and 0 <= index < num_classes:
            counts[index] = int(entry.get("train", 0))
    return counts


def datasets(config: ExperimentConfig, stats: dict, num_classes: int):
    """Training (repeated, augmented, balanced) and validation datasets with one-hot labels.

    --balance=resample draws the training stream class-balanced; with
    --balance=class_weights each training batch also carries per-example loss
    weights (inverse class frequency, after mixing so mixed labels mix their
    weights), which Keras' fit applies as sample weights. Validation is never
    balanced or weighted.

    Returns:
      (train dataset, val dataset or None when there is no val split, steps per epoch).
    """
    preprocess = backbones.get_spec(config.model.backbone).preprocess

    def one_hot(images, labels):
        return images, tf.one_hot(labels, num_classes)

    counts = train_class_counts(stats, num_classes)
    train = pipeline.run_dataset(
        config, "train", preprocess, balance=config.data.balance, class_counts=counts
    ).map(one_hot)
    train = augment.mix_batches(train, config.data.mixing, config.data.seed)
    if config.data.balance == "class_weights":
        train = pipeline.with_class_weights(train, pipeline.class_weights(counts))
    val = None
    if stats["totals"]["val"] > 0:
        val = pipeline.run_dataset(
            config, "val", preprocess, num_examples=stats["totals"]["val"]
        ).map(one_hot)
    steps = config.train.steps_per_epoch or max(
        1, math.ceil(stats["totals"]["train"] / config.data.batch_size)
    )
    return train, val, steps


@dataclasses.dataclass
class RunData:
    """The datasets a run trains on, and the facts read with them.

    Attributes:
      config: the config the datasets were made with: the global batch size (per
        replica x replicas) and the seed, which differs after a resume.
      train, val: as datasets() returns them; val is None without a val split.
      steps_per_epoch: optimizer steps per epoch.
      stats: the prepared dataset's stats.json.
      num_classes: the number of classes.
    """

    config: ExperimentConfig
    train: tf.data.Dataset
    val: tf.data.Dataset | None
    steps_per_epoch: int
    stats: dict
    num_classes: int

    @property
    def class_counts(self) -> list[int]:
        return train_class_counts(self.stats, self.num_classes)

    @property
    def train_images(self) -> int:
        return self.stats["totals"]["train"]


def run_data(
    config: ExperimentConfig, stats: dict, num_classes: int, state: resume.State | None, strategy
) -> RunData:
    """The datasets of a run under `strategy`, resumed from `state` when it is unfinished.

    The batch is global (--batch_size per replica); a resumed run reshuffles with a seed
    of its position (lmrec.resume); with several workers each reads its share.
    """
    data_config = config.replace(
        data={"batch_size": distribute.global_batch_size(config.data.batch_size, strategy)}
    )
    if state is not None and not state.complete:
        data_config = data_config.replace(
            data={"seed": resume.resumed_seed(config.data.seed, state)}
        )
    train, val, steps_per_epoch = datasets(data_config, stats, num_classes)
    if distribute.is_multi_worker(strategy):
        data_dir = config.data.data_dir
        train, val = (
            data
            and distribute.shard_across_workers(
                data, len(tf.io.gfile.glob(records.shard_pattern(data_dir, split))), strategy
            )
            for data, split in ((train, "train"), (val, "val"))
        )
    return RunData(data_config, train, val, steps_per_epoch, stats, num_classes)
