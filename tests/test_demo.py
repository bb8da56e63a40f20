"""lmrec.data.sources.demo: deterministic, valid JPEGs, correct labels, shape-based classes."""

from __future__ import annotations

import ast
import hashlib
import io
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from lmrec.config import PrepareConfig
from lmrec.data.sources import demo, get_source
from lmrec.errors import UserError

SIZE = 48  # small images keep the suite fast


def _decode(encoded: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(encoded))
    image.load()
    return image


def _pixels(label: int, index: int, size: int = SIZE, seed: int = 0) -> np.ndarray:
    return np.asarray(demo.render(label, index, image_size=size, seed=seed), dtype=np.float32)


def test_class_names_are_eight_distinct_snake_case_names():
    assert len(demo.CLASS_NAMES) == 8
    assert len(set(demo.CLASS_NAMES)) == 8
    for name in demo.CLASS_NAMES:
        assert re.fullmatch(r"[a-z]+(_[a-z]+)*", name), name
    assert set(demo._DRAWERS) == set(demo.CLASS_NAMES)


def test_render_returns_rgb_image_of_requested_size():
    for size in (32, 57, 96):
        image = demo.render(3, 0, image_size=size)
        assert image.mode == "RGB"
        assert image.size == (size, size)


def test_same_arguments_give_identical_bytes():
    first = demo.make_image(4, 7, image_size=SIZE, seed=5)
    second = demo.make_image(4, 7, image_size=SIZE, seed=5)
    assert first == second
    assert first.encoded == second.encoded


def test_any_argument_change_gives_different_bytes():
    base = demo.make_image(2, 3, image_size=SIZE, seed=0).encoded
    assert demo.make_image(2, 4, image_size=SIZE, seed=0).encoded != base
    assert demo.make_image(2, 3, image_size=SIZE, seed=1).encoded != base
    assert demo.make_image(5, 3, image_size=SIZE, seed=0).encoded != base
    assert demo.make_image(2, 3, image_size=SIZE + 8, seed=0).encoded != base


def test_images_are_not_all_alike_within_a_class():
    images = [_pixels(1, i) for i in range(6)]
    diffs = [np.abs(a - b).mean() for a in images for b in images if a is not b]
    assert min(diffs) > 5.0


def test_bytes_are_a_valid_jpeg_of_requested_size():
    item = demo.make_image(6, 0, image_size=64)
    assert item.encoded[:3] == b"\xff\xd8\xff"
    image = _decode(item.encoded)
    assert image.format == "JPEG"
    assert image.mode == "RGB"
    assert image.size == (64, 64)
    # The JPEG is a faithful encoding of render()'s pixels (quality 90).
    original = np.asarray(demo.render(6, 0, image_size=64), dtype=np.float32)
    assert np.abs(np.asarray(image, dtype=np.float32) - original).mean() < 6.0


def test_generate_yields_interleaved_items_with_correct_labels_and_ids():
    items = list(demo.generate(images_per_class=3, image_size=SIZE, seed=2, num_classes=5))
    assert len(items) == 3 * 5
    for position, item in enumerate(items):
        index, label = divmod(position, 5)
        assert isinstance(item, demo.DemoImage)
        assert item.label == label
        assert item.class_name == demo.CLASS_NAMES[label]
        assert item.image_id == f"demo_{demo.CLASS_NAMES[label]}_{index:05d}"
        assert _decode(item.encoded).size == (SIZE, SIZE)
    assert len({item.image_id for item in items}) == len(items)
    assert len({item.encoded for item in items}) == len(items)


def test_each_image_can_be_regenerated_on_its_own():
    items = list(demo.generate(images_per_class=2, image_size=SIZE, seed=9))
    for item in (items[0], items[5], items[-1]):
        index = int(item.image_id.rsplit("_", 1)[1])
        alone = demo.make_image(item.label, index, image_size=SIZE, seed=9)
        assert alone == item


def test_output_is_identical_in_a_fresh_process():
    here = hashlib.sha256(demo.make_image(3, 11, image_size=SIZE, seed=4).encoded).hexdigest()
    code = (
        "import hashlib; from lmrec.data.sources import demo; "
        f"print(hashlib.sha256(demo.make_image(3, 11, image_size={SIZE}, seed=4).encoded)"
        ".hexdigest())"
    )
    root = pathlib.Path(__file__).resolve().parent.parent
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == here


def test_image_size_changes_resolution_not_scene():
    small = _pixels(0, 1, size=48)
    large = np.asarray(
        demo.render(0, 1, image_size=96).resize((48, 48), Image.LANCZOS), dtype=np.float32
    )
    other = _pixels(0, 2, size=48)
    assert np.abs(small - large).mean() < 0.5 * np.abs(small - other).mean()


def test_generate_with_zero_images_yields_nothing():
    assert list(demo.generate(images_per_class=0, image_size=SIZE)) == []


def test_classes_differ_in_mean_image():
    """A weak sanity check that class, not just noise, shapes the pictures."""
    n = 24
    means = np.stack(
        [np.mean([_pixels(label, i, size=32) for i in range(n)], axis=0) for label in range(8)]
    )
    grey = means.mean(axis=-1)
    for a in range(8):
        for b in range(a + 1, 8):
            assert np.abs(grey[a] - grey[b]).mean() > 1.0, (
                demo.CLASS_NAMES[a],
                demo.CLASS_NAMES[b],
            )


def test_module_does_not_import_tensorflow():
    tree = ast.parse(pathlib.Path(demo.__file__).read_text(encoding="utf-8"))
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert not imported & {"tensorflow", "keras", "tf_keras"}


@pytest.mark.parametrize(
    ("call", "argument"),
    [
        (lambda: demo.generate(images_per_class=-1), "images_per_class"),
        (lambda: demo.generate(image_size=31), "image_size"),
        (lambda: demo.generate(num_classes=len(demo.CLASS_NAMES) + 1), "num_classes"),
        (lambda: demo.generate(num_classes=0), "num_classes"),
        (lambda: demo.generate(seed=-1), "seed"),
        (lambda: demo.generate(images_per_class=2.5), "images_per_class"),
        (lambda: demo.render(len(demo.CLASS_NAMES), 0), "label"),
        (lambda: demo.render(-1, 0), "label"),
        (lambda: demo.render(0, -1), "index"),
        (lambda: demo.render(0, 0, image_size=16), "image_size"),
        (lambda: demo.render(0, 0, seed=-3), "seed"),
        (lambda: demo.make_image(0, 0, image_size=0), "image_size"),
    ],
)
def test_invalid_arguments_raise_value_error_naming_the_argument(call, argument):
    # generate() validates on the call itself, before any iteration.
    with pytest.raises(ValueError, match=rf"\b{argument}\b"):
        call()


def test_source_offers_every_class_lazily_with_matching_bytes():
    config = PrepareConfig.build(source="demo", demo_images_per_class=2, demo_image_size=40, seed=3)
    source = get_source(config)
    assert source.name == "demo"
    assert source.class_names == list(demo.CLASS_NAMES)
    items = list(source.items())
    assert len(items) == 2 * len(demo.CLASS_NAMES)
    expected = list(demo.generate(images_per_class=2, image_size=40, seed=3))
    assert [item.image_id for item in items] == [e.image_id for e in expected]
    assert [item.class_name for item in items] == [e.class_name for e in expected]
    assert items[9].read() == expected[9].encoded


@pytest.mark.parametrize(
    ("overrides", "flag"),
    [
        ({"demo_images_per_class": 0}, "--demo_images_per_class"),
        ({"demo_image_size": 8}, "--demo_image_size"),
        ({"seed": -1}, "--seed"),
    ],
)
def test_source_rejects_bad_flags(overrides, flag):
    config = PrepareConfig.build(source="demo", **overrides)
    with pytest.raises(UserError, match=flag):
        get_source(config)
