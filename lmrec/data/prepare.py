"""Sources -> validated, split, sharded TFRecords + labels.json + stats.json.

The whole dataset folder is built under a temp name and renamed into place
only when complete, so a killed prepare never leaves a half-written dataset
that training would pick up; the next run removes the leftovers. Images are
streamed (validated, converted, written one by one), so memory does not grow
with the number of photos.
"""

from __future__ import annotations

import collections
import concurrent.futures
import json
import os
import random
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from tqdm import tqdm

from lmrec import atomic
from lmrec.config import PrepareConfig
from lmrec.data import images, records
from lmrec.data.sources import Source, SourceItem, get_source
from lmrec.errors import UserError

_DECODE_THREADS = max(1, min(8, os.cpu_count() or 1))


@dataclass(frozen=True)
class PrepareResult:
    data_dir: str
    stats: dict[str, Any]


def dataset_name(config: PrepareConfig) -> str:
    """--name, or a name derived from the source (the input folder's name for folders)."""
    if config.name:
        return config.name
    if config.source == "folder" and config.input_dir:
        return os.path.basename(os.path.normpath(config.input_dir)) or "folder"
    return config.source


def is_prepared(data_dir: str) -> bool:
    """True when data_dir holds a complete dataset (labels.json is written last)."""
    return os.path.isfile(os.path.join(data_dir, records.STATS_FILE)) and os.path.isfile(
        os.path.join(data_dir, records.LABELS_FILE)
    )


def read_stats(data_dir: str) -> dict[str, Any]:
    """Reads a prepared dataset's stats.json (counts per split and class, skipped files)."""
    path = os.path.join(data_dir, records.STATS_FILE)
    if not os.path.isfile(path):
        raise UserError(f"{path} is missing: {data_dir} is not a dataset made by lmrec.prepare")
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def stratified_split(
    items: Iterable[SourceItem], val_fraction: float, seed: int
) -> dict[str, list[SourceItem]]:
    """Splits per class with a seeded shuffle; every class keeps at least one training item.

    Returns:
      {"train": [...], "val": [...]}, each shuffled (seeded) so shards mix classes.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise UserError(f"--val_fraction must be in [0, 1), got {val_fraction}")
    by_class: dict[str, list[SourceItem]] = collections.defaultdict(list)
    for item in items:
        by_class[item.class_name].append(item)
    rng = random.Random(seed)
    split: dict[str, list[SourceItem]] = {"train": [], "val": []}
    for class_name in sorted(by_class):
        members = sorted(by_class[class_name], key=lambda item: item.image_id)
        rng.shuffle(members)
        n_val = min(round(len(members) * val_fraction), len(members) - 1)
        split["val"].extend(members[:n_val])
        split["train"].extend(members[n_val:])
    for members in split.values():
        rng.shuffle(members)
    return split


def _convert(item: SourceItem, max_side: int) -> tuple[SourceItem, tuple | str]:
    """Reads and validates one image; returns (item, (jpeg, h, w)) or (item, reason)."""
    try:
        return item, images.to_jpeg(item.read(), item.image_id, max_side)
    except images.BadImage as error:
        return item, str(error)


def _converted(items: list[SourceItem], max_side: int) -> Iterator[tuple[SourceItem, tuple | str]]:
    """Converts in a thread pool (Pillow releases the GIL), in input order, a bounded window."""
    window = 4 * _DECODE_THREADS
    with concurrent.futures.ThreadPoolExecutor(_DECODE_THREADS) as pool:
        pending: collections.deque = collections.deque()
        for item in items:
            pending.append(pool.submit(_convert, item, max_side))
            if len(pending) >= window:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def prepare(config: PrepareConfig, verbose: bool = True) -> PrepareResult:
    """Validates, splits and shards a source into <output_dir>/<name>/.

    Args:
      config: what to read and where to write.
      verbose: show a progress bar and a summary on stderr.

    Returns:
      The dataset folder and the stats written to its stats.json.

    Raises:
      UserError: bad flags, a missing input folder, no usable images, or an
        existing dataset without --overwrite.
    """
    started = time.time()
    name = dataset_name(config)
    data_dir = os.path.join(config.output_dir, name)
    if os.path.exists(data_dir) and not config.overwrite:
        what = "a prepared dataset" if is_prepared(data_dir) else "something that is not a dataset"
        raise UserError(
            f"{data_dir} already holds {what}; pass --overwrite to replace it or choose --name"
        )
    for leftover in atomic.remove_stale_partials(config.output_dir, name):
        _log(verbose, f"Removed {leftover} left by an interrupted prepare.")
    if config.images_per_shard < 1:
        raise UserError(f"--images_per_shard must be >= 1, got {config.images_per_shard}")

    source = get_source(config)
    candidates = list(source.items())
    split = stratified_split(candidates, config.val_fraction, config.seed)
    with atomic.new_directory(data_dir, overwrite=config.overwrite) as tmp:
        stats = _write(source, split, tmp, config, verbose)
        if stats["totals"]["kept"] == 0:
            raise UserError(
                f"No usable images found by --source={config.source}"
                + (f" in --input_dir={config.input_dir!r}" if config.input_dir else "")
                + f"; {stats['totals']['skipped']} files skipped (first: "
                + f"{stats['skipped'][:3]})"
            )
        stats["seconds"] = round(time.time() - started, 2)
        labels = stats.pop("_labels")
        atomic.write_json(os.path.join(tmp, records.LABELS_FILE), labels)
        atomic.write_json(os.path.join(tmp, records.STATS_FILE), stats)
    _summarize(verbose, data_dir, stats)
    return PrepareResult(data_dir=data_dir, stats=stats)


def _write(
    source: Source,
    split: dict[str, list[SourceItem]],
    tmp: str,
    config: PrepareConfig,
    verbose: bool,
) -> dict[str, Any]:
    classes_with_items = {item.class_name for members in split.values() for item in members}
    provisional = [c for c in source.class_names if c in classes_with_items]
    label_of = {class_name: index for index, class_name in enumerate(provisional)}
    counts = {c: {"train": 0, "val": 0, "skipped": 0} for c in source.class_names}
    skipped: list[dict[str, str]] = [
        {"file": path, "reason": reason} for path, reason in source.rejected
    ]
    moved_to_train: list[str] = []
    writers = {s: records.ShardWriter(tmp, s, config.images_per_shard) for s in records.SPLITS}
    total = sum(len(members) for members in split.values())
    progress = tqdm(total=total, desc=f"prepare {source.name}", unit="img", disable=not verbose)
    for split_name in records.SPLITS:
        for item, outcome in _converted(split[split_name], config.max_image_side):
            progress.update(1)
            if isinstance(outcome, str):
                counts[item.class_name]["skipped"] += 1
                skipped.append({"file": item.image_id, "reason": outcome})
                continue
            target = split_name
            if split_name == "val" and counts[item.class_name]["train"] == 0:
                # Every training image of this class failed to decode: keep this one for training.
                target = "train"
                moved_to_train.append(item.image_id)
            encoded, height, width = outcome
            landmark_id = item.landmark_id or source.landmark_ids.get(item.class_name, "")
            writers[target].write(
                records.Record(
                    image_id=item.image_id,
                    label=label_of[item.class_name],
                    encoded=encoded,
                    height=height,
                    width=width,
                    landmark_id=landmark_id,
                )
            )
            counts[item.class_name][target] += 1
    progress.close()
    shards = {s: writer.finish() for s, writer in writers.items()}
    for s, names in shards.items():
        if writers[s].count == 0:
            for shard in names:
                os.remove(os.path.join(tmp, shard))
            shards[s] = []

    kept_classes = [c for c in provisional if counts[c]["train"] > 0]
    dropped = {c: "no images" for c in source.class_names if c not in classes_with_items}
    dropped.update({c: "no image could be decoded" for c in provisional if c not in kept_classes})
    if len(kept_classes) != len(provisional):
        _relabel(tmp, shards, {label_of[c]: i for i, c in enumerate(kept_classes)})
    final_label = {c: i for i, c in enumerate(kept_classes)}
    labels = [
        {"index": i, "name": c, "landmark_id": source.landmark_ids.get(c, "")}
        for i, c in enumerate(kept_classes)
    ]
    return {
        "source": source.name,
        "input_dir": config.input_dir,
        "seed": config.seed,
        "val_fraction": config.val_fraction,
        "max_image_side": config.max_image_side,
        "num_classes": len(kept_classes),
        "totals": {
            "files_seen": total + len(source.rejected),
            "kept": sum(writers[s].count for s in records.SPLITS),
            "train": writers["train"].count,
            "val": writers["val"].count,
            "skipped": len(skipped),
        },
        "classes": [
            {"index": final_label.get(c), "name": c, **counts[c]} for c in source.class_names
        ],
        "dropped_classes": dropped,
        "moved_to_train": moved_to_train,
        "shards": shards,
        "skipped": skipped,
        "_labels": labels,
    }


def _relabel(directory: str, shards: dict[str, list[str]], mapping: dict[int, int]) -> None:
    """Rewrites shards with contiguous labels after whole classes turned out unreadable."""
    import tensorflow as tf

    for names in shards.values():
        for shard in names:
            path = os.path.join(directory, shard)
            with atomic.replacing(path) as tmp, tf.io.TFRecordWriter(tmp) as writer:
                for serialized in tf.data.TFRecordDataset(path).as_numpy_iterator():
                    example = tf.train.Example.FromString(serialized)
                    values = example.features.feature[records.LABEL].int64_list.value
                    values[0] = mapping[values[0]]
                    writer.write(example.SerializeToString())


def _log(verbose: bool, message: str) -> None:
    if verbose:
        print(message, file=sys.stderr)


def _summarize(verbose: bool, data_dir: str, stats: dict[str, Any]) -> None:
    if not verbose:
        return
    totals = stats["totals"]
    _log(
        True,
        f"Prepared {data_dir}: {stats['num_classes']} classes, {totals['train']} train + "
        f"{totals['val']} val images; {totals['skipped']} files skipped "
        f"({stats['seconds']} s).",
    )
    for entry in stats["skipped"][:20]:
        _log(True, f"  skipped {entry['file']}: {entry['reason']}")
    if len(stats["skipped"]) > 20:
        _log(True, f"  ... and {len(stats['skipped']) - 20} more, listed in stats.json")
    for class_name, reason in stats["dropped_classes"].items():
        _log(True, f"  class {class_name!r} dropped: {reason}")
