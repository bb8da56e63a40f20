"""Grad-CAM and saliency: the heatmap finds the object that decides the class."""

from __future__ import annotations

import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from lmrec import gradcam
from lmrec.config import ModelConfig
from lmrec.errors import UserError
from lmrec.models import backbones, classifier, heads

# Trains, exports or runs commands: left out by `pytest -m "not slow"`.
pytestmark = pytest.mark.slow

SIZE = 96
COLOURS = np.array([[230, 40, 40], [40, 200, 40], [50, 70, 230]], np.float32)


def _quadrant_photos(count: int, seed: int):
    """Grey noise with one coloured square in a random quadrant; the colour is the class.

    Returns (uint8 images [count, SIZE, SIZE, 3], labels, quadrant per image: 0 top-left,
    1 top-right, 2 bottom-left, 3 bottom-right).
    """
    rng = np.random.default_rng(seed)
    photos = rng.normal(128, 30, (count, SIZE, SIZE, 3)).clip(0, 255)
    labels = rng.integers(0, len(COLOURS), count)
    quadrants = rng.integers(0, 4, count)
    half, side = SIZE // 2, 20
    for photo, label, quadrant in zip(photos, labels, quadrants, strict=True):
        top = (quadrant // 2) * half + rng.integers(2, half - side - 2)
        left = (quadrant % 2) * half + rng.integers(2, half - side - 2)
        photo[top : top + side, left : left + side] = COLOURS[label]
    return photos.astype(np.uint8), labels, quadrants


def _quadrant_mass(heatmap: np.ndarray) -> np.ndarray:
    half = heatmap.shape[0] // 2
    parts = [
        heatmap[:half, :half],
        heatmap[:half, half:],
        heatmap[half:, :half],
        heatmap[half:, half:],
    ]
    masses = np.array([part.sum() for part in parts])
    return masses / max(masses.sum(), 1e-12)


@pytest.fixture(scope="module")
def quadrant_model():
    """The baseline CNN trained until it tells the squares' colours apart (96 px: a 6x6 map)."""
    keras.utils.set_random_seed(0)
    config = ModelConfig(backbone="baseline", weights="none", head="gap_dense512", dropout=0.0)
    model = classifier.build_classifier(config, len(COLOURS), SIZE)
    preprocess = backbones.get_spec("baseline").preprocess
    photos, labels, _ = _quadrant_photos(480, seed=1)
    model.compile(
        keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy", metrics=["accuracy"]
    )
    inputs = preprocess(tf.constant(photos, tf.float32))
    model.fit(inputs, labels, batch_size=32, epochs=6, verbose=0)
    return model, preprocess


def test_heatmap_mass_falls_in_the_quadrant_of_the_deciding_object(quadrant_model):
    model, preprocess = quadrant_model
    photos, labels, quadrants = _quadrant_photos(40, seed=2)
    batch = preprocess(tf.constant(photos, tf.float32))
    maps, chosen, probabilities = gradcam.gradcam(model, batch)
    assert np.mean(chosen == labels) >= 0.9, "the model did not learn the colours"
    np.testing.assert_allclose(probabilities, model.predict(batch, verbose=0), atol=1e-5)
    # On the 6x6 feature map each quadrant is 3x3 cells; chance would put a quarter in each.
    mass = np.array([_quadrant_mass(m)[q] for m, q in zip(maps, quadrants, strict=True)])
    top = np.array([np.argmax(_quadrant_mass(m)) for m in maps])
    assert mass.mean() > 0.5, f"mean heatmap mass in the object's quadrant {mass.mean():.2f}"
    assert np.mean(top == quadrants) >= 0.9
    heatmaps = gradcam.upsample(maps, SIZE)
    assert heatmaps.shape == (40, SIZE, SIZE)
    upsampled = [_quadrant_mass(h)[q] for h, q in zip(heatmaps, quadrants, strict=True)]
    assert np.mean(upsampled) > 0.5
    # The saliency map finds it too: more gradient on the square's quadrant than elsewhere.
    salient = gradcam.saliency(model, batch, chosen)
    saliency_top = np.array([np.argmax(_quadrant_mass(s)) for s in salient])
    assert np.mean(saliency_top == quadrants) >= 0.8


def test_the_score_is_the_logit_before_the_softmax(quadrant_model):
    model, preprocess = quadrant_model
    photos, _, _ = _quadrant_photos(4, seed=3)
    features = model.backbone(preprocess(tf.constant(photos, tf.float32)), training=False)
    logits = gradcam.class_score_function(model.head)(features)
    np.testing.assert_allclose(
        tf.nn.softmax(logits).numpy(), model.head(features, training=False).numpy(), atol=1e-5
    )


def test_a_requested_class_is_explained_instead_of_the_prediction(quadrant_model):
    model, preprocess = quadrant_model
    photos, labels, _ = _quadrant_photos(6, seed=4)
    other = (labels + 1) % len(COLOURS)
    maps, chosen, _ = gradcam.gradcam(model, preprocess(tf.constant(photos, tf.float32)), other)
    assert chosen.tolist() == other.tolist()
    assert maps.shape == (6, SIZE // 16, SIZE // 16)
    assert np.all((maps >= 0) & (maps <= 1))


@pytest.mark.parametrize("head", sorted(heads.HEADS))
def test_every_head_gives_a_heatmap(head):
    config = ModelConfig(backbone="baseline", weights="none", head=head, bilinear_dim=256)
    model = classifier.build_classifier(config, 3, SIZE)
    photos, _, _ = _quadrant_photos(2, seed=5)
    maps, chosen, probabilities = gradcam.gradcam(model, tf.constant(photos / 255.0, tf.float32))
    assert maps.shape == (2, SIZE // 16, SIZE // 16)
    assert np.isfinite(maps).all() and maps.max() <= 1.0
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(chosen, probabilities.argmax(axis=1))


class _Trained:
    """The parts of run_files.TrainedModel that gradcam reads."""

    def __init__(self, model, preprocess, image_size):
        from lmrec.config import ExperimentConfig

        self.model, self.preprocess, self.image_size = model, preprocess, image_size
        self.class_names = ["red square", "green square", "blue square"]
        self.config = ExperimentConfig()


def test_photos_on_disk_give_one_png_each_and_a_grid(quadrant_model, tmp_path):
    model, preprocess = quadrant_model
    photos, labels, _ = _quadrant_photos(3, seed=6)
    folder = tmp_path / "photos" / "nested"
    folder.mkdir(parents=True)
    for i, photo in enumerate(photos):
        Image.fromarray(photo).save(folder / f"photo {i}.png")
    (folder / "broken.jpg").write_bytes(b"not a photo")
    trained = _Trained(model, preprocess, SIZE)
    out = tmp_path / "out"
    result = gradcam.explain_photos(
        "", [str(tmp_path / "photos")], str(out), verbose=False, trained=trained
    )
    assert sorted(os.listdir(out)) == [
        "grid.png",
        "photo 0_gradcam.png",
        "photo 1_gradcam.png",
        "photo 2_gradcam.png",
    ]
    for name in os.listdir(out):
        with Image.open(out / name) as image:
            assert image.format == "PNG" and image.size[0] > 100
    assert [f["file"] for f in result.failures] == [str(folder / "broken.jpg")]
    named = [trained.class_names[label] for label in labels]
    assert [e.predicted_name for e in result.explanations] == named
    assert all(e.heatmap.shape == (SIZE, SIZE) for e in result.explanations)


def test_unknown_class_name_lists_the_classes(quadrant_model):
    model, preprocess = quadrant_model
    trained = _Trained(model, preprocess, SIZE)
    with pytest.raises(UserError, match="red square"):
        gradcam.explain_images(trained, np.zeros((1, SIZE, SIZE, 3)), ["x"], class_name="Eiffel")


def test_overlay_keeps_the_photo_and_adds_colour():
    photo = np.full((8, 8, 3), 100, np.uint8)
    heat = np.zeros((8, 8), np.float32)
    heat[:4] = 1.0
    blended = gradcam.overlay(photo, heat, alpha=0.5)
    assert blended.dtype == np.uint8 and blended.shape == photo.shape
    assert not np.array_equal(blended[0, 0], blended[7, 7])  # hot and cold colours differ


def test_cam_boxes_cover_the_hot_cells_with_a_margin_and_a_minimum_size():
    maps = np.zeros((3, 4, 4), np.float32)
    maps[0, 0, 0] = 1.0  # one hot cell in the top-left corner
    maps[1, 1:3, 1:4] = 0.8  # a hot band in the middle and right
    maps[1, 0, 0] = 0.3  # below half of the peak: not part of the region
    boxes = gradcam.cam_boxes(maps)
    np.testing.assert_allclose(boxes[0], [0.0, 0.0, 0.5, 0.5])
    np.testing.assert_allclose(boxes[1], [0.15, 0.15, 0.85, 1.0], atol=1e-6)
    np.testing.assert_allclose(boxes[2], [0.0, 0.0, 1.0, 1.0])  # an empty map: the whole photo


def test_cam_crop_zooms_in_on_the_deciding_object(quadrant_model):
    model, preprocess = quadrant_model
    photos, labels, quadrants = _quadrant_photos(24, seed=7)
    whole, cropped = gradcam.cam_crop_probabilities(
        model, tf.constant(photos, tf.float32), preprocess
    )
    np.testing.assert_allclose(
        whole, model.predict(preprocess(photos.astype(np.float32)), verbose=0), atol=1e-5
    )
    assert np.mean(cropped.argmax(axis=1) == labels) >= 0.8
    maps, _, _ = gradcam.gradcam(model, preprocess(tf.constant(photos, tf.float32)))
    boxes = gradcam.cam_boxes(maps)
    centres = np.stack([(boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2], 1)
    in_quadrant = (centres[:, 0] >= 0.5).astype(int) * 2 + (centres[:, 1] >= 0.5)
    assert np.mean(in_quadrant == quadrants) >= 0.75
