"""TFLite (and optionally ONNX) copies of an exported SavedModel, checked against it.

    python -m lmrec.export --model_dir=runs/demo --tflite=float32,float16,int8

For the SavedModel export/<name>/<version>/ this writes export/<name>_tflite/<version>/:
  float32.tflite  float16.tflite  int8.tflite   the variants asked for
  model.onnx      only when tf2onnx and onnxruntime are installed
  labels.txt      class names, line i = output index i
  tflite_report.json

Every file takes images: uint8 [batch, S, S, 3] (RGB, already resized to the
model's side S) and returns probabilities: float32 [batch, classes] and
embeddings: float32 [batch, D] (L2-normalized, what the SavedModel's
serving_embeddings returns); the backbone's normalization is inside. kNN
classification stays out of the files, whatever --classifier the SavedModel was
exported with: an app on a phone searches its own gallery with the embeddings.
Decoding and resizing stay outside because TFLite's builtin ops have neither
JPEG decoding nor antialiased resizing, and a phone has its own decoder. The
folder sits beside <name>/, not in it, so TF Serving's scan of numbered versions never sees it.

Each variant is run on the same held-out images as the SavedModel's
serving_images signature, and the report gives per variant: top-1 agreement,
the largest and mean |probability difference|, the largest |embedding
difference| against serving_embeddings on the same images (PNG-encoded, so they
decode to the same pixels), file size and images/s.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from lmrec import atomic, console, run_files
from lmrec.data import held_out
from lmrec.errors import UserError
from lmrec.export import agreement, savedmodel
from lmrec.export import onnx as onnx_export
from lmrec.registry import Registry


@dataclass(frozen=True)
class Variant:
    """How one TFLite variant is converted."""

    optimize: bool  # converter.optimizations = [DEFAULT]
    float16: bool = False  # float16 weights instead of int8 ones


# Dynamic-range int8: weights stored as int8, activations stay float (no calibration data).
VARIANTS: Registry[Variant] = Registry(
    "tflite variant",
    {
        "float32": Variant(optimize=False),
        "float16": Variant(optimize=True, float16=True),
        "int8": Variant(optimize=True),
    },
    flag="tflite",
)
FOLDER_SUFFIX = "_tflite"
LABELS_FILE = "labels.txt"
REPORT_FILE = "tflite_report.json"
DEFAULT_CHECK_IMAGES = 64


def parse_variants(text: str) -> list[str]:
    """--tflite="float32,int8" -> ["float32", "int8"] ("" -> []).

    Raises:
      UserError: an unknown name (the message lists the valid ones).
    """
    return VARIANTS.parse_names(text)


def check_settings(variants: str, max_images: int) -> list[str]:
    """parse_variants, plus the image count; lmrec.export calls it before the long export.

    Raises:
      UserError: an unknown variant, or --tflite_check_images below 1.
    """
    names = parse_variants(variants)
    if names and max_images < 1:
        raise UserError(f"--tflite_check_images={max_images} must be at least 1")
    return names


def output_folder(saved_model_dir: str) -> str:
    """export/<name>/<version> -> export/<name>_tflite/<version>."""
    version_dir = os.path.normpath(os.path.abspath(saved_model_dir))
    base, version = os.path.split(version_dir)
    parent, name = os.path.split(base)
    return os.path.join(parent, name + FOLDER_SUFFIX, version)


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
            agreement.probabilities_function(trained),
            input_signature=agreement.input_signature(trained.image_size),
        )
        archive.write_out(tmp, verbose=False)
        flatbuffers = {}
        for name in variants:
            variant = VARIANTS.get(name)
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


def run_tflite(
    model_path: str, images: np.ndarray, num_threads: int
) -> tuple[np.ndarray, np.ndarray, float]:
    """Probabilities and embeddings for uint8 images, one per call as on a phone.

    Returns:
      (probabilities, embeddings, images/s).
    """
    runner = interpreter(model_path, num_threads).get_signature_runner("serving_default")
    runner(images=images[:1])  # warm-up: allocation and delegate setup are not timed
    start = time.perf_counter()
    outputs = [runner(images=images[i : i + 1]) for i in range(len(images))]
    rate = len(images) / (time.perf_counter() - start)
    return (
        np.concatenate([output["probabilities"] for output in outputs]),
        np.concatenate([output["embeddings"] for output in outputs]),
        rate,
    )


def export_tflite(
    saved_model_dir: str,
    variants: Sequence[str] = tuple(VARIANTS),
    data: str = "",
    max_images: int = DEFAULT_CHECK_IMAGES,
    trained=None,
    num_threads: int = 0,
    onnx: bool = True,
    verbose: bool = True,
) -> agreement.TfliteReport:
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
    variants = check_settings(",".join(variants), max_images)
    if not variants:
        raise UserError(
            f"--tflite names no variant; valid {VARIANTS.kind} names: {', '.join(VARIANTS)}"
        )
    metadata = savedmodel.read_metadata(saved_model_dir)
    if trained is None:
        try:
            trained = run_files.load(metadata["model_dir"])
        except UserError as error:
            raise UserError(
                f"The TFLite conversion rebuilds the model from the model_dir that "
                f"{saved_model_dir} was exported from ({savedmodel.EXTRA_DIR}/"
                f"{savedmodel.METADATA_FILE}), and it failed: {error}"
            ) from error
    if trained.image_size != metadata["image_size"]:
        raise UserError(
            f"{metadata['model_dir']} now has image_size {trained.image_size}, but "
            f"{saved_model_dir} was exported at {metadata['image_size']}: export it again"
        )
    num_threads = num_threads or os.cpu_count() or 1
    images, labels, source = held_out.held_out_images(trained, data, max_images)
    loaded = tf.saved_model.load(saved_model_dir)
    reference = loaded.signatures["serving_images"](images=tf.constant(images))
    reference = reference["probabilities"].numpy()
    reference_embeddings = None
    if savedmodel.EMBEDDINGS_SIGNATURE in loaded.signatures:  # exports before it have none
        lossless = tf.constant([tf.io.encode_png(image).numpy() for image in images])
        reference_embeddings = loaded.signatures[savedmodel.EMBEDDINGS_SIGNATURE](
            image_bytes=lossless
        )["embeddings"].numpy()

    folder = output_folder(saved_model_dir)
    flatbuffers = convert(trained, variants)
    # Derived from the version, so a re-run replaces the folder rather than refusing.
    with atomic.new_directory(folder, overwrite=True) as tmp:
        atomic.write_text(os.path.join(tmp, LABELS_FILE), "\n".join(trained.class_names) + "\n")
        checks = []
        for name, flatbuffer in flatbuffers.items():
            path = os.path.join(tmp, f"{name}.tflite")
            atomic.write_bytes(path, flatbuffer)
            probs, found, rate = run_tflite(path, images, num_threads)
            checks.append(
                agreement.check(
                    name, path, probs, rate, reference, labels, found, reference_embeddings
                )
            )
        if onnx:
            checks.append(
                onnx_export.export_onnx(trained, tmp, images, reference, labels, num_threads)
            )
        report = agreement.TfliteReport(
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
        console.say(
            f"Wrote {folder} (input: uint8 [batch, {trained.image_size}, "
            f"{trained.image_size}, 3] RGB; outputs: probabilities, embeddings)"
        )
        console.say(report.table())
    return report
