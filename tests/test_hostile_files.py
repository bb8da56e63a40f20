"""Files that are not plain photos cost one failed row each, never the run.

A TIFF named .jpg, a FIFO, a sparse 600 MB file, a folder that cannot be listed
and PNG decompression bombs, each through lmrec.data.images, photo_archive.scan
and predict's decoding stage: each must fail with a reason that says what it is,
quickly, and the photos beside them must still decode. The decode memory budget
is measured in a subprocess (ru_maxrss) with eight bomb-ish PNGs at once.
"""

from __future__ import annotations

import io
import json
import os
import pathlib
import shutil
import subprocess
import sys
import threading
import time
import warnings

import numpy as np
import pytest
from PIL import Image

from lmrec import photo_archive
from lmrec.data import images
from tests.conftest import png_of

# Root reads any folder; without these capabilities (setpriv, util-linux) it cannot.
SETPRIV = shutil.which("setpriv")
AS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
NO_READ_OVERRIDE = [SETPRIV, "--bounding-set=-dac_override,-dac_read_search"] if AS_ROOT else []
needs_unreadable_folders = pytest.mark.skipif(
    AS_ROOT and not SETPRIV, reason="root needs setpriv to have a folder it cannot read"
)
MEMORY_ALLOWANCE = 1 << 30  # what decoding eight bombs at once may add to the baseline


def _photo(seed: int = 0, size: tuple[int, int] = (96, 64)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))


def _bytes(image: Image.Image, fmt: str, **options) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **options)
    return out.getvalue()


def _within(seconds: float, function, *args):
    """function(*args) in a daemon thread; the test fails if it is still running after seconds."""
    outcome: dict = {}

    def run():
        try:
            outcome["value"] = function(*args)
        except BaseException as error:  # noqa: BLE001 - handed to the test below.
            outcome["error"] = error

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"{function.__name__} still running after {seconds} s"
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def _reason(function, *args) -> str:
    with pytest.raises(images.BadImage) as caught:
        _within(10, function, *args)
    return str(caught.value)


@pytest.fixture
def hostile(tmp_path) -> dict[str, pathlib.Path]:
    """One folder holding a good photo and one file of each hostile kind, by kind."""
    root = tmp_path / "card"
    root.mkdir()
    files = {"good": root / "good.jpg", "tiff": root / "tiff named.jpg", "fifo": root / "pipe.jpg"}
    files["good"].write_bytes(_bytes(_photo(), "JPEG"))
    files["tiff"].write_bytes(_bytes(_photo(1), "TIFF"))
    os.mkfifo(files["fifo"])
    files["sparse"] = root / "huge sparse.jpg"
    with open(files["sparse"], "wb") as f:
        f.truncate(600 << 20)
    files["bomb"] = png_of(root / "bomb.png", 9000, 9000)  # 81 MP RGBA in about 320 KB
    files["giant"] = png_of(root / "giant.png", 12000, 10000, color_type=0, rows=False)
    return files


def test_a_tiff_named_jpg_is_refused_as_tiff_without_being_parsed(hostile):
    data = hostile["tiff"].read_bytes()
    for decode in (images.decode, images.convert, lambda d: images.square_pixels(d, 32)):
        reason = _reason(decode, data)
        assert reason.startswith("TIFF data: not a format lmrec reads (JPEG, MPO, PNG"), reason
    assert "not an image" in _reason(images.decode, b"plain text, no magic\n" * 9)


def test_a_fifo_is_refused_at_once_even_when_it_replaces_a_file_after_stat(
    hostile, tmp_path, monkeypatch
):
    assert _reason(images.read_file, str(hostile["fifo"])) == "not a regular file (FIFO)"
    assert _reason(images.read_file, str(tmp_path)) == "not a regular file (folder)"
    # The path was a regular file when stat looked, a FIFO when open came: fstat catches it.
    regular = os.stat(hostile["good"])
    real_stat = os.stat
    monkeypatch.setattr(
        images.os, "stat", lambda path, *a, **k: regular if path == str(hostile["fifo"])
        else real_stat(path, *a, **k)
    )  # fmt: skip
    assert _reason(images.read_file, str(hostile["fifo"])) == "not a regular file (FIFO)"


def test_a_sparse_600_mb_file_is_refused_from_its_size_unread(hostile, tmp_path):
    started = time.perf_counter()
    reason = _reason(images.read_file, str(hostile["sparse"]))
    assert time.perf_counter() - started < 1.0
    assert reason == "file too large: 600 MB, over the limit of 128 MB (--max_file_mb)"
    small = images.Limits(max_file_bytes=1000)
    exact = tmp_path / "exact.jpg"
    exact.write_bytes(b"x" * 1000)
    assert len(images.read_file(str(exact), small)) == 1000
    exact.write_bytes(b"x" * 1001)
    assert "file too large" in _reason(images.read_file, str(exact), small)


def test_decompression_bombs_are_refused_from_the_header(hostile):
    started = time.perf_counter()
    reason = _reason(images.decode, hostile["giant"].read_bytes())
    assert time.perf_counter() - started < 1.0  # header only: no pixel decoded
    assert reason == (
        "too many pixels: 12000x10000 is 120 megapixels, over the limit of 100 (--max_megapixels)"
    )
    reason = _reason(images.square_pixels, hostile["bomb"].read_bytes(), 224)
    assert reason.startswith("too many pixels to decode: 9000x9000 RGBA needs about 9")
    assert reason.endswith("MB, more than the 512 MB decode memory budget (--decode_memory_mb)")


def test_pillows_own_bomb_check_plays_no_part_whatever_the_warning_filters(tmp_path):
    """95 MP sits where Pillow only warns, 180 MP where it raises: lmrec's limits decide."""
    warn_band = png_of(tmp_path / "95mp.png", 10000, 9500, color_type=0, rows=False).read_bytes()
    error_band = png_of(tmp_path / "180mp.png", 18000, 10000, color_type=0, rows=False)
    tiny_budget = images.Limits(max_pixels=200_000_000, budget=images.DecodeBudget(1 << 20))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a DecompressionBombWarning would now raise
        for data in (warn_band, error_band.read_bytes()):
            assert "decode memory budget" in _reason(images.decode, data, "x", 0, 0, tiny_budget)
        assert "--max_megapixels" in _reason(images.decode, error_band.read_bytes())


def test_a_jpeg_is_limited_by_the_pixels_it_decodes_after_dct_scaling():
    data = _bytes(_photo(2, (2000, 1500)), "JPEG", quality=80)  # 3 MP
    one_megapixel = images.Limits(max_pixels=1_000_000)
    assert "3 megapixels" in _reason(images.decode, data, "x", 0, 0, one_megapixel)
    square = images.square_pixels(data, 224, limits=one_megapixel)  # decoded at 1/4: 0.2 MP
    assert square.shape == (224, 224, 3)


def test_any_exception_inside_decoding_becomes_a_bad_image(monkeypatch):
    data = _bytes(_photo().convert("L"), "PNG")  # decoding converts it to RGB

    def explode(self, *args, **kwargs):
        raise TypeError("unsupported operand type(s) for +: 'NoneType' and 'int'")

    monkeypatch.setattr(Image.Image, "resize", explode)
    reason = _reason(images.square_pixels, data, 32)
    assert (
        reason
        == "corrupt image (TypeError: unsupported operand type(s) for +: 'NoneType' and 'int')"
    )
    monkeypatch.setattr(
        Image.Image, "convert", lambda *a, **k: (_ for _ in ()).throw(MemoryError())
    )
    assert _reason(images.decode, data).startswith("out of memory while decoding")
    assert images.DEFAULT_LIMITS.budget.used_bytes == 0  # every reservation was given back


def test_the_decode_budget_makes_photos_take_turns_in_arrival_order():
    budget = images.DecodeBudget(100)
    assert "more than the 1 MB decode memory budget" in _reason(budget.reserve(101, "x").__enter__)
    order: list[str] = []
    first = budget.reserve(60, "first")
    first.__enter__()

    def take(name: str, nbytes: int):
        with budget.reserve(nbytes, name):
            order.append(name)
            time.sleep(0.05)

    big = threading.Thread(target=take, args=("big", 90))
    big.start()
    time.sleep(0.1)  # big waits for first; small arrives after it and must not overtake
    small = threading.Thread(target=take, args=("small", 10))
    small.start()
    time.sleep(0.1)
    assert order == [] and budget.used_bytes == 60
    first.__exit__(None, None, None)
    big.join(5)
    small.join(5)
    assert order == ["big", "small"] and budget.used_bytes == 0


def test_scan_and_predicts_decoding_turn_each_hostile_file_into_one_failure(hostile):
    from lmrec import predict

    scan = photo_archive.scan([str(hostile["good"].parent)])
    assert sorted(scan.photos) == sorted(str(path) for path in hostile.values())
    assert scan.failures == []
    outcomes = dict(_within(60, lambda: list(predict._prepared(scan.photos, 32))))
    assert outcomes.pop(str(hostile["good"])).pixels.shape == (32, 32, 3)
    reasons = {kind: outcomes[str(path)] for kind, path in hostile.items() if kind != "good"}
    assert reasons["tiff"].startswith("TIFF data")
    assert reasons["fifo"] == "not a regular file (FIFO)"
    assert reasons["sparse"].startswith("file too large: 600 MB")
    assert "decode memory budget" in reasons["bomb"]
    assert "--max_megapixels" in reasons["giant"]
    # A FIFO named on the command line is read (and refused) like any named file.
    assert photo_archive.scan([str(hostile["fifo"])]).photos == [str(hostile["fifo"])]


def test_predicts_decoding_turns_any_exception_into_that_files_reason(monkeypatch, hostile):
    from lmrec import predict

    def broken(*args, **kwargs):
        raise RuntimeError("a bug, not a bad file")

    monkeypatch.setattr(images, "square_pixels", broken)
    [(path, reason)] = list(predict._prepared([str(hostile["good"])], 32))
    assert reason == "unexpected error (RuntimeError: a bug, not a bad file)"


SCAN_UNREADABLE = """
import json, sys
from lmrec import photo_archive
scan = photo_archive.scan(sys.argv[1:])
print(json.dumps({"photos": scan.photos, "failures": scan.failures}))
"""


def _unprivileged(code: str, *args: str, env: dict) -> dict:
    """Runs python code as this user without root's right to read any folder; its JSON line."""
    command = [*NO_READ_OVERRIDE, sys.executable, "-c", code, *args]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture
def locked_archive(tmp_path):
    """root/open/a.jpg, and root/locked/b.jpg in a folder nobody may list (mode 000)."""
    root = tmp_path / "archive"
    for folder, name in (("open", "a.jpg"), ("locked", "b.jpg")):
        (root / folder).mkdir(parents=True)
        _photo(len(name)).save(root / folder / name, "JPEG")
    (root / "locked").chmod(0)
    yield root
    (root / "locked").chmod(0o755)


@needs_unreadable_folders
def test_scan_reports_a_folder_it_cannot_list(locked_archive, env_for_subprocess):
    found = _unprivileged(SCAN_UNREADABLE, str(locked_archive), env=env_for_subprocess)
    assert found["photos"] == [str(locked_archive / "open" / "a.jpg")]
    assert found["failures"] == [
        {"file": str(locked_archive / "locked"), "reason": "unreadable folder (Permission denied)"}
    ]
    # A named folder that cannot be listed is a failure too, not "no such file".
    found = _unprivileged(SCAN_UNREADABLE, str(locked_archive / "locked"), env=env_for_subprocess)
    assert [failure["file"] for failure in found["failures"]] == [str(locked_archive / "locked")]


PREDICT_THREE_TIMES = """
import csv, json, os, sys
import numpy as np
from absl import flags
from lmrec import flags as lmrec_flags
from lmrec import predict
lmrec_flags.define("predict")  # the flags main reads

root, output = sys.argv[1:3]
fake = predict.Tagger(
    class_names=["arch", "tower"], image_size=32, description="fake model",
    serve=lambda images: {"probabilities": np.tile(np.float32([[0.9, 0.1]]), (len(images), 1))},
)
predict.load_tagger = lambda model, engine="auto", classifier=None: fake
flags.FLAGS(["lmrec.predict", "--model=fake", f"--output={output}"])
runs = []
for run in range(3):
    if run == 2:
        os.chmod(os.path.join(root, "locked"), 0o755)  # readable again for the last run
    status = predict.main(["lmrec.predict", root])
    with open(output, encoding="utf-8", newline="") as f:
        listed = [(record["file"], record["error"]) for record in csv.DictReader(f)]
    runs.append({"status": status, "listed": listed})
print(json.dumps(runs))
"""


@needs_unreadable_folders
def test_predict_lists_an_unreadable_folder_as_failed_on_every_run_until_it_is_readable(
    locked_archive, tmp_path, env_for_subprocess
):
    output = tmp_path / "tags.csv"
    runs = _unprivileged(
        PREDICT_THREE_TIMES, str(locked_archive), str(output), env=env_for_subprocess
    )
    locked, a, b = (str(locked_archive / p) for p in ("locked", "open/a.jpg", "locked/b.jpg"))
    for run in runs[:2]:  # the second run resumes the output of the first
        assert run["status"] == 1
        assert run["listed"] == [[a, ""], [locked, "unreadable folder (Permission denied)"]]
    assert runs[2]["status"] == 0
    assert runs[2]["listed"] == [[b, ""], [a, ""]]  # in walk order: locked/ before open/


MEASURE_PREPARED = """
import json, resource, sys
from lmrec import predict
from lmrec.data import images

warm_up, *paths = sys.argv[1:]
list(predict._prepared([warm_up], 224))  # libraries loaded and threads started once
baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
outcomes = dict(predict._prepared(paths, 224))
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
failed = sorted(path for path, value in outcomes.items() if isinstance(value, str))
print(json.dumps({"baseline": baseline, "peak": peak, "decoded": len(outcomes), "failed": failed}))
"""


def test_eight_bombs_decoding_at_once_stay_within_the_memory_budget(tmp_path, env_for_subprocess):
    """Six 20 MP RGBA PNGs (about 250 MB each to flatten) and two 81 MP ones (refused).

    Without the budget the eight threads take about 1.9 GB at once; with predict's
    default, two of the 20 MP ones decode together (about 0.5 GB) and the 81 MP
    ones fail from their estimate.
    """
    template = png_of(tmp_path / "bomb 0.png", 4500, 4500)
    paths = [str(template)]
    for i in range(1, 6):
        paths.append(str(shutil.copyfile(template, tmp_path / f"bomb {i}.png")))
    paths += [str(png_of(tmp_path / f"huge {i}.png", 9000, 9000)) for i in range(2)]
    warm_up = str(png_of(tmp_path / "tiny.png", 8, 8))
    command = [sys.executable, "-c", MEASURE_PREPARED, warm_up, *paths]
    started = time.perf_counter()
    done = subprocess.run(
        command, env=env_for_subprocess, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    measured = json.loads(done.stdout.strip().splitlines()[-1])
    baseline, peak = measured["baseline"], measured["peak"]
    print(f"decode stage: baseline {baseline >> 20} MB, peak {peak >> 20} MB, "
          f"{time.perf_counter() - started:.1f} s")  # fmt: skip
    assert measured["decoded"] == 8 and measured["failed"] == paths[6:]
    assert peak - baseline < MEMORY_ALLOWANCE
