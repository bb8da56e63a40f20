"""TFLite (and optionally ONNX) copies of an exported SavedModel, checked against it.

    python -m lmrec.export --model_dir=runs/demo --tflite=float32,float16,int8

For the SavedModel export/<name>/<version>/ this writes export/<name>_tflite/<version>/:
  float32.tflite  float16.tflite  int8.tflite   the variants asked for
  model.onnx      only when tf2onnx and onnxruntime are installed
  labels.txt      class names, line i = output index i
  tflite_report.json

Every file takes images: uint8 [batch, S, S, 3] (RGB, already resized to the
model's side S) and returns probabilities: float32 [batch, classes]; the
backbone's normalization is inside. Decoding and resizing stay outside because
TFLite's builtin ops have neither JPEG decoding nor antialiased resizing, and a
phone has its own decoder. The folder sits beside <name>/, not in it, so TF
Serving's scan of numbered versions never sees it.

Each variant is run on the same held-out images as the SavedModel's
serving_images signature, and the report gives per variant: top-1 agreement,
the largest and mean |probability difference|, file size and images/s.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from lmrec import atomic
from lmrec import model_dir as run_files
from lmrec.errors import UserError


@dataclass(frozen=True)
class Variant:
    """How one TFLite variant is converted."""

    optimize: bool  # converter.optimizations = [DEFAULT]
    float16: bool = False  # float16 weights instead of int8 ones


# Dynamic-range int8: weights stored as int8, activations stay float (no calibration data).
VARIANTS = {
    "float32": Variant(optimize=False),
    "float16": Variant(optimize=True, float16=True),
    "int8": Variant(optimize=True),
}
FOLDER_SUFFIX = "_tflite"
LABELS_FILE = "labels.txt"
REPORT_FILE = "tflite_report.json"
ONNX_FILE = "model.onnx"
ONNX_MISSING = "skipped: pip install tf2onnx onnxruntime"
DEFAULT_CHECK_IMAGES = 64


def parse_variants(text: str) -> list[str]:
    """--tflite="float32,int8" -> ["float32", "int8"] ("" -> []).

    Raises:
      UserError: an unknown name (the message lists the valid ones).
    """
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in VARIANTS]
    if unknown:
        raise UserError(
            f"Unknown --tflite variant {', '.join(map(repr, unknown))}; "
            f"valid: {', '.join(VARIANTS)} (comma-separated)"
        )
    return list(dict.fromkeys(names))


def check_settings(variants: str, max_images: int) -> list[str]:
    """parse_variants, plus the image count; lmrec.export calls it before the long export.

    Raises:
      UserError: an unknown variant, or --tflite_check_images below 1.
    """
    names = parse_variants(variants)
    if names and max_images < 1:
        raise UserError(f"--tflite_check_images={max_images} must be at least 1")
    return names


@dataclass
class VariantCheck:
    """One converted file measured against the SavedModel on the same images."""

    variant: str
    file: str = ""  # name inside the report's folder
    size_mb: float = 0.0
    top1_agreement: float = 0.0  # fraction of images whose top class equals the SavedModel's
    max_abs_diff: float = 0.0  # largest |probability difference| over images and classes
    mean_abs_diff: float = 0.0
    accuracy: float = 0.0  # top-1 against the images' labels
    images_per_second: float = 0.0  # batch 1, after one warm-up call
    skipped: str = ""  # why it was not converted (ONNX without its packages)


@dataclass
class TfliteReport:
    """What export_tflite wrote and how well each file agrees with the SavedModel."""

    directory: str
    saved_model: str
    image_size: int
    images: int  # held-out images compared
    image_source: str
    saved_model_accuracy: float
    num_threads: int
    checks: list[VariantCheck]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def table(self) -> str:
        rows = [
            f"{'variant':<8} {'MB':>7} {'top-1 agree':>12} {'max |dp|':>9} {'mean |dp|':>9} "
            f"{'accuracy':>8} {'images/s':>9}"
        ]
        for c in self.checks:
            if c.skipped:
                rows.append(f"{c.variant:<8} {c.skipped}")
                continue
            agree = f"{round(c.top1_agreement * self.images)}/{self.images}"
            rows.append(
                f"{c.variant:<8} {c.size_mb:7.2f} {agree:>12} {c.max_abs_diff:9.1e} "
                f"{c.mean_abs_diff:9.1e} {c.accuracy:8.3f} {c.images_per_second:9.1f}"
            )
        rows.append(
            f"SavedModel accuracy on the same {self.images} images ({self.image_source}): "
            f"{self.saved_model_accuracy:.3f}"
        )
        return "\n".join(rows)


def output_folder(saved_model_dir: str) -> str:
    """export/<name>/<version> -> export/<name>_tflite/<version>."""
    version_dir = os.path.normpath(os.path.abspath(saved_model_dir))
    base, version = os.path.split(version_dir)
    parent, name = os.path.split(base)
    return os.path.join(parent, name + FOLDER_SUFFIX, version)


def _probabilities_function(trained) -> Callable:
    """uint8 [batch, S, S, 3] -> {"probabilities"}: the serving graph without decode/resize."""
    model, preprocess = trained.model, trained.preprocess

    def probabilities(images: tf.Tensor) -> dict[str, tf.Tensor]:
        probabilities = model(preprocess(tf.cast(images, tf.float32)), training=False)
        return {"probabilities": tf.cast(probabilities, tf.float32)}

    return probabilities


def _input_signature(image_size: int) -> list[tf.TensorSpec]:
    return [tf.TensorSpec([None, image_size, image_size, 3], tf.uint8, name="images")]


def convert(trained, variants: Sequence[str]) -> dict[str, bytes]:
    """Converts the model of a TrainedModel into each TFLite variant (name -> flatbuffer).

    Goes through a temporary SavedModel, as keras.export's own LiteRT export does:
    tf.lite.TFLiteConverter.from_concrete_functions leaves Keras 3 variables as
    uninitialised resources (the interpreter returns NaN), from_saved_model
    freezes them. Only builtin ops are allowed, so no Flex delegate is needed.
    """
    import keras

    with tempfile.TemporaryDirectory(prefix="lmrec-tflite-") as tmp:
        archive = keras.export.ExportArchive()
        archive.track(trained.model)
        archive.add_endpoint(
            "serving_default",
            _probabilities_function(trained),
            input_signature=_input_signature(trained.image_size),
        )
        archive.write_out(tmp, verbose=False)
        flatbuffers = {}
        for name in variants:
            variant = VARIANTS[name]
            converter = tf.lite.TFLiteConverter.from_saved_model(tmp)
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
            if variant.optimize:
                converter.optimizations = [tf.lite.Optimize.DEFAULT]
            if variant.float16:
                converter.target_spec.supported_types = [tf.float16]
            flatbuffers[name] = converter.convert()
    return flatbuffers


def interpreter(model_path: str, num_threads: int):
    """A TFLite interpreter with its default (XNNPACK) CPU delegate.

    ai_edge_litert's (the LiteRT package) when installed; else tf.lite's, which
    TF 2.21 still ships but marks deprecated with a UserWarning.
    """
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        Interpreter = tf.lite.Interpreter
    return Interpreter(model_path=model_path, num_threads=num_threads)


def run_tflite(model_path: str, images: np.ndarray, num_threads: int) -> tuple[np.ndarray, float]:
    """Probabilities for uint8 images, one per call as on a phone; returns (probs, images/s)."""
    runner = interpreter(model_path, num_threads).get_signature_runner("serving_default")
    runner(images=images[:1])  # warm-up: allocation and delegate setup are not timed
    start = time.perf_counter()
    outputs = [runner(images=images[i : i + 1])["probabilities"] for i in range(len(images))]
    return np.concatenate(outputs), len(images) / (time.perf_counter() - start)


def held_out_images(trained, data: str, max_images: int) -> tuple[np.ndarray, np.ndarray, str]:
    """Up to max_images (uint8 [N, S, S, 3], labels [N], description) from --data.

    --data as lmrec.evaluate reads it; "" is the model_dir's validation shards.
    """
    from lmrec import evaluate

    source = evaluate.eval_data(trained, data, batch_size=min(max_images, 32))
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


def _check(
    name: str, path: str, probs: np.ndarray, images_per_second: float, reference, labels
) -> VariantCheck:
    diff = np.abs(probs - reference)
    return VariantCheck(
        variant=name,
        file=os.path.basename(path),
        size_mb=os.path.getsize(path) / 1e6,
        top1_agreement=float(np.mean(probs.argmax(1) == reference.argmax(1))),
        max_abs_diff=float(diff.max()),
        mean_abs_diff=float(diff.mean()),
        accuracy=float(np.mean(probs.argmax(1) == labels)),
        images_per_second=images_per_second,
    )


def _onnx(trained, folder: str, images, reference, labels, num_threads) -> VariantCheck:
    """model.onnx via tf2onnx, checked with onnxruntime; skipped when either is missing."""
    try:
        import onnxruntime
        import tf2onnx
    except ImportError:
        return VariantCheck("onnx", skipped=ONNX_MISSING)
    function = tf.function(
        _probabilities_function(trained), input_signature=_input_signature(trained.image_size)
    )
    try:
        proto, _ = tf2onnx.convert.from_function(
            function, input_signature=_input_signature(trained.image_size)
        )
    except Exception as error:  # tf2onnx lags TF releases; a failure must not lose the TFLite files
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
        return VariantCheck("onnx", skipped=f"skipped: tf2onnx failed: {first_line[:200]}")
    path = os.path.join(folder, ONNX_FILE)
    atomic.write_bytes(path, proto.SerializeToString())
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = num_threads
    session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    session.run(None, {input_name: images[:1]})
    start = time.perf_counter()
    probs = np.concatenate(
        [session.run(None, {input_name: images[i : i + 1]})[0] for i in range(len(images))]
    )
    rate = len(images) / (time.perf_counter() - start)
    return _check("onnx", path, probs, rate, reference, labels)


def export_tflite(
    saved_model_dir: str,
    variants: Sequence[str] = tuple(VARIANTS),
    data: str = "",
    max_images: int = DEFAULT_CHECK_IMAGES,
    trained=None,
    num_threads: int = 0,
    onnx: bool = True,
    verbose: bool = True,
) -> TfliteReport:
    """Writes TFLite variants of an lmrec SavedModel and checks each against it.

    The TFLite graph is rebuilt from the model_dir the SavedModel names in
    assets.extra/lmrec.json (a SavedModel's functions cannot be cut free of their
    decode/resize ops); the check against the SavedModel itself catches a
    model_dir that changed since the export.

    Args:
      saved_model_dir: a version folder written by lmrec.export, e.g. export/demo/1.
      variants: names in VARIANTS.
      data: held-out images, as lmrec.evaluate's --data; "": the validation shards.
      max_images: how many of them to compare on.
      trained: the TrainedModel, when the caller has it loaded.
      num_threads: interpreter threads; 0: one per CPU core.
      onnx: also write model.onnx when tf2onnx and onnxruntime are installed.
      verbose: print the agreement table to stderr.

    Returns:
      The report, also written as tflite_report.json beside the files.

    Raises:
      UserError: unknown variant, not an lmrec SavedModel, or its model_dir is gone.
    """
    from lmrec import export

    variants = check_settings(",".join(variants), max_images)
    if not variants:
        raise UserError(f"--tflite names no variant; valid: {', '.join(VARIANTS)}")
    metadata = export.read_metadata(saved_model_dir)
    if trained is None:
        try:
            trained = run_files.load(metadata["model_dir"])
        except UserError as error:
            raise UserError(
                f"The TFLite conversion rebuilds the model from the model_dir that "
                f"{saved_model_dir} was exported from ({export.EXTRA_DIR}/"
                f"{export.METADATA_FILE}), and it failed: {error}"
            ) from error
    if trained.image_size != metadata["image_size"]:
        raise UserError(
            f"{metadata['model_dir']} now has image_size {trained.image_size}, but "
            f"{saved_model_dir} was exported at {metadata['image_size']}: export it again"
        )
    num_threads = num_threads or os.cpu_count() or 1
    images, labels, source = held_out_images(trained, data, max_images)
    serve = tf.saved_model.load(saved_model_dir).signatures["serving_images"]
    reference = serve(images=tf.constant(images))["probabilities"].numpy()

    folder = output_folder(saved_model_dir)
    flatbuffers = convert(trained, variants)
    # Derived from the version, so a re-run replaces the folder rather than refusing.
    with atomic.new_directory(folder, overwrite=True) as tmp:
        atomic.write_text(os.path.join(tmp, LABELS_FILE), "\n".join(trained.class_names) + "\n")
        checks = []
        for name, flatbuffer in flatbuffers.items():
            path = os.path.join(tmp, f"{name}.tflite")
            atomic.write_bytes(path, flatbuffer)
            probs, rate = run_tflite(path, images, num_threads)
            checks.append(_check(name, path, probs, rate, reference, labels))
        if onnx:
            checks.append(_onnx(trained, tmp, images, reference, labels, num_threads))
        report = TfliteReport(
            directory=folder,
            saved_model=os.path.abspath(saved_model_dir),
            image_size=trained.image_size,
            images=len(images),
            image_source=source,
            saved_model_accuracy=float(np.mean(reference.argmax(1) == labels)),
            num_threads=num_threads,
            checks=checks,
        )
        atomic.write_json(os.path.join(tmp, REPORT_FILE), report.to_dict())
    if verbose:
        print(
            f"Wrote {folder} (input: uint8 [batch, {trained.image_size}, "
            f"{trained.image_size}, 3] RGB; output: probabilities)",
            file=sys.stderr,
        )
        print(report.table(), file=sys.stderr)
    return report
