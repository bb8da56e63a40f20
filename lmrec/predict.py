"""Tags photos with landmark labels: the photographer's tool.

    python -m lmrec.predict --model=export/demo/1 --output=tags.csv ~/Pictures/trip

--model is an exported SavedModel (or the folder of its versions: the newest is
used) or a training model_dir. Folders are searched recursively for image
files. Every file ends up in the output: tagged, or with the reason it could
not be read. The exit status is 1 when any file failed, 0 otherwise.
"""

from __future__ import annotations

import concurrent.futures
import csv
import io
import json
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import tensorflow as tf
from tqdm import tqdm

from lmrec import atomic, export, metrics
from lmrec import model_dir as run_files
from lmrec.config import PredictConfig
from lmrec.data import images
from lmrec.errors import UserError

# The label of a photo whose top probability is below the reject threshold.
NO_LANDMARK = metrics.NO_LANDMARK_NAME


@dataclass
class Tagger:
    """A loaded model as one function: JPEG bytes batch -> probabilities."""

    class_names: list[str]
    max_image_side: int
    description: str
    serve: Callable[..., dict]  # serving_default: image_bytes -> {"probabilities", ...}
    reject_threshold: float = 0.0  # top probability below which a photo gets NO_LANDMARK

    def probabilities(self, encoded: list[bytes]) -> np.ndarray:
        outputs = self.serve(image_bytes=tf.constant(encoded, dtype=tf.string))
        return outputs["probabilities"].numpy()


def _newest_version(path: str) -> str | None:
    versions = [name for name in os.listdir(path) if name.isdigit()]
    if not versions:
        return None
    return os.path.join(path, max(versions, key=int))


def load_tagger(model: str) -> Tagger:
    """Opens --model: a SavedModel, a folder of SavedModel versions, or a model_dir.

    Raises:
      UserError: the path is none of those.
    """
    if not model:
        raise UserError("--model is required: an export folder or a training model_dir")
    if not os.path.isdir(model):
        raise UserError(f"--model={model!r} is not a folder")
    if os.path.isfile(os.path.join(model, run_files.CONFIG_FILE)):
        trained = run_files.load(model)
        from_bytes, _ = export.serving_functions(
            trained.model, trained.class_names, trained.image_size, trained.preprocess, 1
        )
        serve = tf.function(from_bytes, input_signature=export.BYTES_SIGNATURE)
        return Tagger(
            class_names=trained.class_names,
            max_image_side=trained.config.prepare.max_image_side,
            description=f"model_dir {model}",
            serve=lambda image_bytes: serve(image_bytes),
            reject_threshold=trained.config.evaluate.reject_threshold,
        )
    saved_model = model
    if not os.path.isfile(os.path.join(model, "saved_model.pb")):
        saved_model = _newest_version(model)
        if saved_model is None:
            raise UserError(
                f"--model={model!r} holds no saved_model.pb, no numbered versions and no "
                f"{run_files.CONFIG_FILE}"
            )
    metadata = export.read_metadata(saved_model)
    loaded = tf.saved_model.load(saved_model)
    signature = loaded.signatures["serving_default"]
    return Tagger(
        class_names=metadata["class_names"],
        max_image_side=metadata["max_image_side"],
        description=f"SavedModel {saved_model}",
        serve=signature,
        reject_threshold=metadata.get("reject_threshold", 0.0),
    )


def find_images(inputs: list[str]) -> tuple[list[str], list[dict[str, str]]]:
    """Expands files and folders (recursively) into image paths.

    Returns:
      (image paths in a stable order, [{"file", "reason"}] for inputs that do not exist and
      for non-image files found inside folders).
    """
    paths: list[str] = []
    ignored: list[dict[str, str]] = []
    for item in inputs:
        if os.path.isdir(item):
            for directory, subdirs, files in os.walk(item):
                subdirs.sort()
                for name in sorted(files):
                    path = os.path.join(directory, name)
                    if name.startswith("."):
                        continue
                    if images.has_image_extension(name):
                        paths.append(path)
                    else:
                        ignored.append({"file": path, "reason": "not an image extension"})
        elif os.path.isfile(item):
            paths.append(item)  # Named explicitly: always tried, whatever the extension.
        else:
            ignored.append({"file": item, "reason": "no such file or folder"})
    return paths, ignored


@dataclass
class PredictResult:
    rows: list[dict] = field(default_factory=list)
    failures: list[dict[str, str]] = field(default_factory=list)
    ignored: list[dict[str, str]] = field(default_factory=list)
    output: str = ""


def _prepared(paths: list[str], max_side: int) -> Iterator[tuple[str, bytes | str]]:
    """Validates and normalizes photos (EXIF orientation, size) in threads, in order."""

    def load(path):
        try:
            return path, images.to_jpeg(images.read_file(path), path, max_side)[0]
        except images.BadImage as error:
            return path, str(error)

    with concurrent.futures.ThreadPoolExecutor(max(1, min(8, os.cpu_count() or 1))) as pool:
        yield from pool.map(load, paths)


def _batches(items, size):
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def predict(
    model: str,
    inputs: list[str],
    output: str = "",
    top_k: int = 5,
    batch_size: int = 32,
    verbose: bool = True,
    reject_threshold: float | None = None,
) -> PredictResult:
    """Tags every photo under inputs; writes CSV or JSON to output when given.

    A photo whose top probability is below reject_threshold (None: the model's
    stored --reject_threshold) is labelled NO_LANDMARK; its top-k stay in the output.

    Returns:
      Rows ({"file", "label", "score", "top": [(label, score), ...]}), failures
      ({"file", "reason"}) and ignored non-image files.
    """
    if not inputs:
        raise UserError("Name at least one photo or folder to tag")
    if output and not output.lower().endswith((".csv", ".json")):
        raise UserError(f"--output={output!r} must end with .csv or .json")
    tagger = load_tagger(model)
    threshold = tagger.reject_threshold if reject_threshold is None else reject_threshold
    metrics.check_threshold(threshold)
    paths, ignored = find_images(inputs)
    result = PredictResult(ignored=ignored, output=output)
    k = max(1, min(top_k, len(tagger.class_names)))
    progress = tqdm(total=len(paths), desc="predict", unit="img", disable=not verbose)
    for batch in _batches(_prepared(paths, tagger.max_image_side), batch_size):
        good = [(path, data) for path, data in batch if isinstance(data, bytes)]
        for path, reason in batch:
            if isinstance(reason, str):
                result.failures.append({"file": path, "reason": reason})
        if good:
            probabilities = tagger.probabilities([data for _, data in good])
            for (path, _), row in zip(good, probabilities, strict=True):
                order = np.argsort(-row, kind="stable")[:k]
                top = [(tagger.class_names[i], float(row[i])) for i in order]
                label = top[0][0] if top[0][1] >= threshold else NO_LANDMARK
                result.rows.append({"file": path, "label": label, "score": top[0][1], "top": top})
        progress.update(len(batch))
    progress.close()
    if output:
        _write(output, result, k)
    if verbose:
        _report(result, tagger)
    return result


def _write(output: str, result: PredictResult, k: int) -> None:
    if output.lower().endswith(".json"):
        payload = {
            "predictions": [
                {
                    "file": r["file"],
                    "label": r["label"],
                    "score": r["score"],
                    "top": [{"label": label, "score": score} for label, score in r["top"]],
                }
                for r in result.rows
            ],
            "failures": result.failures,
            "ignored": result.ignored,
        }
        atomic.write_json(output, payload)
        return
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    header = ["file", "label", "score", "error"]
    for rank in range(1, k + 1):
        header += [f"label_{rank}", f"score_{rank}"]
    writer.writerow(header)
    for r in result.rows:
        tops = [value for label, score in r["top"] for value in (label, f"{score:.4f}")]
        writer.writerow([r["file"], r["label"], f"{r['score']:.4f}", "", *tops])
    for failure in result.failures:
        writer.writerow([failure["file"], "", "", failure["reason"]])
    atomic.write_text(output, buffer.getvalue())


def _report(result: PredictResult, tagger: Tagger) -> None:
    counts: dict[str, int] = {}
    for row in result.rows:
        counts[row["label"]] = counts.get(row["label"], 0) + 1
    print(
        f"Tagged {len(result.rows)} photos with {tagger.description}"
        + (f"; wrote {result.output}" if result.output else ""),
        file=sys.stderr,
    )
    for label, count in sorted(counts.items(), key=lambda item: -item[1]):
        print(f"  {count:6d}  {label}", file=sys.stderr)
    for failure in result.failures:
        print(f"  FAILED {failure['file']}: {failure['reason']}", file=sys.stderr)
    if result.ignored:
        print(
            f"  ignored {len(result.ignored)} non-image or missing paths"
            + (" (listed in the output)" if result.output else ""),
            file=sys.stderr,
        )
    if not result.output:
        for row in result.rows:
            print(
                json.dumps(
                    {"file": row["file"], "label": row["label"], "score": round(row["score"], 4)}
                )
            )


def main(argv: list[str]) -> int:
    from absl import flags

    from lmrec import config as config_lib

    settings: PredictConfig = config_lib.from_flags(PredictConfig, flags.FLAGS)
    threshold = None
    if flags.FLAGS["reject_threshold"].present:
        threshold = flags.FLAGS.reject_threshold
    result = predict(
        settings.model,
        argv[1:],
        settings.output,
        settings.top_k,
        settings.batch_size,
        reject_threshold=threshold,
    )
    missing = [entry for entry in result.ignored if entry["reason"] == "no such file or folder"]
    return 1 if (result.failures or missing) else 0


def run() -> None:
    from lmrec import cli, flags  # noqa: F401 - defines the flags.

    cli.run_stage(main, positional=True)


if __name__ == "__main__":
    run()
