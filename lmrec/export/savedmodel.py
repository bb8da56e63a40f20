"""SavedModel export for TF Serving: <export_dir>/<model_name>/<version>/.

    python -m lmrec.export --model_dir=runs/demo --export_dir=export [--classifier=hybrid]

Signatures:
  serving_default     image_bytes: string [batch] of encoded JPEG/PNG/GIF/BMP/WebP
                      (what TF Serving's REST API makes of {"b64": ...})
                      -> ok (bool [batch]: this image was decoded and classified),
                         classes (string [batch, k]), scores (float [batch, k]),
                         probabilities (float [batch, num_classes]),
                         open_set_score (float [batch]) and no_landmark (bool
                         [batch]: open_set_score below the threshold), both only
                         when the threshold is above 0, the classifier is not
                         softmax or the open-set score is not the top probability
  serving_images      images: uint8 [batch, height, width, 3] -> the same outputs
                      (ok always true)
  serving_embeddings  image_bytes -> embeddings (float32 [batch, D], L2-normalized;
                      zeros where not ok), ok
Decoding, resizing and the backbone's normalization run inside the graph.

--classifier (softmax | knn | hybrid, lmrec.recognizer) decides the answers: with
knn or hybrid the model's gallery (lmrec.gallery) is saved with the weights as
variables (float16 embeddings, int32 vote labels), and the search and the votes
run in the graph, so classes and probabilities cover the trained classes and the
landmarks added with `python -m lmrec.gallery add`. The open-set score and its
threshold are the ones recognizer.resolve picks, as evaluate and predict pick them.

Each image of a batch is answered on its own: an image that is
not ok gets ok false, empty classes, zero scores, probabilities and
open_set_score and no_landmark false, and the other images of the batch are answered as if sent
alone; the request never fails because of one image. An image is not ok when
its format is none of the five (told by its first bytes; an animated WebP is
refused too), its header cannot be read, it decodes to more than max_megapixels
(MAX_MEGAPIXELS = 40 by default, stored in the graph and in lmrec.json; a
JPEG counts at the 1/2 or 1/4 DCT scale it is decoded at, so a 200-megapixel
phone photo passes while a 100-megapixel PNG does not), or its data fails to
decode. The size check reads only the header and comes before any decoding; a
GIF is decoded from its first frame alone.

A version is never overwritten; the folder appears only once complete, with
assets.extra/ holding labels.json (the added landmarks after the trained classes),
lmrec.json (the classifier, its kNN settings, the open-set score and threshold,
class_names, the gallery size and the model's fingerprint) and
tf_serving_warmup_requests (requests for every signature that TF Serving replays
before serving).
"""

from __future__ import annotations

import json
import os

import keras
import tensorflow as tf

from lmrec import atomic, console, embeddings, recognizer, run_files, serving
from lmrec.config import ClassifierConfig, ExportConfig
from lmrec.data import pipeline, records
from lmrec.errors import UserError

METADATA_FILE = "lmrec.json"
EXTRA_DIR = "assets.extra"  # TF Serving's place for files beside the model (warm-up, labels).
# The most pixels serving_default decodes for one image. 40 MP decoded as uint8 RGB is 120 MB
# (480 MB as the float the resize reads), a bound per image that a server can budget for.
MAX_MEGAPIXELS = 40.0


def _endpoints(
    answer,
    class_names: list[str],
    image_size: int,
    top_k: int,
    threshold: float,
    open_set_outputs: bool,
    max_megapixels: float,
):
    """(from_bytes, from_uint8) around answer: float32 pixels [batch, S, S, 3] in [0, 255]
    -> (probabilities [batch, C] over class_names, open-set scores [batch])."""
    labels = tf.constant(class_names)
    k = min(top_k, len(class_names))
    max_pixels = int(max_megapixels * 1e6)

    def outputs(images: tf.Tensor, ok: tf.Tensor) -> dict[str, tf.Tensor]:
        # Images that are not ok hold zeros; the model runs on them too (the batch keeps
        # its shape) and their answers are blanked.
        probabilities, open_set_score = answer(images)
        scores, indices = tf.math.top_k(probabilities, k=k)
        answered = ok[:, None]
        result = {
            "ok": ok,
            "classes": tf.where(answered, tf.gather(labels, indices), ""),
            "scores": tf.where(answered, scores, 0.0),
            "probabilities": tf.where(answered, probabilities, 0.0),
        }
        if open_set_outputs:
            result["open_set_score"] = tf.where(ok, open_set_score, 0.0)
            result["no_landmark"] = ok & (open_set_score < threshold)
        return result

    def from_bytes(image_bytes: tf.Tensor) -> dict[str, tf.Tensor]:
        return outputs(*pipeline.decode_batch_checked(image_bytes, image_size, max_pixels))

    def from_uint8(images: tf.Tensor) -> dict[str, tf.Tensor]:
        ok = tf.ones(tf.shape(images)[:1], tf.bool)
        return outputs(pipeline.resize(images, image_size), ok)

    return from_bytes, from_uint8


def serving_functions(
    model,
    class_names: list[str],
    image_size: int,
    preprocess,
    top_k: int,
    reject_threshold: float = 0.0,
    max_megapixels: float = MAX_MEGAPIXELS,
):
    """Returns (from_bytes, from_uint8): the softmax endpoints as plain functions of the model.

    With a reject_threshold above 0 the outputs add open_set_score (the top
    probability) and no_landmark (bool [batch]): the top probability is below the
    threshold. from_bytes answers each image on its own (the module doc);
    max_megapixels caps what it decodes per image. recognizer_functions is the same
    with any classifier and the embeddings endpoint.
    """

    def answer(images):
        probabilities = tf.cast(model(preprocess(images), training=False), tf.float32)
        return probabilities, tf.reduce_max(probabilities, axis=1)

    return _endpoints(
        answer, class_names, image_size, top_k, reject_threshold, reject_threshold > 0,
        max_megapixels,
    )  # fmt: skip


def has_open_set_outputs(settings: recognizer.Settings) -> bool:
    """Whether the outputs carry open_set_score and no_landmark: with a threshold above 0,
    a classifier other than softmax, or an open-set score other than the top probability."""
    return (
        settings.threshold > 0
        or settings.classifier != "softmax"
        or settings.score != recognizer.DEFAULT_SCORE
    )


def recognizer_functions(
    rec: recognizer.Recognizer,
    top_k: int,
    gallery=None,
    max_megapixels: float = MAX_MEGAPIXELS,
):
    """Returns (from_bytes, from_uint8, embeddings_from_bytes) answering as rec does.

    One forward pass (embeddings.probabilities_and_embeddings_model) gives the softmax
    and the embedding; with a gallery, the kNN search and votes run in the graph
    (Recognizer.answer_tf) on gallery = (embeddings [N, D], vote labels [N]), which the
    export passes as variables. embeddings_from_bytes decodes exactly as from_bytes
    and returns {"embeddings": float32 [batch, D] L2-normalized, "ok"}; an image that is
    not ok gets a zero embedding.
    """
    trained = rec.trained
    model = embeddings.probabilities_and_embeddings_model(trained.model)
    preprocess = trained.preprocess
    gallery = gallery if rec.gallery is not None else (None, None)

    def forward(images):
        softmax, embedding = model(preprocess(images), training=False)
        return tf.cast(softmax, tf.float32), tf.cast(embedding, tf.float32)

    def answer(images):
        return rec.answer_tf(*forward(images), *gallery)

    settings = rec.settings
    from_bytes, from_uint8 = _endpoints(
        answer, rec.class_names, trained.image_size, top_k, settings.threshold,
        has_open_set_outputs(settings), max_megapixels,
    )  # fmt: skip
    max_pixels = int(max_megapixels * 1e6)

    def embeddings_from_bytes(image_bytes: tf.Tensor) -> dict[str, tf.Tensor]:
        images, ok = pipeline.decode_batch_checked(image_bytes, trained.image_size, max_pixels)
        _, embedding = forward(images)
        return {"embeddings": tf.where(ok[:, None], embedding, 0.0), "ok": ok}

    return from_bytes, from_uint8, embeddings_from_bytes


BYTES_SIGNATURE = [tf.TensorSpec([None], tf.string, name="image_bytes")]
UINT8_SIGNATURE = [tf.TensorSpec([None, None, None, 3], tf.uint8, name="images")]
EMBEDDINGS_SIGNATURE = serving.EMBEDDINGS_SIGNATURE


def serving_archive(
    rec: recognizer.Recognizer, top_k: int, max_megapixels: float = MAX_MEGAPIXELS
) -> keras.export.ExportArchive:
    """The recognizer with its three endpoints (serving_default, serving_images,
    serving_embeddings), ready to write_out.

    A gallery (float16 embeddings and int32 vote labels) becomes two tf.Variables, the
    archive's "gallery" collection: they are written to variables/ like the weights,
    and the graph reads them instead of holding N x D constants.
    """
    archive = keras.export.ExportArchive()
    archive.track(rec.trained.model)
    gallery = None
    if rec.gallery is not None:
        gallery = (
            tf.Variable(rec.gallery.embeddings, trainable=False, name="gallery_embeddings"),
            tf.Variable(rec.vote_labels, trainable=False, name="gallery_vote_labels"),
        )
        archive.add_variable_collection("gallery", list(gallery))
    from_bytes, from_uint8, embeddings_from_bytes = recognizer_functions(
        rec, top_k, gallery, max_megapixels
    )
    archive.add_endpoint("serving_default", from_bytes, input_signature=BYTES_SIGNATURE)
    archive.add_endpoint("serving_images", from_uint8, input_signature=UINT8_SIGNATURE)
    archive.add_endpoint(
        EMBEDDINGS_SIGNATURE, embeddings_from_bytes, input_signature=BYTES_SIGNATURE
    )
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
    classifier: ClassifierConfig | None = None,
) -> str:
    """Exports model_dir's best checkpoint (and, for knn and hybrid, its gallery) as a
    versioned SavedModel.

    The classifier and the open-set rule are resolved as every command resolves them
    (recognizer.resolve: the flags, then <model_dir>/open_set.json and the stored
    --reject_threshold). The gallery is read when the export is written: after
    `python -m lmrec.gallery add`, exporting again writes a new version that knows the
    added landmark.

    Args:
      model_dir: a trained lmrec model_dir.
      config: where and how to write (ExportConfig).
      verbose: print what was written.
      trained: the TrainedModel, when the caller has it loaded.
      max_megapixels: the most pixels serving_default decodes for one image (module doc).
      classifier: --classifier and its kNN settings; None is the softmax.

    Returns:
      The version folder, e.g. export/demo/1.

    Raises:
      UserError: the requested version exists (versions are never overwritten), an unknown
        classifier or open-set score, or knn/hybrid without a gallery of this model.
    """
    config = config or ExportConfig()
    trained = trained or run_files.load(model_dir)
    name = config.model_name or os.path.basename(os.path.normpath(model_dir))
    base = os.path.join(config.export_dir, name)
    version = config.version or next_version(base)
    path = os.path.join(base, str(version))
    if os.path.exists(path):
        raise UserError(f"{path} already exists; versions are never overwritten (omit --version)")
    settings = recognizer.resolve(
        model_dir, classifier or ClassifierConfig(), None, trained.config.evaluate.reject_threshold
    )
    rec = recognizer.Recognizer(trained, settings)
    archive = serving_archive(rec, config.top_k, max_megapixels)
    with atomic.new_directory(path) as tmp:
        archive.write_out(tmp, verbose=False)
        extra = os.path.join(tmp, EXTRA_DIR)
        os.makedirs(extra, exist_ok=True)
        labels = records.read_labels(model_dir)
        labels += [
            {"index": index, "name": added, "landmark_id": "", "origin": "added"}
            for index, added in enumerate(rec.class_names[len(labels) :], start=len(labels))
        ]
        atomic.write_json(os.path.join(extra, records.LABELS_FILE), labels)
        serving.write_warmup_file(extra, name, trained.image_size)
        metadata = {
            "model_dir": os.path.abspath(model_dir),
            "fingerprint": _fingerprint(model_dir),
            "backbone": trained.config.model.backbone,
            "head": trained.config.model.head,
            "loss": trained.config.model.loss,
            "image_size": trained.image_size,
            "max_image_side": trained.config.prepare.max_image_side,
            "top_k": min(config.top_k, len(rec.class_names)),
            "class_names": rec.class_names,
            "trained_classes": len(trained.class_names),
            "embedding_dimension": embeddings.embedding_dimension(trained),
            "classifier": settings.classifier,
            "knn_k": settings.knn_k,
            "knn_power": settings.knn_power,
            "knn_weight": settings.knn_weight,
            "gallery_size": 0 if rec.gallery is None else len(rec.gallery.embeddings),
            "open_set_score": settings.score,
            "open_set_threshold": settings.threshold,
            # The same threshold under its older name, which predict reads on any export.
            "reject_threshold": settings.threshold,
            "max_megapixels": max_megapixels,
        }
        atomic.write_json(os.path.join(extra, METADATA_FILE), metadata)
    if verbose:
        open_set = (
            f", open_set_score and no_landmark ({settings.score} < {settings.threshold:g})"
            if has_open_set_outputs(settings)
            else ""
        )
        gallery_size = metadata["gallery_size"]
        console.say(
            f"Exported SavedModel {path} with --classifier={settings.classifier}"
            + (f" over a gallery of {gallery_size} photos" if gallery_size else "")
            + f" (serving_default: image_bytes -> ok, classes, scores, probabilities{open_set}"
            f" over {len(rec.class_names)} classes, at most {max_megapixels:g} megapixels "
            f"decoded per image; serving_images: uint8 images; {EMBEDDINGS_SIGNATURE}: "
            f"image_bytes -> embeddings, ok; warm-up requests in {EXTRA_DIR}/)."
        )
    return path


def _fingerprint(model_dir: str) -> str:
    """The model's fingerprint (lmrec.embeddings); "" for a model handed to the export
    without its weights file and config.json in model_dir (a knn or hybrid export
    needs them: its gallery is checked against the fingerprint when loaded)."""
    try:
        return embeddings.fingerprint(model_dir)
    except UserError:
        return ""


def read_metadata(saved_model_dir: str) -> dict:
    path = os.path.join(saved_model_dir, EXTRA_DIR, METADATA_FILE)
    if not os.path.isfile(path):
        raise UserError(
            f"{saved_model_dir} was not exported by lmrec (no {EXTRA_DIR}/{METADATA_FILE})"
        )
    with open(path, encoding="utf-8") as f:
        return json.load(f)
