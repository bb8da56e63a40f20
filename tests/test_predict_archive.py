"""predict as the photographer's tool: a messy archive, RAW twins, resume, XMP sidecars."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import pathlib
import signal
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from lmrec import photo_archive, predict, tag_store, xmp
from lmrec.data import images
from lmrec.data.sources import demo
from lmrec.errors import UserError

# Trains, exports or runs commands: left out by `pytest -m "not slow"`.
pytestmark = pytest.mark.slow

ORIENTATION = 0x0112


def _demo_photo(index: int, size: int = 120) -> Image.Image:
    return Image.open(io.BytesIO(demo.make_image(index % 8, 4000 + index, size, seed=9).encoded))


def _save(path: pathlib.Path, image: Image.Image, fmt: str, **kwargs) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, fmt, **kwargs)


def _exif_rotated(image: Image.Image) -> tuple[Image.Image, Image.Exif]:
    """Pixels stored turned 90 degrees, with the EXIF orientation (6) that turns them back."""
    exif = Image.Exif()
    exif[ORIENTATION] = 6
    return image.transpose(Image.Transpose.ROTATE_90), exif


@pytest.fixture
def archive(tmp_path) -> dict:
    """A trip folder with every kind of file a camera card and a phone leave behind."""
    root = tmp_path / "Trip 2019 Việt Nam"
    expect: dict[str, str] = {}  # relative path -> tagged | failed | ignored | twin

    def put(relative: str, data: bytes, outcome: str):
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        expect[relative] = outcome

    def image(relative: str, image: Image.Image, fmt: str, outcome="tagged", **kwargs):
        _save(root / relative, image, fmt, **kwargs)
        expect[relative] = outcome

    photo = _demo_photo(0)
    rotated, exif = _exif_rotated(photo)
    image("day 1/DSC_0001.JPG", rotated, "JPEG", exif=exif)
    put("day 1/DSC_0001.NEF", b"II*\0 raw sensor data", "twin")
    put("day 1/DSC_0099.CR2", b"II*\0 raw without a jpeg", "ignored")
    image("day 1/cmyk.jpg", _demo_photo(1).convert("CMYK"), "JPEG")
    image("day 2/nested/deeper/gray.png", _demo_photo(2).convert("L"), "PNG")
    image("day 2/rgba.png", _demo_photo(3).convert("RGBA"), "PNG")
    frames = [_demo_photo(4).convert("P"), _demo_photo(5).convert("P")]
    image("day 2/anim.gif", frames[0], "GIF", save_all=True, append_images=frames[1:])
    image("day 2/webp named as.jpg", _demo_photo(6), "WEBP")
    image("Hạ Long/ảnh vịnh 1.jpeg", _demo_photo(7), "JPEG")
    if images.HEIF_AVAILABLE:
        image("phone/IMG_4242.HEIC", _demo_photo(8), "HEIF")
    put("day 1/empty.jpg", b"", "failed")
    whole = demo.make_image(1, 4100, 200, seed=9).encoded
    put("day 1/truncated.jpg", whole[: len(whole) // 2], "failed")
    put("day 2/notes.jpg", b"a text file, not a photo\n" * 20, "failed")
    put("day 2/readme.txt", b"hello", "ignored")
    put("day 2/DSC_0002.xmp", b"<x:xmpmeta xmlns:x='adobe:ns:meta/'/>", "hidden")
    put("day 2/.DS_Store", b"\0\0", "hidden")  # "hidden": skipped without a row
    return {"root": root, "expect": expect, "upright": photo}


@pytest.fixture(scope="module")
def tagger(trained_demo):
    """The demo model loaded once: every predict call below reuses it."""
    return predict.load_tagger(trained_demo.model_dir)


def _csv(path) -> list[dict]:
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def test_every_file_of_a_messy_archive_is_tagged_or_reported(tagger, archive, tmp_path):
    out = tmp_path / "tags.csv"
    result = predict.predict(tagger, [str(archive["root"])], str(out), top_k=3)
    rows = {os.path.relpath(r["file"], archive["root"]): r for r in _csv(out)}
    expected = {k: v for k, v in archive["expect"].items() if v != "hidden"}
    assert set(rows) == set(expected)
    for relative, outcome in expected.items():
        row = rows[relative]
        if outcome in ("tagged", "twin"):
            assert row["label"] in demo.CLASS_NAMES and not row["error"], relative
            assert 0 < float(row["score"]) <= 1 and row["label_1"] == row["label"]
        elif outcome == "failed":
            assert row["error"] and not row["error"].startswith("ignored"), relative
        else:
            assert row["error"].startswith("ignored: "), relative
    raw = rows["day 1/DSC_0001.NEF"]
    twin = rows["day 1/DSC_0001.JPG"]
    assert raw["tagged_from"].endswith("DSC_0001.JPG")
    assert (raw["label"], raw["score"]) == (twin["label"], twin["score"])
    assert "JPEG twin" in rows["day 1/DSC_0099.CR2"]["error"]
    assert "empty" in rows["day 1/empty.jpg"]["error"]
    assert "truncated" in rows["day 1/truncated.jpg"]["error"]
    assert "not an image" in rows["day 2/notes.jpg"]["error"]
    tagged = sum(v in ("tagged", "twin") for v in expected.values())
    assert len(result.rows) == tagged and len(result.failures) == 3
    assert not os.path.exists(str(out) + tag_store.JOURNAL_SUFFIX)
    again = predict.predict(tagger, [str(archive["root"])], str(out), top_k=3)
    assert again.classified == 0 and len(again.failures) == 3
    assert sorted(r["file"] for r in _csv(out)) == sorted(r["file"] for r in rows.values())


def test_exif_orientation_is_applied_before_classification(archive):
    stored = archive["root"] / "day 1" / "DSC_0001.JPG"
    upright = images.square_pixels(images.read_file(str(stored)), 64).astype(float)
    reference = np.asarray(archive["upright"].resize((64, 64), Image.Resampling.BILINEAR), float)
    as_stored = np.asarray(Image.open(stored).resize((64, 64), Image.Resampling.BILINEAR), float)
    assert np.abs(upright - reference).mean() < 6  # JPEG noise only
    assert np.abs(as_stored - reference).mean() > 3 * np.abs(upright - reference).mean()


def test_heic_without_pillow_heif_names_the_package(monkeypatch):
    heif_header = b"\0\0\0\x18ftypheic\0\0\0\0mif1heic" + b"\0" * 64
    monkeypatch.setattr(images, "HEIF_AVAILABLE", False)
    with pytest.raises(images.BadImage, match="pip install pillow-heif"):
        images.decode(heif_header, "IMG_1.HEIC")


def _stop_at_call(monkeypatch, call: int, error: type[BaseException]) -> list[int]:
    """Makes the model's call number `call` raise error; returns the batch sizes it saw."""
    calls: list[int] = []
    original = predict.Tagger.answer

    def stopping(self, pixels):
        calls.append(len(pixels))
        if len(calls) == call:
            raise error
        return original(self, pixels)

    monkeypatch.setattr(predict.Tagger, "answer", stopping)
    return calls


def test_rerun_skips_tagged_photos_and_an_interrupt_keeps_the_work(
    tagger, archive, tmp_path, monkeypatch
):
    out = tmp_path / "tags.json"
    root = str(archive["root"])
    _stop_at_call(monkeypatch, 2, KeyboardInterrupt)
    with pytest.raises(KeyboardInterrupt):
        predict.predict(tagger, [root], str(out), batch_size=3, verbose=False)
    payload = json.loads(out.read_text(encoding="utf-8"))
    first_batch = [p for p in payload["predictions"] if "tagged_from" not in p]
    assert len(first_batch) == 3  # written on the interrupt
    assert payload["model"].startswith("model_dir ")
    monkeypatch.undo()

    second = predict.predict(tagger, [root], str(out), verbose=False)
    photos = sum(v == "tagged" for v in archive["expect"].values())
    assert second.resumed == 3 and second.classified == photos - 3
    third = predict.predict(tagger, [root], str(out), verbose=False)
    assert third.classified == 0 and third.resumed == photos
    assert [r.file for r in third.rows] == [r.file for r in second.rows]
    assert len(third.failures) == 3  # failed photos are tried again, and fail again


# Run in a child process that SIGKILLs itself as the model is called the third time:
# no finally block, no flush, only what was on disk by then survives.
KILLED_AT_THIRD_BATCH = """
import os, signal, sys
from lmrec import predict

calls = []
original = predict.Tagger.answer

def killing(self, pixels):
    calls.append(len(pixels))
    if len(calls) == 3:
        os.kill(os.getpid(), signal.SIGKILL)
    return original(self, pixels)

predict.Tagger.answer = killing
predict.predict(sys.argv[1], [sys.argv[2]], sys.argv[3], batch_size=2, verbose=False)
"""


def test_a_sigkilled_run_resumes_from_the_journal(
    trained_demo, tagger, archive, tmp_path, env_for_subprocess
):
    out = tmp_path / "tags.csv"
    root = str(archive["root"])
    command = [sys.executable, "-c", KILLED_AT_THIRD_BATCH, trained_demo.model_dir, root, str(out)]
    killed = subprocess.run(command, env=env_for_subprocess, capture_output=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr.decode()[-2000:]
    journal = pathlib.Path(str(out) + tag_store.JOURNAL_SUFFIX)
    assert not out.exists() and journal.exists()
    lines = journal.read_text(encoding="utf-8").splitlines()
    done = sum(1 for line in lines[1:] if "error" not in json.loads(line))
    with open(journal, "a", encoding="utf-8") as f:
        f.write('{"file": "cut short by the ki')  # a line a kill could cut in half
    resumed = predict.predict(tagger, [root], str(out), verbose=False)
    assert resumed.resumed == done >= 3  # the photos of the two batches before the kill
    assert not journal.exists()
    tagged = [r for r in _csv(out) if not r["error"]]
    assert len(tagged) == len(resumed.rows) == resumed.resumed + resumed.classified + 1  # + RAW


def test_output_from_another_model_is_not_mixed_in(tagger, archive, tmp_path):
    out = tmp_path / "tags.json"
    out.write_text(json.dumps({"model": "SavedModel elsewhere/3", "predictions": []}))
    with pytest.raises(UserError, match="elsewhere/3"):
        predict.predict(tagger, [str(archive["root"])], str(out), verbose=False)
    out.write_text("not json")
    with pytest.raises(UserError, match="not an lmrec predict output"):
        predict.predict(tagger, [str(archive["root"])], str(out), verbose=False)


def _digest(root: pathlib.Path) -> dict[str, str]:
    return {
        str(p): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in root.rglob("*")
        if p.is_file() and p.suffix.lower() != ".xmp"
    }


def test_xmp_sidecars_carry_the_keyword_and_keep_the_photographers(tagger, archive, tmp_path):
    root = archive["root"]
    before = _digest(root)
    user_sidecar = root / "day 2" / "rgba.xmp"
    user_sidecar.write_text(
        '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF '
        'xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        '<rdf:Description rdf:about="" xmlns:xmp="http://ns.adobe.com/xap/1.0/" '
        'xmp:Rating="5" xmlns:dc="http://purl.org/dc/elements/1.1/" '
        'xmlns:lmrec="https://github.com/lmrec/lmrec/ns/1.0/">'
        "<dc:subject><rdf:Bag><rdf:li>Paris</rdf:li><rdf:li>old guess</rdf:li></rdf:Bag>"
        "</dc:subject><lmrec:label>old guess</lmrec:label></rdf:Description></rdf:RDF>"
        "</x:xmpmeta>",
        encoding="utf-8",
    )
    broken = root / "day 2" / "anim.xmp"
    broken.write_text("<not xml", encoding="utf-8")
    result = predict.predict(
        tagger, [str(root)], str(tmp_path / "t.csv"), verbose=False,
        write_xmp=True,
    )  # fmt: skip
    labels = {os.path.relpath(r.file, root): r.label for r in result.rows}
    assert _digest(root) == before  # photos untouched
    pair = root / "day 1" / "DSC_0001.xmp"  # one sidecar for the JPEG and its RAW
    assert xmp.keywords(str(pair)) == [labels["day 1/DSC_0001.JPG"]]
    assert xmp.keywords(str(user_sidecar)) == ["Paris", labels["day 2/rgba.png"]]
    text = user_sidecar.read_text(encoding="utf-8")
    assert 'xmp:Rating="5"' in text and "Landmarks|" in text
    assert broken.read_text(encoding="utf-8") == "<not xml"
    assert [e["file"] for e in result.sidecar_errors] == [str(broken)]
    assert not (root / "day 1" / "empty.xmp").exists()  # failed photos get none


def test_min_score_leaves_out_weak_labels(tagger, archive):
    root = [str(archive["root"])]
    plain = predict.predict(tagger, root, top_k=3, verbose=False)
    cut = float(np.median([r.score for r in plain.rows if not r.tagged_from]))
    strict = predict.predict(tagger, root, top_k=3, verbose=False, min_score=cut)
    for before, after in zip(plain.rows, strict.rows, strict=True):
        assert after.top == [(n, s) for n, s in before.top if s >= cut]
        assert after.label == (before.label if before.score >= cut else "")
    assert any(r.label == "" for r in strict.rows)
    with pytest.raises(UserError, match="--min_score"):
        predict.predict(tagger, root, min_score=1.5, verbose=False)


def test_scan_pairs_raw_files_with_their_twins_and_names_sidecars(tmp_path):
    for name in ("a.JPG", "a.NEF", "b.jpg", "b.png", "c.ARW", "d.heic", "d.dng"):
        (tmp_path / name).write_bytes(b"x")
    found = photo_archive.scan([str(tmp_path)])
    names = {os.path.basename(k): os.path.basename(v) for k, v in found.raw_twins.items()}
    assert names == {"a.NEF": "a.JPG", "d.dng": "d.heic"}
    sidecars = {os.path.basename(k): os.path.basename(v) for k, v in found.sidecars.items()}
    assert sidecars == {"a.JPG": "a.xmp", "b.jpg": "b.jpg.xmp", "b.png": "b.png.xmp",
                        "d.heic": "d.xmp"}  # fmt: skip
    assert [os.path.basename(i["file"]) for i in found.ignored] == ["c.ARW"]
