"""Sources -> validated, split, sharded TFRecords + labels.json + stats.json + stats.png.

prepare lists a source's candidates (paths and classes, never pixels), splits
them per class, cuts the splits into shards (lmrec.data.shards) and has a
runner write the shards: worker processes or an Apache Beam pipeline. Shards
land in a work folder, so a killed prepare resumes; the dataset folder itself
is built under a temp name and renamed into place only when complete, so
training never picks up half a dataset. Images are streamed through the
writers one by one, so memory does not grow with the photos' bytes.

labels.json also gives each class a location (lmrec.locations) where one is
known: from the GPS of its training photos when at least --min_located_photos
have it, or from the --landmark_locations CSV, whose rows win. Validation
photos never count, so a location prior measured on them is not fitted to them.
"""

from __future__ import annotations

import array
import collections
import json
import os
import random
import shutil
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
from tqdm import tqdm

from lmrec import atomic, console, locations, plots, run_lock
from lmrec.config import PrepareConfig
from lmrec.data import records, shards
from lmrec.data.sources import Source, SourceItem, get_source
from lmrec.errors import UserError

# A --landmark_locations row this much farther from its class's photos than both radii is
# warned about.
FILE_PHOTOS_DISAGREE_M = 50_000.0


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


def prepare(config: PrepareConfig, verbose: bool = True) -> PrepareResult:
    """Validates, splits and shards a source into <output_dir>/<name>/.

    Shards are written by --runner (worker processes, or Apache Beam) into a work
    folder <output_dir>/.<name>.inprogress; a killed run resumes there (finished
    shards are kept when the plan is unchanged, else it starts over). The dataset
    folder appears, complete, only at the end.

    Args:
      config: what to read and where to write.
      verbose: show a progress bar and a summary on stderr.

    Returns:
      The dataset folder and the stats written to its stats.json.

    Raises:
      UserError: bad flags, a missing input, no usable images, an existing
        dataset without --overwrite, or another process preparing the same dataset.
    """
    name = dataset_name(config)
    # Held for the whole run: it covers the dataset, its work folder and partial folders,
    # and removes what a killed prepare left of them.
    with run_lock.dataset(config.output_dir, name, verbose):
        return _prepare(config, name, verbose)


def _prepare(config: PrepareConfig, name: str, verbose: bool) -> PrepareResult:
    """prepare()'s work, done while holding the dataset's lock."""
    started = time.time()
    data_dir = os.path.join(config.output_dir, name)
    if os.path.exists(data_dir) and not config.overwrite:
        what = "a prepared dataset" if is_prepared(data_dir) else "something that is not a dataset"
        raise UserError(
            f"{data_dir} already holds {what}; pass --overwrite to replace it or choose --name"
        )
    shards.check_runner(config.runner)
    if config.images_per_shard < 1:
        raise UserError(f"--images_per_shard must be >= 1, got {config.images_per_shard}")
    if config.min_located_photos < 1:
        raise UserError(f"--min_located_photos must be >= 1, got {config.min_located_photos}")

    source = get_source(config)
    file_locations = _file_locations(config, source, verbose)  # a bad file fails before any shard
    candidates = _candidates(source)
    split = stratified_split(candidates, config.val_fraction, config.seed)
    if source.streaming:  # shards follow the stream's order, so pass 2 fills them in turn
        position = {item.image_id: index for index, item in enumerate(candidates)}
        split = {
            s: sorted(members, key=lambda i: position[i.image_id]) for s, members in split.items()
        }
    present = {item.class_name for item in candidates}
    provisional = [c for c in source.class_names if c in present]
    options = shards.WriteOptions(
        directory=os.path.abspath(os.path.join(config.output_dir, f".{name}.inprogress")),
        label_of={c: index for index, c in enumerate(provisional)},
        landmark_ids=source.landmark_ids,
        max_side=config.max_image_side,
    )
    specs = shards.plan(split, config.images_per_shard)
    done = _open_work_dir(
        options.directory, shards.fingerprint(specs, options, source.name), verbose
    )
    total = len(candidates)
    progress = tqdm(
        total=total,
        initial=sum(len(s.items) for s in specs if s.name in done),
        desc=f"prepare {source.name}",
        unit="img",
        disable=not verbose,
    )
    todo = [spec for spec in specs if spec.name not in done]
    if source.streaming:
        shards.write_streaming(specs, options, source.items(), set(done), progress.update)
    elif config.runner == "beam":
        runner = config.beam_options or "DirectRunner"
        _log(verbose, f"Writing {len(todo)} shards with Apache Beam ({runner}).")
        shards.run_beam(todo, options, config.beam_options)
        progress.update(sum(len(spec.items) for spec in todo))
    else:
        shards.run_local(todo, options, config.num_workers, progress.update)
    progress.close()
    results = shards.finished_results(options.directory)
    unfinished = [spec.name for spec in specs if spec.name not in results]
    if unfinished:
        raise UserError(f"Shards {unfinished[:5]} were not written; run prepare again to resume.")
    stats = _finalize(
        data_dir,
        config,
        source,
        total,
        specs,
        results,
        provisional,
        options,
        file_locations,
        started,
    )
    shutil.rmtree(options.directory, ignore_errors=True)
    _summarize(verbose, data_dir, stats)
    return PrepareResult(data_dir=data_dir, stats=stats)


def _candidates(source: Source) -> list[SourceItem]:
    """Every item the source offers; for a streaming source, ids and classes only."""
    if not source.streaming:
        return list(source.items())
    seen: set[str] = set()
    candidates = []
    for item in source.items():
        if item.image_id in seen:
            source.rejected.append((item.image_id, "duplicate image id (first one kept)"))
            continue
        seen.add(item.image_id)
        candidates.append(SourceItem(item.image_id, item.class_name, landmark_id=item.landmark_id))
    return candidates


def _file_locations(
    config: PrepareConfig, source: Source, verbose: bool
) -> dict[str, locations.Location]:
    """--landmark_locations read against every class the source has: class name -> Location."""
    if not config.landmark_locations:
        return {}
    found = locations.read_locations_csv(
        config.landmark_locations, source.class_names, source.landmark_ids
    )
    _log(verbose, f"{len(found)} landmark locations read from {config.landmark_locations}.")
    return {source.class_names[index]: location for index, location in found.items()}


def _photo_points(
    specs: list[shards.ShardSpec], results: dict[str, dict[str, Any]]
) -> dict[str, array.array]:
    """The training photos' GPS points per class, flat [lat, lon, lat, lon, ...] (8 bytes each)."""
    points: dict[str, array.array] = {}
    for spec in specs:
        if spec.split != "train":
            continue
        for class_name, pairs in results[spec.name].get("gps", {}).items():
            flat = points.setdefault(class_name, array.array("d"))
            for latitude, longitude in pairs:
                flat.extend((latitude, longitude))
    return points


def _class_locations(
    config: PrepareConfig,
    kept_classes: list[str],
    points: dict[str, array.array],
    file_locations: dict[str, locations.Location],
) -> dict[int, locations.Location]:
    """Each kept class's location: the file's where it has one, else its photos' centre.

    A file location far from where the photos were taken is warned about: the row
    may belong to another landmark.
    """
    found: dict[int, locations.Location] = {}
    for index, class_name in enumerate(kept_classes):
        flat = points.get(class_name)
        from_photos = None
        if flat:
            pairs = np.frombuffer(flat, dtype=np.float64).reshape(-1, 2)
            from_photos = locations.centre_and_spread(pairs, config.min_located_photos)
        from_file = file_locations.get(class_name)
        if from_file is not None and from_photos is not None:
            apart = float(
                locations.haversine_m(
                    from_file.latitude,
                    from_file.longitude,
                    from_photos.latitude,
                    from_photos.longitude,
                )
            )
            if apart > FILE_PHOTOS_DISAGREE_M + from_file.radius_m + from_photos.radius_m:
                console.warn(
                    f"class {class_name!r}: --landmark_locations puts it {apart / 1000:.0f} km "
                    f"from the centre of its {from_photos.photos} photos with GPS; the file's "
                    "location is kept"
                )
        location = from_file or from_photos
        if location is not None:
            found[index] = location
    return found


def _open_work_dir(directory: str, plan_fingerprint: str, verbose: bool) -> dict[str, Any]:
    """Creates the work folder, or reopens a killed run's; returns its finished shards."""
    plan_file = os.path.join(directory, "plan.json")
    if os.path.isdir(directory):
        try:
            with open(plan_file, encoding="utf-8") as f:
                same = json.load(f).get("fingerprint") == plan_fingerprint
        except (OSError, ValueError):
            same = False
        if same:
            done = shards.finished_results(directory)
            _log(
                verbose, f"Resuming the prepare killed earlier: {len(done)} shards already written."
            )
            return done
        _log(verbose, f"Starting over: {directory} holds an interrupted run with another plan.")
        shutil.rmtree(directory)
    os.makedirs(directory)
    atomic.write_json(plan_file, {"fingerprint": plan_fingerprint})
    return {}


def _finalize(
    data_dir: str,
    config: PrepareConfig,
    source: Source,
    total: int,
    specs: list[shards.ShardSpec],
    results: dict[str, dict[str, Any]],
    provisional: list[str],
    options: shards.WriteOptions,
    file_locations: dict[str, locations.Location],
    started: float,
) -> dict[str, Any]:
    """Builds the dataset folder from the finished shards, fixing labels where classes died.

    A class whose every training image failed to decode gets one of its validation
    images moved to train; a class with no decodable image at all is dropped and
    the labels after it shift down, so labels stay contiguous.
    """
    merged = shards.merge_results(results[spec.name] for spec in specs)
    located = merged["located"]
    train_counts = merged["kept"].get("train", {})
    val_counts = dict(merged["kept"].get("val", {}))
    rescued = {c for c in provisional if not train_counts.get(c) and val_counts.get(c)}
    kept_classes = [c for c in provisional if train_counts.get(c) or c in rescued]
    final_label = {c: index for index, c in enumerate(kept_classes)}
    relabel = {options.label_of[c]: final_label[c] for c in kept_classes}
    with atomic.new_directory(data_dir, overwrite=config.overwrite) as tmp:
        shard_names, moved_to_train = _materialize(
            options.directory, tmp, specs, results, relabel, {options.label_of[c] for c in rescued}
        )
        moved_to_train = [(image_id, provisional[old]) for image_id, old in moved_to_train]
        for _, class_name in moved_to_train:
            val_counts[class_name] -= 1
            train_counts[class_name] = train_counts.get(class_name, 0) + 1
        kept_total = sum(train_counts.values()) + sum(val_counts.values())
        skipped = [{"file": path, "reason": reason} for path, reason in source.rejected]
        skipped += merged["skipped"]
        if kept_total == 0:
            raise UserError(
                f"No usable images found by --source={config.source}"
                + (f" in --input_dir={config.input_dir!r}" if config.input_dir else "")
                + f"; {len(skipped)} files skipped (first: {skipped[:3]})"
            )
        dropped = {c: "no images" for c in source.class_names if c not in provisional}
        dropped.update(
            {c: "no image could be decoded" for c in provisional if c not in final_label}
        )
        stats = {
            "source": source.name,
            "input_dir": config.input_dir,
            "seed": config.seed,
            "val_fraction": config.val_fraction,
            "max_image_side": config.max_image_side,
            "runner": config.runner,
            "num_classes": len(kept_classes),
            "totals": {
                "files_seen": total + len(source.rejected),
                "kept": kept_total,
                "train": sum(train_counts.values()),
                "val": sum(val_counts.values()),
                "skipped": len(skipped),
            },
            "classes": [
                {
                    "index": final_label.get(c),
                    "name": c,
                    "landmark_id": source.landmark_ids.get(c, ""),
                    "train": train_counts.get(c, 0),
                    "val": val_counts.get(c, 0),
                    "skipped": merged["skipped_per_class"].get(c, 0),
                    "train_gps": located.get("train", {}).get(c, 0),
                    "val_gps": located.get("val", {}).get(c, 0),
                }
                for c in source.class_names
            ],
            "dropped_classes": dropped,
            "moved_to_train": [image_id for image_id, _ in moved_to_train],
            "shards": shard_names,
            "image_sizes": merged["sizes"],
            "source_info": source.info,
            "skipped": skipped,
        }
        labels = [
            {"index": i, "name": c, "landmark_id": source.landmark_ids.get(c, "")}
            for i, c in enumerate(kept_classes)
        ]
        class_locations = _class_locations(
            config, kept_classes, _photo_points(specs, results), file_locations
        )
        labels = locations.with_locations(labels, class_locations)
        stats["locations"] = {
            "min_located_photos": config.min_located_photos,
            "landmark_locations": config.landmark_locations,
            "from_file": sum(1 for c in kept_classes if c in file_locations),
            "from_photos": sum(
                1
                for i, c in enumerate(kept_classes)
                if i in class_locations and c not in file_locations
            ),
            "unknown": len(kept_classes) - len(class_locations),
        }
        stats["seconds"] = round(time.time() - started, 2)
        plots.dataset_stats_png(stats, os.path.join(tmp, records.STATS_PLOT_FILE))
        atomic.write_json(os.path.join(tmp, records.LABELS_FILE), labels)
        atomic.write_json(os.path.join(tmp, records.STATS_FILE), stats)
    return stats


def _materialize(
    work: str,
    out: str,
    specs: list[shards.ShardSpec],
    results: dict[str, dict[str, Any]],
    relabel: dict[int, int],
    rescue: set[int],
) -> tuple[dict[str, list[str]], list[tuple[str, int]]]:
    """Puts the finished shards into the new dataset folder.

    Shards are hard-linked (no copy) unless labels change; a split with no image
    left gets no shards. Each rescued label moves its first validation image into
    one extra training shard.

    Returns:
      ({split: shard names}, [(image id, old label) moved from val to train]).
    """
    identity = all(old == new for old, new in relabel.items())
    names: dict[str, list[str]] = {}
    diverted: list[bytes] = []
    moved: list[tuple[str, int]] = []
    for split_name in records.SPLITS:
        split_specs = [spec for spec in specs if spec.split == split_name]
        if not sum(results[spec.name]["kept"] for spec in split_specs):
            continue
        for spec in split_specs:
            src, dst = os.path.join(work, spec.name), os.path.join(out, spec.name)
            if identity and not (split_name == "val" and rescue):
                _link_or_copy(src, dst)
            else:
                _rewrite(
                    src, dst, relabel, rescue if split_name == "val" else set(), diverted, moved
                )
        names[split_name] = [spec.name for spec in split_specs]
    if diverted:  # one more training shard; the others are renamed to the new count
        train = names.get("train", [])
        count = len(train) + 1
        renamed = [records.shard_name("train", index, count) for index in range(count)]
        for old, new in zip(train, renamed[:-1], strict=True):
            os.rename(os.path.join(out, old), os.path.join(out, new))
        _write_serialized(os.path.join(out, renamed[-1]), diverted)
        names["train"] = renamed
    return names, moved


def _rewrite(
    src: str,
    dst: str,
    relabel: dict[int, int],
    rescue: set[int],
    diverted: list[bytes],
    moved: list[tuple[str, int]],
) -> None:
    """Copies a shard with new labels; diverts the first example of each rescued label."""
    import tensorflow as tf

    kept = []
    already_moved = {label for _, label in moved}
    for serialized in tf.data.TFRecordDataset(src).as_numpy_iterator():
        example = tf.train.Example.FromString(serialized)
        values = example.features.feature[records.LABEL].int64_list.value
        old = values[0]
        values[0] = relabel[old]
        if old in rescue and old not in already_moved:
            already_moved.add(old)
            image_id = example.features.feature[records.IMAGE_ID].bytes_list.value[0]
            moved.append((image_id.decode("utf-8"), old))
            diverted.append(example.SerializeToString())
        else:
            kept.append(example.SerializeToString())
    _write_serialized(dst, kept)


def _write_serialized(path: str, examples: list[bytes]) -> None:
    import tensorflow as tf

    with atomic.replacing(path) as tmp, tf.io.TFRecordWriter(tmp) as writer:
        for serialized in examples:
            writer.write(serialized)


def _link_or_copy(src: str, dst: str) -> None:
    """Hard link: the dataset folder shares the work folder's bytes until that is removed."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def _log(verbose: bool, message: str) -> None:
    if verbose:
        console.say(message)


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
