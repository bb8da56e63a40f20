"""Shared fixtures: a messy photo folder, real photos when present, small demo datasets."""

from __future__ import annotations

import io
import os
import pathlib
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

REPO = pathlib.Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"


def jpeg_bytes(seed: int, size=(64, 48), color=None) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    if color is not None:
        pixels[:] = color
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "JPEG", quality=90)
    return out.getvalue()


def encoded(image: Image.Image, fmt: str) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt)
    return out.getvalue()


def png_of(path: pathlib.Path, width: int, height: int, color_type: int = 6, rows: bool = True):
    """An all-zero PNG (colour type 6: RGBA, 0: grey) of any size, written row by row.

    rows=False writes the header alone: enough for whatever is refused before decoding.
    """

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    channels = {0: 1, 2: 3, 6: 4}[color_type]
    idat = bytearray()
    if rows:
        compressor = zlib.compressobj(6)
        row = b"\0" * (1 + channels * width)
        for _ in range(height):
            idat += compressor.compress(row)
        idat += compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", bytes(idat))
        + chunk(b"IEND", b"")
    )  # fmt: skip
    return path


@pytest.fixture
def messy_folder(tmp_path) -> dict:
    """A class-per-folder archive with every kind of bad file a user's folder holds.

    Returns {"root": path, "good": {relative path: class}, "bad": {relative path: reason word},
    "ignored": {relative path: reason word}}.
    """
    root = tmp_path / "photos"
    good: dict[str, str] = {}
    bad: dict[str, str] = {}
    ignored: dict[str, str] = {}

    def put(relative: str, data: bytes):
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)

    picture = Image.fromarray(np.random.default_rng(1).integers(0, 255, (40, 50, 3), np.uint8))
    for i in range(4):
        put(f"Eiffel Tower/IMG_{i:04d}.jpg", jpeg_bytes(i))
        good[f"Eiffel Tower/IMG_{i:04d}.jpg"] = "Eiffel Tower"
    put("Eiffel Tower/2019/summer/DSC 8188.JPG", jpeg_bytes(10))
    good["Eiffel Tower/2019/summer/DSC 8188.JPG"] = "Eiffel Tower"
    put("Eiffel Tower/webp named as.jpg", encoded(picture, "WEBP"))
    good["Eiffel Tower/webp named as.jpg"] = "Eiffel Tower"
    for i in range(3):
        put(f"Vịnh Hạ Long/ảnh {i}.jpeg", jpeg_bytes(20 + i))
        good[f"Vịnh Hạ Long/ảnh {i}.jpeg"] = "Vịnh Hạ Long"
    put("Vịnh Hạ Long/panorama.PNG", encoded(picture.convert("RGBA"), "PNG"))
    good["Vịnh Hạ Long/panorama.PNG"] = "Vịnh Hạ Long"
    put("Vịnh Hạ Long/old.bmp", encoded(picture, "BMP"))
    good["Vịnh Hạ Long/old.bmp"] = "Vịnh Hạ Long"
    put("Vịnh Hạ Long/anim.gif", encoded(picture.convert("P"), "GIF"))
    good["Vịnh Hạ Long/anim.gif"] = "Vịnh Hạ Long"

    put("Eiffel Tower/empty.jpg", b"")
    bad["Eiffel Tower/empty.jpg"] = "empty"
    put("Eiffel Tower/notes.jpg", b"this is a text file, not a photo\n" * 10)
    bad["Eiffel Tower/notes.jpg"] = "not an image"
    whole = jpeg_bytes(30, size=(200, 150))
    put("Vịnh Hạ Long/truncated.jpg", whole[: len(whole) // 2])
    bad["Vịnh Hạ Long/truncated.jpg"] = "truncated"
    corrupt = bytearray(jpeg_bytes(31, size=(200, 150)))
    corrupt[200:] = bytes(len(corrupt) - 200)  # header kept, scan data zeroed
    put("Vịnh Hạ Long/corrupt.jpg", bytes(corrupt))
    bad["Vịnh Hạ Long/corrupt.jpg"] = ""

    put("Eiffel Tower/readme.txt", b"hello")
    ignored["Eiffel Tower/readme.txt"] = "extension"
    put("Eiffel Tower/.DS_Store", b"\0\0")
    ignored["Eiffel Tower/.DS_Store"] = "hidden"
    put("loose photo.jpg", jpeg_bytes(40))
    ignored["loose photo.jpg"] = "class subfolder"
    (root / "Empty Class").mkdir()
    return {"root": str(root), "good": good, "bad": bad, "ignored": ignored}


@pytest.fixture(scope="session")
def vn_landmarks() -> pathlib.Path:
    path = SHARED_DATA / "vn_landmarks"
    if not path.is_dir():
        pytest.skip(f"real photos not present at {path} (see ../shared/data/README.md)")
    return path


def small_demo_config(tmp_dir: str, **train_overrides):
    """configs/baseline_demo.cfg shrunk for tests: fewer, smaller images and short training.

    The baseline CNN from scratch: fast at any size and free of pretrained weights.
    """
    from lmrec import config

    overrides = [
        f"--output_dir={tmp_dir}/tf_records",
        f"--data_dir={tmp_dir}/tf_records/demo",
        f"--model_dir={tmp_dir}/runs/demo",
        f"--export_dir={tmp_dir}/export",
    ]
    overrides += [f"--{key}={value}" for key, value in train_overrides.items()]
    return config.experiment_from_flagfile(str(REPO / "configs" / "baseline_demo.cfg"), *overrides)


# Settings of a run that tests training mechanics, not accuracy: the baseline CNN (the
# baseline_demo config's) at 32 px, no evaluation, export or TensorBoard photos afterwards.
TINY_RUN = dict(
    image_size=32,
    batch_size=16,
    evaluate_after=False,
    export_after=False,
    tensorboard_images=0,
)


def tiny_run_config(tmp_dir: str, demo_records: str, **overrides):
    """small_demo_config with TINY_RUN on the prepared demo_records."""
    return small_demo_config(tmp_dir, **{**TINY_RUN, "data_dir": demo_records, **overrides})


@pytest.fixture(scope="session")
def demo_records(tmp_path_factory) -> str:
    """A small prepared demo dataset (8 classes x 24 images, 64 px)."""
    from lmrec.config import PrepareConfig
    from lmrec.data import prepare

    out = tmp_path_factory.mktemp("demo_records")
    result = prepare.prepare(
        PrepareConfig.build(
            source="demo",
            output_dir=str(out),
            name="demo",
            demo_images_per_class=24,
            demo_image_size=64,
            images_per_shard=50,
        ),
        verbose=False,
    )
    return result.data_dir


@pytest.fixture(scope="session")
def env_for_subprocess() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


@pytest.fixture(scope="session")
def trained_demo(tmp_path_factory):
    """configs/baseline_demo.cfg shrunk to ~40 s: 80 images per class, 64 px, 1 + 10 epochs."""
    root = tmp_path_factory.mktemp("demo_run")
    experiment = small_demo_config(
        str(root),
        demo_images_per_class=80,
        demo_image_size=80,
        image_size=64,
        epochs_frozen=1,
        epochs_finetune=10,
        batch_size=32,
    )
    from lmrec.train import train_and_evaluate

    return train_and_evaluate(experiment, verbose=False)
