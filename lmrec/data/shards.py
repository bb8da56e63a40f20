"""Writing a prepared dataset's shards: the plan, one shard's writer, and the runners.

prepare splits the candidates and cuts each split into ShardSpecs (which items
go into which `<split>-NNNNN-of-MMMMM.tfrecord`). A shard is the unit of work:
write_shard() validates, converts and writes one shard, then leaves a small
result file beside it, and knows nothing about who called it. So the same
function runs

  * in this process (--num_workers=1),
  * in worker processes on this machine (--runner=local), or
  * as an Apache Beam pipeline (--runner=beam; DirectRunner here, Dataflow,
    Flink or Spark for the full 4.1M GLDv2 images),

and the dataset is the same whichever ran it. Each shard and its result file are
written under temporary names and renamed, so a killed run leaves only complete
shards behind, and the next run with the same plan skips them (resume). On a
cluster, workers must see the work folder at the same path as the launcher (a
shared file system), since the launcher assembles the dataset from it.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import multiprocessing
import os
import shlex
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import tensorflow as tf

from lmrec import atomic, locations
from lmrec.data import images, records
from lmrec.data.sources import SourceItem
from lmrec.errors import UserError
from lmrec.registry import Registry

RESULTS_DIR = ".done"  # inside the work folder: one <shard>.json per finished shard
SIZE_BUCKET = 32  # image sizes are counted in buckets of this many pixels
AUTO_IMAGES_PER_WORKER = 500


@dataclass(frozen=True)
class ShardSpec:
    """Which items go into one shard file."""

    split: str
    index: int
    count: int
    items: tuple[SourceItem, ...]

    @property
    def name(self) -> str:
        return records.shard_name(self.split, self.index, self.count)


@dataclass(frozen=True)
class WriteOptions:
    """Everything a worker needs besides its ShardSpec (small and picklable)."""

    directory: str
    label_of: dict[str, int]  # class name -> label
    landmark_ids: dict[str, str] = field(default_factory=dict)  # class name -> source id
    max_side: int = 0


def plan(split: dict[str, list[SourceItem]], images_per_shard: int) -> list[ShardSpec]:
    """Cuts each split's (already shuffled) item list into consecutive shards."""
    if images_per_shard < 1:
        raise UserError(f"--images_per_shard must be >= 1, got {images_per_shard}")
    specs = []
    for split_name, members in split.items():
        count = -(-len(members) // images_per_shard)
        for index in range(count):
            chunk = members[index * images_per_shard : (index + 1) * images_per_shard]
            specs.append(ShardSpec(split_name, index, count, tuple(chunk)))
    return specs


def fingerprint(specs: Sequence[ShardSpec], options: WriteOptions, source_name: str) -> str:
    """Identifies a plan: a resumed run may reuse finished shards only if this matches."""
    digest = hashlib.sha256()
    header = [source_name, options.max_side, sorted(options.label_of.items())]
    digest.update(json.dumps(header, ensure_ascii=False).encode("utf-8"))
    for spec in specs:
        digest.update(f"\n{spec.name}".encode())
        for item in spec.items:
            digest.update(f"\t{item.image_id}\x1f{item.class_name}".encode())
    return digest.hexdigest()


class ShardBuilder:
    """Converts items and writes them into one shard; finish() renames it into place."""

    def __init__(self, spec: ShardSpec, options: WriteOptions):
        self._spec = spec
        self._options = options
        self._path = os.path.join(options.directory, spec.name)
        self._tmp = os.path.join(options.directory, f".{spec.name}.inprogress")
        self._writer = tf.io.TFRecordWriter(self._tmp)
        self.result: dict[str, Any] = {
            "shard": spec.name,
            "split": spec.split,
            "kept": 0,
            "kept_per_class": {},
            "skipped_per_class": {},
            "skipped": [],
            "sizes": {},
            "gps": {},  # class name -> [[latitude, longitude], ...] of its kept photos with GPS
        }

    def add(self, item: SourceItem) -> None:
        result = self.result
        try:
            data = item.read()
            converted = images.convert(data, item.image_id, self._options.max_side)
        except images.BadImage as error:
            _bump(result["skipped_per_class"], item.class_name)
            result["skipped"].append({"file": item.image_id, "reason": str(error)})
            return
        landmark_id = item.landmark_id or self._options.landmark_ids.get(item.class_name, "")
        record = records.Record(
            image_id=item.image_id,
            label=self._options.label_of[item.class_name],
            encoded=converted.jpeg,
            height=converted.height,
            width=converted.width,
            landmark_id=landmark_id,
        )
        self._writer.write(records.to_example_bytes(record))
        result["kept"] += 1
        _bump(result["kept_per_class"], item.class_name)
        _bump(result["sizes"], _size_bucket(converted.original_width, converted.original_height))
        point = locations.photo_gps(data)
        if point is not None:
            result["gps"].setdefault(item.class_name, []).append([round(v, 7) for v in point])

    def finish(self) -> dict[str, Any]:
        """Renames the shard into place, then writes its result file (the "done" mark)."""
        self._writer.close()
        atomic.fsync_file(self._tmp)  # the shard's bytes reach the disk before its done mark
        os.replace(self._tmp, self._path)
        atomic.fsync_directory(self._options.directory)
        results = os.path.join(self._options.directory, RESULTS_DIR)
        os.makedirs(results, exist_ok=True)
        atomic.write_json(os.path.join(results, f"{self._spec.name}.json"), self.result)
        return self.result


def write_shard(spec: ShardSpec, options: WriteOptions) -> dict[str, Any]:
    """Writes one shard from its items (paths or picklable loaders); returns its result."""
    builder = ShardBuilder(spec, options)
    for item in spec.items:
        builder.add(item)
    return builder.finish()


def finished_results(directory: str) -> dict[str, dict[str, Any]]:
    """Results of the shards a previous (possibly killed) run completed, by shard name."""
    results_dir = os.path.join(directory, RESULTS_DIR)
    if not os.path.isdir(results_dir):
        return {}
    done = {}
    for name in os.listdir(results_dir):
        if not name.endswith(".json"):
            continue
        shard = name[: -len(".json")]
        if not os.path.exists(os.path.join(directory, shard)):
            continue
        try:
            with open(os.path.join(results_dir, name), encoding="utf-8") as f:
                result = json.load(f)
        except (ValueError, OSError):
            continue  # a damaged result file: the shard is simply written again.
        if isinstance(result, dict) and "gps" in result:  # without it, rewritten for its GPS
            done[shard] = result
    return done


# --- runners: each writes every spec it is given, however it likes -------------------------

Progress = Callable[[int], Any]


def run_local(
    specs: Sequence[ShardSpec], options: WriteOptions, num_workers: int, progress: Progress
) -> None:
    """Writes shards in this process (1 worker) or in a pool of worker processes.

    Workers are spawned, not forked: TensorFlow's threads do not survive fork.
    num_workers=0 picks one per core, but no more than one per AUTO_IMAGES_PER_WORKER
    images: a worker's start (it imports TensorFlow) costs seconds.
    """
    if num_workers <= 0:
        images_to_write = sum(len(spec.items) for spec in specs)
        num_workers = min(os.cpu_count() or 1, images_to_write // AUTO_IMAGES_PER_WORKER)
    workers = min(num_workers, len(specs))
    if workers <= 1:
        for spec in specs:
            write_shard(spec, options)
            progress(len(spec.items))
        return
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(
        workers, mp_context=context, initializer=_quiet_worker
    ) as pool:
        futures = {pool.submit(write_shard, spec, options): spec for spec in specs}
        for future in concurrent.futures.as_completed(futures):
            future.result()  # re-raises a worker's exception here
            progress(len(futures[future].items))


def run_beam(specs: Sequence[ShardSpec], options: WriteOptions, beam_options: str) -> None:
    """Writes shards with an Apache Beam pipeline: one element per shard.

    Reshuffle spreads the shards over workers (Create alone may keep them on one).
    --beam_options pass straight to Beam, e.g. "--runner=DataflowRunner ...", or
    "--direct_num_workers=2 --direct_running_mode=multi_processing" here.
    """
    try:
        import apache_beam as beam
        from apache_beam.options.pipeline_options import PipelineOptions
    except ImportError:
        raise UserError(
            "--runner=beam needs Apache Beam: pip install -e '.[beam]' "
            "(or pip install 'apache-beam>=2.60,<3')"
        ) from None
    pipeline_options = PipelineOptions(shlex.split(beam_options))
    with beam.Pipeline(options=pipeline_options) as pipeline:
        _ = (
            pipeline
            | "Shards" >> beam.Create(list(specs), reshuffle=False)
            | "Spread" >> beam.Reshuffle()
            | "Write" >> beam.Map(write_shard, options=options)
        )


# --runner: who writes the shards of a non-streaming source (prepare calls run_local or run_beam).
RUNNERS: Registry[str] = Registry(
    "runner",
    {
        "local": "worker processes on this machine (run_local)",
        "beam": "an Apache Beam pipeline (run_beam), --beam_options picks where",
    },
)


def check_runner(runner: str) -> None:
    """Raises UserError for an unknown --runner."""
    RUNNERS.get(runner)


def write_streaming(
    specs: Sequence[ShardSpec],
    options: WriteOptions,
    stream: Iterable[SourceItem],
    skip: set[str],
    progress: Progress,
) -> None:
    """Writes shards from a source read once more in order (TFDS, existing TFRecords).

    The specs were cut from the stream's own order, so at most one shard per split
    is open at a time. Shards named in `skip` are already done; their items are
    passed over.
    """
    shard_of: dict[str, ShardSpec] = {}
    for spec in specs:
        for item in spec.items:
            shard_of[item.image_id] = spec
    open_builders: dict[str, tuple[ShardBuilder, int]] = {}
    for item in stream:
        spec = shard_of.pop(item.image_id, None)
        if spec is None:
            continue  # not selected, or a duplicate id
        if spec.name in skip:
            progress(1)
            continue
        if spec.name not in open_builders:
            open_builders[spec.name] = (ShardBuilder(spec, options), len(spec.items))
        builder, remaining = open_builders[spec.name]
        builder.add(item)
        remaining -= 1
        progress(1)
        if remaining:
            open_builders[spec.name] = (builder, remaining)
        else:
            del open_builders[spec.name]
            builder.finish()
    if shard_of:
        raise UserError(
            f"The source yielded different items on its second read: {len(shard_of)} items "
            f"(e.g. {next(iter(shard_of))!r}) never came back; did it change while prepare ran?"
        )


# --- helpers -------------------------------------------------------------------------------


def merge_results(results: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Sums shard results: kept/skipped per split and class, skipped files, size histogram,
    and photos with GPS per split and class (the points themselves stay in the results)."""
    merged: dict[str, Any] = {
        "kept": {},
        "skipped_per_class": {},
        "skipped": [],
        "sizes": {},
        "located": {},
    }
    for result in results:
        per_split = merged["kept"].setdefault(result["split"], {})
        for class_name, n in result["kept_per_class"].items():
            _bump(per_split, class_name, n)
        located = merged["located"].setdefault(result["split"], {})
        for class_name, points in result.get("gps", {}).items():
            _bump(located, class_name, len(points))
        for class_name, n in result["skipped_per_class"].items():
            _bump(merged["skipped_per_class"], class_name, n)
        merged["skipped"].extend(result["skipped"])
        for size, n in result["sizes"].items():
            _bump(merged["sizes"], size, n)
    return merged


def _bump(counts: dict[str, int], key: str, n: int = 1) -> None:
    counts[key] = counts.get(key, 0) + n


def _size_bucket(width: int, height: int) -> str:
    def bucket(value: int) -> int:
        return max(SIZE_BUCKET, round(value / SIZE_BUCKET) * SIZE_BUCKET)

    return f"{bucket(width)}x{bucket(height)}"


def _quiet_worker() -> None:
    """Worker processes: no TensorFlow banner per process."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
