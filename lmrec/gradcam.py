"""Grad-CAM and saliency maps: where in the photo the model found its answer.

    python -m lmrec.gradcam --model_dir=runs/demo [--class_name=NAME] [--gradcam_dir=DIR] \
        PHOTO_OR_FOLDER...

Grad-CAM (Selvaraju et al. 2017) weights the backbone's output feature maps by
the spatial mean of the class score's gradient with respect to them, sums them
and keeps the positive part. The classifier exposes backbone and head as
sub-models, so the gradient is taken with respect to model.backbone(x) for every
backbone and head in the registries, with no per-model layer names. The class
score is the logit before the softmax (the paper's y^c), read from the head's
last layer. The vanilla-gradient saliency map (Simonyan et al. 2014) is the
largest absolute gradient of the same score over each pixel's channels.

From Python (notebooks): explain_photos(model_dir, paths) writes the PNGs and
returns Explanation records; explain_images(trained, pixels, names) computes
them for arrays; overlay() blends a heatmap onto a photo.
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf
from absl import flags
from tqdm import tqdm

from lmrec import cli, config, console, photo_archive, plots, run_files
from lmrec.data import pipeline
from lmrec.errors import UserError

# Share of the heatmap's colour in an overlay.
OVERLAY_ALPHA = 0.45
# Saliency maps are scaled to this percentile of their values (a few pixels dominate the max).
SALIENCY_PERCENTILE = 99.0
# CAM-guided crop: the region where Grad-CAM reaches CROP_LEVEL of its peak, plus
# CROP_MARGIN of the image on each side, at least MIN_CROP of each side.
CROP_LEVEL = 0.5
CROP_MARGIN = 0.1
MIN_CROP = 0.5
# The grid shows at most this many photos (one row each); every photo gets its own PNG.
GRID_MAX_PHOTOS = 64


@dataclass
class Explanation:
    """One photo and what the model looked at.

    Attributes:
      path: the photo's file ("" for arrays passed directly).
      image: uint8 [S, S, 3], the photo as the model saw it (resized to its input size).
      class_index, class_name: the class explained (predicted unless one was asked for).
      probability: the model's probability of that class.
      predicted_name, predicted_probability: the top prediction.
      heatmap: float32 [S, S] in [0, 1], Grad-CAM upsampled to the image.
      saliency: float32 [S, S] in [0, 1].
    """

    path: str
    image: np.ndarray
    class_index: int
    class_name: str
    probability: float
    predicted_name: str
    predicted_probability: float
    heatmap: np.ndarray
    saliency: np.ndarray


def class_score_function(head: keras.Model) -> Callable[[tf.Tensor], tf.Tensor]:
    """features -> per-class scores before the softmax, from the head's last layer.

    The head ends in a layer named "probabilities": Dense(softmax) (its logits
    are recomputed from its input and weights) or Activation(softmax) after a
    cosine classifier (its input is the logits). Any other ending falls back to
    log-probabilities, which rank classes the same way. Built once per head (the
    sub-model up to the last layer is not rebuilt for every batch).
    """
    if head not in _SCORE_FUNCTIONS:
        _SCORE_FUNCTIONS[head] = _build_score_function(head)
    return _SCORE_FUNCTIONS[head]


_SCORE_FUNCTIONS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _build_score_function(head: keras.Model) -> Callable[[tf.Tensor], tf.Tensor]:
    last = head.layers[-1]
    before = keras.Model(head.inputs, last.input, name="head_before_softmax")
    if isinstance(last, keras.layers.Dense):

        def dense_logits(features):
            x = tf.cast(before(features, training=False), last.kernel.dtype)
            logits = tf.matmul(x, last.kernel)
            return logits + last.bias if last.use_bias else logits

        return dense_logits
    if isinstance(last, keras.layers.Activation):
        return lambda features: tf.cast(before(features, training=False), tf.float32)
    return lambda features: tf.math.log(tf.cast(head(features, training=False), tf.float32) + 1e-12)


def _normalize(maps: tf.Tensor) -> tf.Tensor:
    """Scales each map of [N, H, W] to a maximum of 1 (an all-zero map stays zero)."""
    peak = tf.reduce_max(maps, axis=[1, 2], keepdims=True)
    return tf.math.divide_no_nan(maps, peak)


def _explain_batch(model, batch, class_indices, with_saliency: bool):
    """One forward and backward pass: Grad-CAM maps, and saliency maps if asked.

    Returns (maps [N, h, w], chosen class per image, probabilities, saliency or None).
    """
    scores_of = class_score_function(model.head)
    batch = tf.convert_to_tensor(batch, tf.float32)
    with tf.GradientTape(persistent=with_saliency) as tape:
        if with_saliency:
            tape.watch(batch)
        features = model.backbone(batch, training=False)
        tape.watch(features)
        scores = tf.cast(scores_of(features), tf.float32)
        chosen = _chosen(scores, class_indices)
        target = tf.gather(scores, chosen, batch_dims=1)
    gradients = tf.cast(tape.gradient(target, features), tf.float32)
    weights = tf.reduce_mean(gradients, axis=[1, 2], keepdims=True)
    maps = tf.nn.relu(tf.reduce_sum(weights * tf.cast(features, tf.float32), axis=-1))
    salient = None
    if with_saliency:
        salient = _saliency_maps(tape.gradient(target, batch))
        del tape
    probabilities = tf.nn.softmax(scores, axis=-1).numpy()
    return _normalize(maps).numpy(), chosen.numpy(), probabilities, salient


def _saliency_maps(input_gradients: tf.Tensor) -> np.ndarray:
    """max over channels of |gradient|, each map scaled to its SALIENCY_PERCENTILE-th
    percentile and clipped to [0, 1]."""
    gradients = tf.reduce_max(tf.abs(input_gradients), axis=-1).numpy()
    scale = np.percentile(gradients.reshape(len(gradients), -1), SALIENCY_PERCENTILE, axis=1)
    scaled = gradients / np.maximum(scale, 1e-12)[:, None, None]
    return np.clip(scaled, 0.0, 1.0).astype(np.float32)


def gradcam(
    model, batch: tf.Tensor, class_indices: Sequence[int] | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Grad-CAM maps for a batch of preprocessed images.

    Args:
      model: a Classifier (model.backbone and model.head).
      batch: [N, S, S, 3], preprocessed as the model expects.
      class_indices: the class to explain per image; None explains each top prediction.

    Returns:
      (maps, class_indices, probabilities): maps float32 [N, h, w] in [0, 1] at the
      backbone's feature-map resolution; the explained class per image; the model's
      probabilities [N, classes].
    """
    maps, chosen, probabilities, _ = _explain_batch(model, batch, class_indices, False)
    return maps, chosen, probabilities


def saliency(model, batch: tf.Tensor, class_indices: Sequence[int]) -> np.ndarray:
    """Vanilla-gradient saliency: max over channels of |d score / d pixel|, float32 [N, S, S].

    Each map is scaled to its SALIENCY_PERCENTILE-th percentile and clipped to [0, 1].
    """
    return _explain_batch(model, batch, class_indices, True)[3]


def _chosen(scores: tf.Tensor, class_indices: Sequence[int] | None) -> tf.Tensor:
    if class_indices is None:
        return tf.argmax(scores, axis=-1, output_type=tf.int32)
    return tf.constant(np.asarray(class_indices, np.int32))


def upsample(maps: np.ndarray, size: int) -> np.ndarray:
    """[N, h, w] maps -> [N, size, size], bilinear, as the overlay needs."""
    resized = tf.image.resize(maps[..., None], [size, size], method="bilinear")
    return np.clip(resized[..., 0].numpy(), 0.0, 1.0)


def overlay(image: np.ndarray, heatmap: np.ndarray, alpha: float = OVERLAY_ALPHA) -> np.ndarray:
    """Blends a [0, 1] heatmap (jet colours) onto a uint8 photo of the same size."""
    from matplotlib import colormaps

    colours = colormaps["jet"](heatmap)[..., :3] * 255.0
    blended = (1.0 - alpha) * image.astype(np.float32) + alpha * colours
    return np.clip(blended, 0, 255).astype(np.uint8)


def explain_images(
    trained, pixels: np.ndarray, paths: Sequence[str], class_name: str = ""
) -> list[Explanation]:
    """Grad-CAM and saliency for photos already resized to the model's input size.

    Args:
      trained: a run_files.TrainedModel (model, labels, preprocess).
      pixels: uint8 or float [N, S, S, 3] RGB in [0, 255].
      paths: a name per photo, kept in the records.
      class_name: explain this class instead of each photo's prediction.

    Raises:
      UserError: class_name is not one of the model's classes.
    """
    names = trained.class_names
    requested = None
    if class_name:
        if class_name not in names:
            raise UserError(
                f"--class_name={class_name!r} is not one of the model's classes: "
                f"{', '.join(names[:20])}{' ...' if len(names) > 20 else ''}"
            )
        requested = [names.index(class_name)] * len(pixels)
    batch = trained.preprocess(tf.convert_to_tensor(pixels, tf.float32))
    maps, chosen, probabilities, salient = _explain_batch(trained.model, batch, requested, True)
    heatmaps = upsample(maps, pixels.shape[1])
    predicted = np.argmax(probabilities, axis=1)
    return [
        Explanation(
            path=path,
            image=np.asarray(image).astype(np.uint8),
            class_index=int(index),
            class_name=names[index],
            probability=float(row[index]),
            predicted_name=names[top],
            predicted_probability=float(row[top]),
            heatmap=heat,
            saliency=sal,
        )
        for path, image, index, row, top, heat, sal in zip(
            paths, pixels, chosen, probabilities, predicted, heatmaps, salient, strict=True
        )
    ]


def cam_boxes(maps: np.ndarray, level: float = CROP_LEVEL, margin: float = CROP_MARGIN):
    """Boxes around each map's hot region, for tf.image.crop_and_resize.

    The region is where the map reaches `level` of its maximum; its bounding box
    (in cell units, so a single hot cell still covers its whole cell) grows by
    `margin` of the image on each side and is widened to at least MIN_CROP of it.

    Returns:
      float32 [N, 4] normalized (y1, x1, y2, x2); the whole image for an empty map.
    """
    boxes = []
    for cam in maps:
        height, width = cam.shape
        hot = np.argwhere(cam >= level * cam.max()) if cam.max() > 0 else np.empty((0, 2))
        if not len(hot):
            boxes.append((0.0, 0.0, 1.0, 1.0))
            continue
        y1, x1 = hot.min(axis=0) / (height, width)
        y2, x2 = (hot.max(axis=0) + 1) / (height, width)
        y1, x1, y2, x2 = y1 - margin, x1 - margin, y2 + margin, x2 + margin
        y1, y2 = _at_least(y1, y2, MIN_CROP)
        x1, x2 = _at_least(x1, x2, MIN_CROP)
        boxes.append((y1, x1, y2, x2))
    return np.asarray(boxes, np.float32)


def _at_least(low: float, high: float, size: float) -> tuple[float, float]:
    """The interval clipped to [0, 1] and widened about its centre to at least size."""
    low, high = max(low, 0.0), min(high, 1.0)
    if high - low < size:
        centre = min(max((low + high) / 2, size / 2), 1 - size / 2)
        low, high = centre - size / 2, centre + size / 2
    return low, high


def cam_crop_probabilities(model, pixels: tf.Tensor, preprocess) -> tuple[np.ndarray, np.ndarray]:
    """The CAM-guided crop: classify, crop to the Grad-CAM region, classify the crop.

    Args:
      model: a Classifier.
      pixels: float [N, S, S, 3] in [0, 255].
      preprocess: the backbone's normalization.

    Returns:
      (probabilities of the whole photos, probabilities of the crops), each [N, classes].
    """
    pixels = tf.convert_to_tensor(pixels, tf.float32)
    maps, _, whole = gradcam(model, preprocess(pixels))
    size = int(pixels.shape[1])
    boxes = tf.constant(cam_boxes(maps))
    crops = tf.image.crop_and_resize(pixels, boxes, tf.range(len(boxes)), [size, size])
    cropped = tf.cast(model(preprocess(crops), training=False), tf.float32).numpy()
    return whole, cropped


@dataclass
class GradcamResult:
    explanations: list[Explanation]
    files: list[str]
    grid: str
    failures: list[dict[str, str]]


def _output_names(paths: Sequence[str]) -> list[str]:
    """A unique PNG name per photo, from its file name (folders may repeat names)."""
    seen: dict[str, int] = {}
    names = []
    for path in paths:
        stem = os.path.splitext(os.path.basename(path))[0] or "photo"
        count = seen.get(stem, 0)
        seen[stem] = count + 1
        names.append(f"{stem}_gradcam.png" if count == 0 else f"{stem}_{count}_gradcam.png")
    return names


def explain_photos(
    model_dir: str,
    inputs: Sequence[str],
    output_dir: str = "",
    class_name: str = "",
    batch_size: int = 16,
    verbose: bool = True,
    trained=None,
) -> GradcamResult:
    """Writes one PNG per photo (photo | Grad-CAM | saliency) and grid.png of them all.

    Args:
      model_dir: a trained lmrec model_dir.
      inputs: photos and folders (searched recursively).
      output_dir: where PNGs go; default <model_dir>/gradcam.
      class_name: explain this class for every photo instead of its prediction.
      batch_size: photos per gradient computation.
      verbose: progress bar and a summary on stderr.
      trained: an already loaded run_files.TrainedModel.

    Returns:
      The explanations, the files written, the grid's path and the photos skipped
      with their reasons.
    """
    if not inputs:
        raise UserError("Name at least one photo or folder to explain")
    trained = trained or run_files.load(model_dir)
    output_dir = output_dir or os.path.join(model_dir, "gradcam")
    scan = photo_archive.scan(list(inputs))
    paths, ignored = scan.photos, scan.ignored
    failures = [entry for entry in ignored if entry["reason"] == "no such file or folder"]
    failures += scan.failures  # folders that could not be listed
    skipped: list[dict[str, str]] = []
    photos = pipeline.photo_dataset(
        [(path, path, 0) for path in paths],
        trained.image_size,
        batch_size,
        trained.config.prepare.max_image_side,
        skipped,
    )
    explanations: list[Explanation] = []
    for pixels, _, ids in tqdm(photos, desc="gradcam", unit="batch", disable=not verbose):
        names = [i.decode("utf-8") for i in ids.numpy()]
        explanations += explain_images(trained, pixels.numpy(), names, class_name)
    failures += skipped
    files = []
    names = _output_names([e.path for e in explanations])
    for explanation, name in zip(explanations, names, strict=True):
        path = os.path.join(output_dir, name)
        plots.explanation_grid_png([_panels(explanation)], path)
        files.append(path)
    grid = ""
    if explanations:
        grid = os.path.join(output_dir, "grid.png")
        plots.explanation_grid_png([_panels(e) for e in explanations[:GRID_MAX_PHOTOS]], grid)
    if verbose:
        console.say(
            f"Grad-CAM for {len(explanations)} photo(s) in {output_dir}/ (grid.png and one PNG "
            f"per photo); {len(failures)} skipped."
        )
        for entry in failures[:10]:
            console.say(f"  skipped {entry['file']}: {entry['reason']}")
    return GradcamResult(explanations, files, grid, failures)


def _panels(explanation: Explanation) -> dict:
    """What plots.explanation_grid_png draws for one photo."""
    title = f"{explanation.class_name[:28]} ({explanation.probability:.2f})"
    if explanation.predicted_name != explanation.class_name:
        predicted = f"{explanation.predicted_name[:20]} ({explanation.predicted_probability:.2f})"
        title += f"\npredicted {predicted}"
    return {
        "name": os.path.basename(explanation.path),
        "title": title,
        "photo": explanation.image,
        "gradcam": overlay(explanation.image, explanation.heatmap),
        "saliency": explanation.saliency,
    }


def main(argv: list[str]) -> int:
    model_dir = flags.FLAGS.model_dir
    settings = config.from_flags(config.GradcamConfig, flags.FLAGS)
    result = explain_photos(model_dir, argv[1:], settings.gradcam_dir, settings.class_name)
    return 1 if result.failures or not result.explanations else 0


def run() -> None:
    cli.run_stage("gradcam", main, positional=True)


if __name__ == "__main__":
    run()
