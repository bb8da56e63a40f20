"""SavedModel export for TF Serving: <export_dir>/<model_name>/<version>/.

    python -m lmrec.export --model_dir=runs/demo --export_dir=export

Signatures:
  serving_default  image_bytes: string [batch] of encoded JPEG/PNG/GIF/BMP/WebP
                   (what TF Serving's REST API makes of {"b64": ...})
                   -> ok (bool [batch]: this image was decoded and classified),
                      classes (string [batch, k]), scores (float [batch, k]),
                      probabilities (float [batch, num_classes]),
                      no_landmark (bool [batch], only when the model_dir's
                      --reject_threshold is above 0)
  serving_images   images: uint8 [batch, height, width, 3] -> the same outputs
                   (ok always true)
Decoding, resizing and the backbone's normalization run inside the graph.

Each image of a serving_default batch is answered on its own: an image that is
not ok gets ok false, empty classes, zero scores and probabilities and
no_landmark false, and the other images of the batch are answered as if sent
alone; the request never fails because of one image. An image is not ok when
its format is none of the five (told by its first bytes; an animated WebP is
refused too), its header cannot be read, it decodes to more than max_megapixels
(MAX_MEGAPIXELS = 40 by default, stored in the graph and in lmrec.json; a
JPEG counts at the 1/2 or 1/4 DCT scale it is decoded at, so a 200-megapixel
phone photo passes while a 100-megapixel PNG does not), or its data fails to
decode. The size check reads only the header and comes before any decoding; a
GIF is decoded from its first frame alone.

A version is never overwritten; the folder appears only once complete, with
assets.extra/ holding labels.json, lmrec.json and tf_serving_warmup_requests
(requests for both signatures that TF Serving replays before serving).
"""

from __future__ import annotations

import json
import os
import shutil
import sys

import keras
import tensorflow as tf

from lmrec import atomic, run_files, serving
from lmrec.config import ExportConfig
from lmrec.data import pipeline, records
from lmrec.errors import UserError

METADATA_FILE = "lmrec.json"
EXTRA_DIR = "assets.extra"  # TF Serving's place for files beside the model (warm-up, labels).
# The most pixels serving_default decodes for one image. 40 MP decoded as uint8 RGB is 120 MB
# (480 MB as the float the resize reads), a bound per image that a server can budget for.
MAX_MEGAPIXELS = 40.0


def serving_functions(
    model,
    class_names: list[str],
    image_size: int,
    preprocess,
    top_k: int,
    reject_threshold: float = 0.0,
    max_megapixels: float = MAX_MEGAPIXELS,
):
    """Returns (from_bytes, from_uint8): the two endpoints as plain functions of the model.

    Used both for the export and, in memory, by lmrec.predict on a model_dir.
    With a reject_threshold above 0 the outputs add no_landmark (bool [batch]):
    the top probability is below the threshold. from_bytes answers each image on
    its own (the module doc); max_megapixels caps what it decodes per image.
    """
    labels = tf.constant(class_names)
    k = min(top_k, len(class_names))
    max_pixels = int(max_megapixels * 1e6)

    def outputs(images: tf.Tensor, ok: tf.Tensor) -> dict[str, tf.Tensor]:
        # Images that are not ok hold zeros; the model runs on them too (the batch keeps
        # its shape) and their answers are blanked.
        probabilities = tf.cast(model(preprocess(images), training=False), tf.float32)
        scores, indices = tf.math.top_k(probabilities, k=k)
        answered = ok[:, None]
        result = {
            "ok": ok,
            "classes": tf.where(answered, tf.gather(labels, indices), ""),
            "scores": tf.where(answered, scores, 0.0),
            "probabilities": tf.where(answered, probabilities, 0.0),
        }
        if reject_threshold > 0:
            result["no_landmark"] = ok & (scores[:, 0] < reject_threshold)
        return result

    def from_bytes(image_bytes: tf.Tensor) -> dict[str, tf.Tensor]:
        return outputs(*pipeline.decode_batch_checked(image_bytes, image_size, max_pixels))

    def from_uint8(images: tf.Tensor) -> dict[str, tf.Tensor]:
        ok = tf.ones(tf.shape(images)[:1], tf.bool)
        return outputs(pipeline.resize(images, image_size), ok)

    return from_bytes, from_uint8


BYTES_SIGNATURE = [tf.TensorSpec([None], tf.string, name="image_bytes")]
UINT8_SIGNATURE = [tf.TensorSpec([None, None, None, 3], tf.uint8, name="images")]


def serving_archive(
    model,
    class_names,
    image_size: int,
    preprocess,
    top_k: int,
    reject_threshold: float = 0.0,
    max_megapixels: float = MAX_MEGAPIXELS,
) -> keras.export.ExportArchive:
    """The model with both endpoints (serving_default, serving_images), ready to write_out."""
    from_bytes, from_uint8 = serving_functions(
        model, class_names, image_size, preprocess, top_k, reject_threshold, max_megapixels
    )
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serving_default", from_bytes, input_signature=BYTES_SIGNATURE)
    archive.add_endpoint("serving_images", from_uint8, input_signature=UINT8_SIGNATURE)
    return archive


def next_version(base: str) -> int:
    """One more than the highest numeric version folder under base (1 when none)."""
    if not os.path.isdir(base):
        return 1
    versions = [int(name) for name in os.listdir(base) if name.isdigit()]
    return max(versions, default=0) + 1


def export_saved_model(
    model_dir: str,
    config: ExportConfig | None = None,
    verbose: bool = True,
    trained=None,
    max_megapixels: float = MAX_MEGAPIXELS,
) -> str:
    """Exports model_dir's best checkpoint as a versioned SavedModel.

    max_megapixels: the most pixels serving_default decodes for one image (module doc).

    Returns:
      The version folder, e.g. export/demo/1.

    Raises:
      UserError: the requested version exists (versions are never overwritten).
    """
    config = config or ExportConfig()
    trained = trained or run_files.load(model_dir)
    name = config.model_name or os.path.basename(os.path.normpath(model_dir))
    base = os.path.join(config.export_dir, name)
    version = config.version or next_version(base)
    path = os.path.join(base, str(version))
    if os.path.exists(path):
        raise UserError(f"{path} already exists; versions are never overwritten (omit --version)")
    threshold = trained.config.evaluate.reject_threshold
    archive = serving_archive(
        trained.model,
        trained.class_names,
        trained.image_size,
        trained.preprocess,
        config.top_k,
        threshold,
        max_megapixels,
    )
    with atomic.new_directory(path) as tmp:
        archive.write_out(tmp, verbose=False)
        extra = os.path.join(tmp, EXTRA_DIR)
        os.makedirs(extra, exist_ok=True)
        shutil.copy(os.path.join(model_dir, records.LABELS_FILE), extra)
        serving.write_warmup_file(extra, name, trained.image_size)
        metadata = {
            "model_dir": os.path.abspath(model_dir),
            "backbone": trained.config.model.backbone,
            "head": trained.config.model.head,
            "loss": trained.config.model.loss,
            "image_size": trained.image_size,
            "max_image_side": trained.config.prepare.max_image_side,
            "top_k": min(config.top_k, len(trained.class_names)),
            "class_names": trained.class_names,
            "reject_threshold": threshold,
            "max_megapixels": max_megapixels,
        }
        atomic.write_json(os.path.join(extra, METADATA_FILE), metadata)
    if verbose:
        print(
            f"Exported SavedModel {path} (serving_default: image_bytes -> ok, classes, scores, "
            f"probabilities, at most {max_megapixels:g} megapixels decoded per image; "
            f"serving_images: uint8 images; warm-up requests in {EXTRA_DIR}/).",
            file=sys.stderr,
        )
    return path


def read_metadata(saved_model_dir: str) -> dict:
    path = os.path.join(saved_model_dir, EXTRA_DIR, METADATA_FILE)
    if not os.path.isfile(path):
        raise UserError(
            f"{saved_model_dir} was not exported by lmrec (no {EXTRA_DIR}/{METADATA_FILE})"
        )
    with open(path, encoding="utf-8") as f:
        return json.load(f)
