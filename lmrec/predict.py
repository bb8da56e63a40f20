"""Tags photos with landmark labels: the photographer's tool.

    python -m lmrec.predict --model=export/demo/1 --output=tags.csv --xmp ~/Pictures/trip

--model is an exported SavedModel (or the folder of its versions: the newest is
used) or a training model_dir. Folders are searched recursively. Each photo is
decoded upright (EXIF orientation; HEIC with pillow-heif), squeezed whole to the
model's square input in the decoding thread (DCT-scaled JPEG decode, one
antialiased resize) and classified in batches. RAW files take the tags of their
JPEG twin. Every file ends up in the output: tagged, failed with the reason, or
ignored with the reason. The output is resumable (lmrec/tag_store.py) and the
photos are never modified; --xmp writes sidecars (lmrec/xmp.py). The exit status
is 1 when any photo or folder failed, a named path is missing or a sidecar could not
be written, 0 otherwise.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import tensorflow as tf
from absl import flags
from tqdm import tqdm

from lmrec import (
    cli,
    config,
    console,
    locations,
    metrics,
    photo_archive,
    photo_places,
    recognizer,
    run_files,
    xmp,
)
from lmrec import contact_sheet as contact_sheets
from lmrec.config import ClassifierConfig, GeoConfig, PredictConfig
from lmrec.data import images, pipeline, records
from lmrec.errors import UserError
from lmrec.export import savedmodel, tflite
from lmrec.registry import Registry
from lmrec.tag_store import Row, TagStore, check_output

# The label of a photo whose open-set score (by default the top probability) is below
# the reject threshold.
NO_LANDMARK = metrics.NO_LANDMARK_NAME


@dataclass(frozen=True)
class Engine:
    """What one --engine runs for an export."""

    tflite: str = ""  # the TFLite variant file beside the export it runs; "": the SavedModel
    required: bool = False  # a missing TFLite file is an error (else the SavedModel runs)


ENGINES: Registry[Engine] = Registry(
    "engine",
    {
        "auto": Engine(tflite="float32"),
        "savedmodel": Engine(),
        "tflite": Engine(tflite="float32", required=True),
        "tflite-int8": Engine(tflite="int8", required=True),
    },
)


@dataclass
class Tagger:
    """A loaded model as one function: uint8 [batch, size, size, 3] -> probabilities."""

    class_names: list[str]
    image_size: int
    description: str  # which model: outputs from another one are not resumed
    # serving_images: images -> {"probabilities", and "open_set_score" when the model has one}
    serve: Callable[..., dict]
    reject_threshold: float = 0.0  # open-set score below which a photo gets NO_LANDMARK
    engine: str = "savedmodel"
    open_set_score: str = recognizer.DEFAULT_SCORE  # what the open-set scores are
    labels: list[dict] = field(default_factory=list)  # labels.json entries (with locations)

    def locations(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(latitude, longitude, radius_m) [C_located]: the located prefix of class_names
        (lmrec.locations.class_arrays); NaN where a class has no location."""
        return locations.class_arrays(self.labels)

    def probabilities(self, pixels: np.ndarray) -> np.ndarray:
        return self.answer(pixels)[0]

    def answer(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(probabilities [batch, classes], open-set scores [batch]).

        The open-set score is the model's open_set_score output, or the top probability
        when it has none (a softmax model, a TFLite file).
        """
        outputs = self.serve(images=tf.constant(pixels, dtype=tf.uint8))
        probabilities = np.asarray(outputs["probabilities"])
        if "open_set_score" in outputs:
            return probabilities, np.asarray(outputs["open_set_score"])
        return probabilities, probabilities.max(axis=1)


def _tflite_serve(path: str) -> Callable[..., dict]:
    """A TFLite file's signature (XNNPACK, a thread per core) as a serve function."""
    runner = tflite.interpreter(path, os.cpu_count() or 1).get_signature_runner("serving_default")
    return lambda images: runner(images=np.asarray(images, dtype=np.uint8))


def _newest_version(path: str) -> str | None:
    versions = [name for name in os.listdir(path) if name.isdigit()]
    if not versions:
        return None
    return os.path.join(path, max(versions, key=int))


def _recognizer_tagger(model: str, classifier: ClassifierConfig | None) -> Tagger:
    """A model_dir's Tagger: a recognizer.Recognizer with the resolved classifier."""
    trained = run_files.load(model)
    resolved = recognizer.resolve(
        model, classifier or ClassifierConfig(), None, trained.config.evaluate.reject_threshold
    )
    rec = recognizer.Recognizer(trained, resolved)
    size = trained.image_size
    # The export's serving_images resizes its input; the same op runs here.
    resize = tf.function(
        lambda images: pipeline.resize(images, size), input_signature=savedmodel.UINT8_SIGNATURE
    )

    def serve(images) -> dict:
        answer = rec(resize(images))
        return {"probabilities": answer.probabilities, "open_set_score": answer.scores}

    # The classifier is part of the description, so a resumed output keeps one classifier.
    description = f"model_dir {model}"
    if resolved.classifier != "softmax":
        description += f" --classifier={resolved.classifier}"
    return Tagger(
        class_names=rec.class_names,
        image_size=size,
        description=description,
        serve=serve,
        reject_threshold=resolved.threshold,
        engine="keras" if rec.gallery is None else f"keras {resolved.classifier}",
        open_set_score=resolved.score,
        labels=trained.labels,
    )


def _export_classifier(metadata: dict) -> str:
    """The --classifier an export answers with (older exports: softmax)."""
    return metadata.get("classifier", "softmax")


def _check_classifier(saved_model: str, metadata: dict, classifier: ClassifierConfig) -> None:
    """An export answers with the classifier it was exported with; another is a UserError."""
    exported = _export_classifier(metadata)
    score = metadata.get("open_set_score", recognizer.DEFAULT_SCORE)
    asked_score = classifier.open_set_score or score
    if classifier.classifier != exported or asked_score != score:
        raise UserError(
            f"{saved_model} answers with --classifier={exported} (--open_set_score={score}), "
            f"not --classifier={classifier.classifier} (--open_set_score={asked_score}): an "
            "export carries its classifier; export the model_dir again with "
            f"python -m lmrec.export --model_dir={metadata.get('model_dir', '...')} "
            f"--classifier={classifier.classifier}, or predict with the model_dir itself"
        )


def load_tagger(
    model: str, engine: str = "auto", classifier: ClassifierConfig | None = None
) -> Tagger:
    """Opens --model: a SavedModel, a folder of SavedModel versions, or a model_dir.

    engine: savedmodel calls the export's serving_images signature; tflite the
    float32 TFLite file `lmrec.export --tflite=float32` wrote beside it (equal to
    1e-6, and as fast or faster on every backbone benchmarks/predict_throughput.py
    measured); tflite-int8 the dynamic-range int8 file (faster for the big
    backbones, probabilities a little off: opt-in only); auto takes the float32
    file when it exists. A model_dir runs its Keras model.

    classifier: --classifier and its settings. A model_dir answers through a
    recognizer.Recognizer with them (None: softmax), so landmarks added to its
    gallery are labels too. An export answers with the classifier it was exported
    with, and a TFLite file holds no gallery: a knn or hybrid export runs its
    SavedModel.

    Raises:
      UserError: the path is none of those, a tflite engine finds no TFLite file or
        is asked to run a knn/hybrid export, or classifier differs from the export's.
    """
    spec = ENGINES.get(engine)
    if not model:
        raise UserError("--model is required: an export folder or a training model_dir")
    if not os.path.isdir(model):
        raise UserError(f"--model={model!r} is not a folder")
    if os.path.isfile(os.path.join(model, run_files.CONFIG_FILE)):
        if spec.required:
            raise UserError(
                f"--engine={engine} needs an export: --model={model} is a model_dir "
                "(python -m lmrec.export --tflite=float32,int8 writes one)"
            )
        return _recognizer_tagger(model, classifier)
    saved_model = model
    if not os.path.isfile(os.path.join(model, "saved_model.pb")):
        saved_model = _newest_version(model)
        if saved_model is None:
            raise UserError(
                f"--model={model!r} holds no saved_model.pb, no numbered versions and no "
                f"{run_files.CONFIG_FILE}"
            )
    metadata = savedmodel.read_metadata(saved_model)
    if classifier is not None:
        _check_classifier(saved_model, metadata, classifier)
    variant = spec.tflite
    # The TFLite files give probabilities and embeddings; the kNN votes and an open-set
    # score other than the top probability exist in the SavedModel only.
    needs_saved_model = _export_classifier(metadata) != "softmax" or (
        metadata.get("open_set_score", recognizer.DEFAULT_SCORE) != recognizer.DEFAULT_SCORE
    )
    if spec.required and needs_saved_model:
        raise UserError(
            f"--engine={engine}: {saved_model} answers with "
            f"--classifier={_export_classifier(metadata)} (open-set score "
            f"{metadata.get('open_set_score')}), which its TFLite files do not hold; "
            "use --engine=savedmodel"
        )
    if needs_saved_model:
        variant = ""
    tflite_file = os.path.join(tflite.output_folder(saved_model), f"{variant}.tflite")
    if spec.required and not os.path.isfile(tflite_file):
        raise UserError(
            f"--engine={engine}: {tflite_file} does not exist; write it with "
            f"python -m lmrec.export --tflite={variant}, or use --engine=savedmodel"
        )
    use_tflite = bool(variant) and os.path.isfile(tflite_file)
    serve = (
        _tflite_serve(tflite_file)
        if use_tflite
        else tf.saved_model.load(saved_model).signatures["serving_images"]
    )
    return Tagger(
        class_names=metadata["class_names"],
        image_size=metadata["image_size"],
        description=f"SavedModel {saved_model}",
        serve=serve,
        reject_threshold=metadata.get("reject_threshold", 0.0),
        engine=f"tflite {variant}" if use_tflite else "savedmodel",
        open_set_score=metadata.get("open_set_score", recognizer.DEFAULT_SCORE),
        labels=_export_labels(saved_model),
    )


def _export_labels(saved_model: str) -> list[dict]:
    """The export's assets.extra/labels.json (with the classes' locations); [] if absent."""
    try:
        return records.read_labels(os.path.join(saved_model, savedmodel.EXTRA_DIR))
    except UserError:
        return []


@dataclass
class PredictResult:
    rows: list[Row] = field(default_factory=list)  # tagged photos, and RAW files via twins
    failures: list[dict[str, str]] = field(default_factory=list)  # {"file", "reason"}
    ignored: list[dict[str, str]] = field(default_factory=list)  # non-images, lone RAW files
    sidecar_errors: list[dict[str, str]] = field(default_factory=list)
    output: str = ""
    contact_sheet: str = ""  # the HTML page written, if any
    resumed: int = 0  # photos tagged by an earlier run of the same --output, not redone
    classified: int = 0  # photos this run sent through the model


def _prepared(
    paths: list[str], size: int, ahead: int = 64, limits: images.Limits = images.DEFAULT_LIMITS
) -> Iterator[tuple[str, np.ndarray | str]]:
    """Decodes photos to square uint8 arrays in threads (Pillow releases the GIL), in order.

    At most `ahead` photos are decoded ahead of the consumer, so memory stays
    flat on an archive of any size while the model works on the batch before;
    limits.budget makes the threads take turns on photos that decode large.
    Each path yields (its array, its EXIF GPS or None), or the reason it failed as a string.
    """

    def load(path):
        try:
            data = images.read_file(path, limits)
            pixels = images.square_pixels(data, size, path, limits)
            return path, Decoded(pixels, locations.photo_gps(data))
        except images.BadImage as error:
            return path, str(error)
        except Exception as error:  # noqa: BLE001 - one file's failure, never the run's.
            return path, f"unexpected error ({type(error).__name__}: {error})"

    pending: collections.deque = collections.deque()
    with concurrent.futures.ThreadPoolExecutor(max(1, min(8, os.cpu_count() or 1))) as pool:
        for path in paths:
            pending.append(pool.submit(load, path))
            if len(pending) >= ahead:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


@dataclass(frozen=True)
class Decoded:
    """A photo ready for the model, and where its camera put it (EXIF GPS), if anywhere."""

    pixels: np.ndarray
    gps: tuple[float, float] | None


def _batches(items, size):
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


@dataclass(frozen=True)
class Labeling:
    """How probabilities become a row: top-k, the model's reject threshold, --min_score."""

    class_names: list[str]
    k: int
    reject_threshold: float
    min_score: float

    def rows(self, paths: list[str], probabilities: np.ndarray, open_set_scores=None) -> list[Row]:
        """One Row per photo of a batch; the top-k of the whole batch in one sort.

        A photo whose open-set score (None: its top probability) is below the reject
        threshold is labelled NO_LANDMARK.
        """
        order = top_k_indices(probabilities, self.k)
        scores = np.take_along_axis(probabilities, order, axis=1).tolist()
        if open_set_scores is None:
            open_set_scores = [ranked[0] for ranked in scores]
        rows = []
        for path, indices, ranked_scores, open_set_score in zip(
            paths, order.tolist(), scores, np.asarray(open_set_scores).tolist(), strict=True
        ):
            best = ranked_scores[0]
            if open_set_score < self.reject_threshold:
                label = NO_LANDMARK
            elif best < self.min_score:
                label = ""
            else:
                label = self.class_names[indices[0]]
            top = [
                (self.class_names[i], score)
                for i, score in zip(indices, ranked_scores, strict=True)
                if score >= self.min_score
            ]
            rows.append(Row(file=path, label=label, score=best, top=top))
        return rows


def top_k_indices(probabilities: np.ndarray, k: int) -> np.ndarray:
    """[batch, k] class indices by falling probability, ties by class index.

    The same as a full stable argsort, but partitions first: with GLDv2's 81k
    classes sorting every photo's probabilities would cost as much as the model.
    A row whose k-th probability is tied with one outside the top k is sorted
    whole, so the lower class index wins there too.
    """
    classes = probabilities.shape[1]
    k = min(k, classes)
    if k == classes:
        return np.argsort(-probabilities, axis=1, kind="stable")
    kept = np.argpartition(-probabilities, k - 1, axis=1)[:, :k]
    candidates = np.take_along_axis(probabilities, kept, axis=1)
    # lexsort: the last key first (falling probability), then the class index.
    order = np.take_along_axis(kept, np.lexsort((kept, -candidates), axis=1), axis=1)
    tied = (probabilities >= candidates.min(axis=1, keepdims=True)).sum(axis=1) > k
    if tied.any():
        order[tied] = np.argsort(-probabilities[tied], axis=1, kind="stable")[:, :k]
    return order


def _raw_rows(scan: photo_archive.Scan, by_file: dict[str, Row]) -> list[Row]:
    """A row per RAW file, copied from its twin's (or failed with the twin's reason)."""
    rows = []
    for raw, twin in scan.raw_twins.items():
        source = by_file.get(twin)
        if source is None:
            continue
        if source.error:
            rows.append(Row(file=raw, error=f"its twin {twin} failed: {source.error}"))
        else:
            # The twin's tags and location (the pair shares one sidecar).
            rows.append(
                dataclasses.replace(source, file=raw, top=list(source.top), tagged_from=twin)
            )
    return rows


def predict(
    model: str | Tagger,
    inputs: list[str],
    output: str = "",
    top_k: int = 5,
    batch_size: int = 32,
    verbose: bool = True,
    reject_threshold: float | None = None,
    min_score: float = 0.0,
    write_xmp: bool = False,
    engine: str = "auto",
    max_file_mb: int = images.MAX_FILE_MB,
    max_megapixels: int = images.MAX_MEGAPIXELS,
    decode_memory_mb: int = images.DECODE_MEMORY_MB,
    classifier: ClassifierConfig | None = None,
    geo: GeoConfig | None = None,
    sidecar_dir: str = "",
    contact_sheet: str = "",
    review_below: float = contact_sheets.LOW_CONFIDENCE_BELOW,
) -> PredictResult:
    """Tags every photo under inputs; writes CSV or JSON to output when given.

    model is a path for load_tagger(model, engine, classifier), or a Tagger already
    loaded (benchmarks, a notebook tagging several folders). classifier (--classifier
    softmax | knn | hybrid and its settings) applies to a model_dir, whose gallery's
    added landmarks then are labels too; an export answers with the classifier it was
    exported with. A photo whose open-set score (the top probability, unless the model
    stores another: recognizer.resolve) is below reject_threshold (None: the model's
    stored threshold) is labelled NO_LANDMARK; its top-k stay in the output. An
    existing output is resumed: photos tagged in it are not redone. On Ctrl-C the
    output is written with what is done, then the interrupt goes on.

    What one photo may cost is bounded (images.Limits): a file over max_file_mb
    fails unread, one decoding to more than max_megapixels fails from its header,
    and the photos decoding at once share decode_memory_mb. A folder that cannot
    be listed is a failed row of its own.

    geo (--geo_prior and --locate_min_score, lmrec.photo_places): a photo's own GPS
    weighs the landmarks by distance, and a confident landmark with a location in
    labels.json locates a photo that has none (in the output, and with write_xmp in
    its sidecar, under sidecar_dir when given). contact_sheet: also write that HTML
    page (lmrec.contact_sheet), photos scoring below review_below in its
    low-confidence section.

    Returns:
      Rows, failures ({"file", "reason"}), ignored files and counts.
    """
    if not inputs:
        raise UserError("Name at least one photo or folder to tag")
    check_output(output)
    if not 0.0 <= min_score <= 1.0:
        raise UserError(f"--min_score={min_score} must be within [0, 1]")
    limits = images.Limits.from_flags(max_file_mb, max_megapixels, decode_memory_mb)
    if reject_threshold is not None:
        metrics.check_threshold(reject_threshold)
    tagger = model if isinstance(model, Tagger) else load_tagger(model, engine, classifier)
    threshold = tagger.reject_threshold if reject_threshold is None else reject_threshold
    labeling = Labeling(
        tagger.class_names, max(1, min(top_k, len(tagger.class_names))), threshold, min_score
    )
    if contact_sheet and not contact_sheet.lower().endswith((".html", ".htm")):
        raise UserError(f"--contact_sheet={contact_sheet!r} must end in .html")
    if sidecar_dir and not write_xmp:
        raise UserError("--sidecar_dir is where --xmp writes sidecars: add --xmp")
    places = photo_places.for_tagger(tagger, geo, threshold)
    scan = photo_archive.scan(inputs, sidecar_dir=sidecar_dir or None)
    with TagStore(output, tagger.description, verbose=verbose) as store:
        todo = [path for path in scan.photos if not store.is_done(path)]
        result = PredictResult(
            ignored=scan.ignored, output=output, resumed=len(scan.photos) - len(todo)
        )
        if verbose and result.resumed:
            console.say(f"Resuming {output}: {result.resumed} photos already tagged.")
        progress = tqdm(
            total=len(scan.photos), initial=result.resumed, desc="predict", unit="img",
            disable=not verbose,
        )  # fmt: skip
        try:
            prepared = _prepared(todo, tagger.image_size, 2 * batch_size, limits)
            for batch in _batches(prepared, batch_size):
                rows = [Row(file=path, error=data) for path, data in batch if isinstance(data, str)]
                good = [(path, data) for path, data in batch if not isinstance(data, str)]
                if good:
                    probabilities, open_set_scores = tagger.answer(
                        np.stack([data.pixels for _, data in good])
                    )
                    own = [
                        photo_places.own_location(data.gps, scan.sidecars.get(path))
                        for path, data in good
                    ]
                    probabilities, open_set_scores, notes = places.weigh(
                        probabilities, open_set_scores, own
                    )
                    tagged = labeling.rows(
                        [path for path, _ in good], probabilities, open_set_scores
                    )
                    places.locate(tagged, own, notes)
                    if write_xmp:
                        _write_sidecars(tagged, scan, tagger.description, result)
                    rows += tagged
                    result.classified += len(good)
                store.add(rows)
                progress.update(len(batch))
        except KeyboardInterrupt:
            _finish(store, scan, labeling.k, result)
            console.warn(
                f"Interrupted: {output or 'nothing'} holds what was tagged; run the same command "
                "again to go on."
            )
            raise
        finally:
            progress.close()
        _finish(store, scan, labeling.k, result)
        if contact_sheet:
            _write_contact_sheet(contact_sheet, result, tagger, review_below, verbose)
        if verbose:
            _report(result, tagger)
        return result


def _write_contact_sheet(
    path: str, result: PredictResult, tagger: Tagger, review_below: float, verbose: bool
) -> None:
    summary = contact_sheets.write_contact_sheet(
        path,
        [contact_sheets.SheetEntry.from_row(row) for row in result.rows],
        failed=result.failures,
        ignored=result.ignored,
        description=f"{tagger.description} [{tagger.engine}]",
        low_confidence_below=review_below,
        verbose=verbose,
    )
    result.contact_sheet = summary.path


def _finish(store: TagStore, scan: photo_archive.Scan, k: int, result: PredictResult) -> None:
    rows = store.rows(scan.photos)
    by_file = {row.file: row for row in rows}
    raw_rows = _raw_rows(scan, by_file)
    folder_rows = [Row(file=failure["file"], error=failure["reason"]) for failure in scan.failures]
    store.add(raw_rows + folder_rows, journal=False)
    rows = store.rows(scan.photos + list(scan.raw_twins) + [row.file for row in folder_rows])
    rows = _without_listed_folders(rows, scan)
    store.finish(rows, scan.ignored, k)
    result.rows = [row for row in rows if not row.error]
    result.failures = [{"file": row.file, "reason": row.error} for row in rows if row.error]


def _without_listed_folders(rows: list[Row], scan: photo_archive.Scan) -> list[Row]:
    """Drops the failed row of a folder an earlier run could not list and this scan did.

    Its photos now have rows of their own; a folder that still cannot be listed
    keeps its row (the scan's failure replaces the earlier one, under the same key).
    """
    listed = {_path_key(folder) for folder in scan.folders}
    return [row for row in rows if not (row.error and _path_key(row.file) in listed)]


def _path_key(path: str) -> str:
    return os.path.normcase(os.path.abspath(path))


def _write_sidecars(rows: list[Row], scan: photo_archive.Scan, model: str, result) -> None:
    for row in rows:
        if row.label in ("", NO_LANDMARK):
            continue
        sidecar = scan.sidecars[row.file]
        location = None
        if row.located_from == xmp.LOCATED_FROM:
            location = (row.latitude, row.longitude)
        try:
            xmp.write_keyword(sidecar, row.label, row.score, model, location=location)
        except Exception as error:  # one sidecar's trouble is reported; the run goes on
            reason = str(error) if isinstance(error, xmp.BadSidecar | OSError) else repr(error)
            result.sidecar_errors.append({"file": sidecar, "reason": reason})


def _report(result: PredictResult, tagger: Tagger) -> None:
    counts: dict[str, int] = {}
    for row in result.rows:
        counts[row.label or "(below --min_score)"] = counts.get(row.label, 0) + 1
    console.say(
        f"Tagged {len(result.rows)} files with {tagger.description} [{tagger.engine}] "
        f"({result.classified} "
        f"classified now, {result.resumed} from an earlier run)"
        + (f"; wrote {result.output}" if result.output else "")
    )
    for label, count in sorted(counts.items(), key=lambda item: -item[1]):
        console.say(f"  {count:6d}  {label}")
    for failure in result.failures:
        console.warn(f"failed {failure['file']}: {failure['reason']}")
    for error in result.sidecar_errors:
        console.warn(f"sidecar not written {error['file']}: {error['reason']}")
    if result.ignored:
        console.say(
            f"  ignored {len(result.ignored)} non-image, RAW-only or missing paths"
            + (" (listed in the output)" if result.output else "")
        )
    if not result.output:
        for row in result.rows:
            print(json.dumps({"file": row.file, "label": row.label, "score": round(row.score, 4)}))


def exit_status(result: PredictResult) -> int:
    """1 when a photo failed, a named path is missing or a sidecar was not written, else 0,
    so that a script sees a run that left something undone."""
    missing = [entry for entry in result.ignored if entry["reason"] == "no such file or folder"]
    return 1 if (result.failures or missing or result.sidecar_errors) else 0


def main(argv: list[str]) -> int:
    settings: PredictConfig = config.from_flags(PredictConfig, flags.FLAGS)
    threshold = None
    if flags.FLAGS["reject_threshold"].present:
        threshold = flags.FLAGS.reject_threshold
    # Only classifier flags given on the command line (or in a flagfile) reach an export,
    # which refuses a classifier other than its own.
    classifier = None
    if any(flags.FLAGS[f.name].present for f in dataclasses.fields(ClassifierConfig)):
        classifier = config.from_flags(ClassifierConfig, flags.FLAGS)
    result = predict(
        settings.model,
        argv[1:],
        settings.output,
        settings.top_k,
        settings.batch_size,
        reject_threshold=threshold,
        min_score=settings.min_score,
        write_xmp=settings.xmp,
        engine=settings.engine,
        max_file_mb=settings.max_file_mb,
        max_megapixels=settings.max_megapixels,
        decode_memory_mb=settings.decode_memory_mb,
        classifier=classifier,
        geo=config.from_flags(GeoConfig, flags.FLAGS),
        sidecar_dir=settings.sidecar_dir,
        contact_sheet=settings.contact_sheet,
        review_below=settings.review_below,
    )
    return exit_status(result)


def run() -> None:
    cli.run_stage("predict", main, positional=True)


if __name__ == "__main__":
    run()
