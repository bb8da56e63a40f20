"""predict over an archive of hostile files, as a user runs it: the CLI, twice, then afresh.

Every kind of file that stopped, hung or silently dropped photos from a run sits
in one folder: a TIFF named .jpg, a FIFO, a sparse 600 MB file, a folder the
process cannot read, PNG decompression bombs, a sidecar in an XML default
namespace, and the usual empty, truncated and not-an-image files. The command
must finish, exit 1, list every file (tagged, failed or ignored, with a reason),
behave the same when started again, and add at most about 1 GB of memory to
what the process holds once TensorFlow and lmrec are loaded.
"""

from __future__ import annotations

import csv
import io
import json
import os
import pathlib
import shutil
import subprocess
import sys

import pytest
from PIL import Image

from lmrec import xmp
from lmrec.data.sources import demo, folders
from tests.conftest import png_of

# Runs commands: left out by `pytest -m "not slow"`.
pytestmark = pytest.mark.slow

# A folder only root can read; setpriv drops the capabilities that let root read it anyway.
SETPRIV = shutil.which("setpriv")
NO_READ_OVERRIDE = [SETPRIV, "--bounding-set=-dac_override,-dac_read_search"] if SETPRIV else []
MEMORY_ALLOWANCE_KB = 1024 * 1024  # about 1 GB over the loaded process

# Runs a stage's CLI (argv[1]) and prints the resident memory (KiB) once its modules and
# TensorFlow are loaded, then the process's peak at exit: the difference is what the run's
# work cost.
STAGE_WITH_PEAK_MEMORY = """
import atexit, importlib, resource, runpy, sys

def peak_kb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

stage = sys.argv[1]
importlib.import_module(stage)
importlib.import_module("tensorflow")  # prepare loads it only when it writes shards
print("BASELINE_RSS_KB", peak_kb(), file=sys.stderr)
atexit.register(lambda: print("PEAK_RSS_KB", peak_kb(), file=sys.stderr))
sys.argv = [stage, *sys.argv[2:]]
runpy.run_module(stage, run_name="__main__")
"""

DEFAULT_NAMESPACE_SIDECAR = """<?xml version="1.0" encoding="UTF-8"?>
<x:xmpmeta xmlns:x="adobe:ns:meta/">
 <RDF xmlns="http://www.w3.org/1999/02/22-rdf-syntax-ns#">
  <Description xmlns:xmp="http://ns.adobe.com/xap/1.0/" xmp:Rating="4">
   <subject xmlns="http://purl.org/dc/elements/1.1/">
    <Bag xmlns="http://www.w3.org/1999/02/22-rdf-syntax-ns#"><li>Family trip</li></Bag>
   </subject>
  </Description>
 </RDF>
</x:xmpmeta>
"""


def _photo(index: int) -> Image.Image:
    return Image.open(io.BytesIO(demo.make_image(index % 8, 700 + index, 96).encoded))


def _good_photos(root: pathlib.Path, count: int = 6) -> list[str]:
    """count photos in each of two class folders, good/ and more good/."""
    names = []
    for i in range(2 * count):
        relative = f"{'good' if i < count else 'more good'}/IMG_{i:04d}.jpg"
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        _photo(i).save(root / relative, "JPEG", quality=90)
        names.append(relative)
    return names


@pytest.fixture(scope="module")
def hostile_archive(tmp_path_factory) -> dict:
    """The archive, and what must become of each file: tagged, failed or ignored."""
    root = tmp_path_factory.mktemp("hostile") / "Card 2024"
    expect = {name: "tagged" for name in _good_photos(root)}

    def put(relative: str, data: bytes, outcome: str) -> pathlib.Path:
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        expect[relative] = outcome
        return path

    tiff = io.BytesIO()
    _photo(1).save(tiff, "TIFF")
    put("odd/tiff named.jpg", tiff.getvalue(), "failed")
    os.mkfifo(root / "odd" / "pipe.jpg")
    expect["odd/pipe.jpg"] = "failed"
    with open(root / "odd" / "huge sparse.jpg", "wb") as f:
        f.truncate(600 << 20)
    expect["odd/huge sparse.jpg"] = "failed"
    png_of(root / "odd" / "bomb 0.png", 9000, 9000)  # 81 MP in about 320 KB
    for i in range(4):
        if i:
            shutil.copyfile(root / "odd" / "bomb 0.png", root / "odd" / f"bomb {i}.png")
        expect[f"odd/bomb {i}.png"] = "failed"
    put("odd/empty.jpg", b"", "failed")
    whole = demo.make_image(2, 800, 160).encoded
    put("odd/truncated.jpg", whole[: len(whole) // 3], "failed")
    put("odd/notes.jpg", b"not a photo at all\n" * 50, "failed")
    put("odd/readme.txt", b"hello", "ignored")
    put("odd/DSC_0009.NEF", b"II*\0 raw without a jpeg", "ignored")
    locked = root / "locked folder"
    locked.mkdir()
    _photo(3).save(locked / "IMG_9999.jpg", "JPEG")
    locked.chmod(0)
    expect["locked folder"] = "failed"  # the folder itself: its photos cannot be listed
    (root / "good" / "IMG_0000.xmp").write_text(DEFAULT_NAMESPACE_SIDECAR, encoding="utf-8")
    yield {"root": root, "expect": expect}
    locked.chmod(0o755)


def _run_stage(stage: str, env, *flags: str) -> tuple[subprocess.CompletedProcess, int]:
    """Runs python -m <stage> without root's read override; (result, KiB its work added)."""
    command = [*NO_READ_OVERRIDE, sys.executable, "-c", STAGE_WITH_PEAK_MEMORY, stage, *flags]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    memory = {
        line.split()[0]: int(line.split()[1])
        for line in done.stderr.splitlines()
        if line.startswith(("BASELINE_RSS_KB", "PEAK_RSS_KB"))
    }
    assert len(memory) == 2, done.stderr[-3000:]
    return done, memory["PEAK_RSS_KB"] - memory["BASELINE_RSS_KB"]


def _run_predict(model_dir: str, output: pathlib.Path, root: pathlib.Path, env):
    flags = [f"--model={model_dir}", f"--output={output}", "--xmp", str(root)]
    return _run_stage("lmrec.predict", env, *flags)


def _outcomes(output: pathlib.Path, root: pathlib.Path) -> dict[str, tuple[str, str]]:
    """relative path -> (tagged | failed | ignored, label or reason)."""
    with open(output, encoding="utf-8", newline="") as f:
        records = list(csv.DictReader(f))
    found = {}
    for record in records:
        relative = os.path.relpath(record["file"], root)
        assert relative not in found, f"{relative} listed twice"
        if record["error"].startswith("ignored: "):
            found[relative] = ("ignored", record["error"])
        elif record["error"]:
            found[relative] = ("failed", record["error"])
        else:
            found[relative] = ("tagged", record["label"])
    return found


@pytest.mark.skipif(not SETPRIV, reason="setpriv (util-linux) is needed to make a folder "
                    "unreadable to a root process")  # fmt: skip
def test_predict_survives_a_hostile_archive_and_a_second_run_behaves_the_same(
    trained_demo, hostile_archive, tmp_path, env_for_subprocess
):
    root, expect = hostile_archive["root"], hostile_archive["expect"]
    output = tmp_path / "tags.csv"
    runs = []
    for _ in range(2):  # the same command twice: the second resumes the same output
        done, added = _run_predict(trained_demo.model_dir, output, root, env_for_subprocess)
        assert done.returncode == 1, done.stderr[-3000:]
        assert "Traceback" not in done.stderr, done.stderr[-3000:]
        assert added < MEMORY_ALLOWANCE_KB, added
        runs.append(_outcomes(output, root))

    first, second = runs
    assert {k: v[0] for k, v in first.items()} == expect
    assert second == first
    reasons = {k: v[1].lower() for k, v in first.items()}
    assert "tiff" in reasons["odd/tiff named.jpg"]
    assert "regular file" in reasons["odd/pipe.jpg"]
    assert "mb" in reasons["odd/huge sparse.jpg"]
    assert all("pixel" in reasons[f"odd/bomb {i}.png"] for i in range(4))
    assert "unreadable folder" in reasons["locked folder"]
    assert "truncated" in reasons["odd/truncated.jpg"]

    sidecar = root / "good" / "IMG_0000.xmp"
    label = first["good/IMG_0000.jpg"][1]
    assert xmp.keywords(str(sidecar)) == ["Family trip", label]
    again = tmp_path / "afresh.csv"  # a new output tags (and rewrites every sidecar) again
    done, _ = _run_predict(trained_demo.model_dir, again, root, env_for_subprocess)
    assert done.returncode == 1 and "sidecar not written" not in done.stderr, done.stderr[-3000:]
    assert _outcomes(again, root) == first
    assert xmp.keywords(str(sidecar)) == ["Family trip", label]
    assert 'Rating="4"' in sidecar.read_text(encoding="utf-8")


def _run_prepare(root: pathlib.Path, output_dir: pathlib.Path, env, *extra: str) -> int:
    """Prepares root as class folders in this one process; the KiB its work added."""
    done, added = _run_stage(
        "lmrec.prepare", env, "--source=folder", f"--input_dir={root}",
        f"--output_dir={output_dir}", "--name=trip", "--val_fraction=0.25", "--num_workers=1",
        *extra,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return added


@pytest.mark.skipif(not SETPRIV, reason="setpriv (util-linux) is needed to make a folder "
                    "unreadable to a root process")  # fmt: skip
def test_prepare_accounts_for_every_hostile_file_and_reruns_the_same(
    hostile_archive, tmp_path, env_for_subprocess
):
    root, expect = hostile_archive["root"], hostile_archive["expect"]
    skipped_per_run = []
    for extra in ([], ["--overwrite"]):
        added = _run_prepare(root, tmp_path / "out", env_for_subprocess, *extra)
        assert added < MEMORY_ALLOWANCE_KB, added
        with open(tmp_path / "out" / "trip" / "stats.json", encoding="utf-8") as f:
            stats = json.load(f)
        skipped_per_run.append({entry["file"]: entry["reason"] for entry in stats["skipped"]})
    first, second = skipped_per_run
    assert first == second
    sidecars = {name for name in first if name.endswith(".xmp")}  # --xmp runs may add more
    assert "good/IMG_0000.xmp" in sidecars
    assert all("extension" in first[name] for name in sidecars)
    assert set(first) - sidecars == {
        name for name, outcome in expect.items() if outcome != "tagged"
    }
    assert stats["totals"]["kept"] == sum(outcome == "tagged" for outcome in expect.values())
    assert "unreadable folder" in first["locked folder"]
    assert "tiff" in first["odd/tiff named.jpg"].lower()
    assert "regular file" in first["odd/pipe.jpg"]


def test_folder_listing_follows_links_once_and_reports_loops(tmp_path):
    photos = tmp_path / "photos" / "Hạ Long" / "2019"
    photos.mkdir(parents=True)
    (photos / "a.jpg").write_bytes(b"x")
    (photos / "up").symlink_to("..", target_is_directory=True)  # a loop back to Hạ Long
    _, found, rejected = folders.list_class_folder(str(tmp_path / "photos"))
    assert [relative for relative, _, _ in found] == [os.path.join("Hạ Long", "2019", "a.jpg")]
    assert len(rejected) == 1 and "link loop" in rejected[0][1]
