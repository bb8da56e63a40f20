"""predict with locations: a landmark's place for photos without GPS, GPS as evidence,
sidecars every photo manager reads (checked with exiftool), --sidecar_dir, the contact
sheet."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess

import pytest

from lmrec import locations, predict, xmp
from lmrec.config import GeoConfig
from lmrec.data import records
from lmrec.errors import UserError
from tests.test_locations import located_photo, photo_bytes
from tests.tiny_model_dir import write_model_dir

EXIFTOOL = shutil.which("exiftool")
needs_exiftool = pytest.mark.skipif(
    EXIFTOOL is None, reason="exiftool is not installed (apt-get install libimage-exiftool-perl)"
)
SYDNEY = (-33.8567844, 151.2152967)
VIETNAM = (16.0, 107.0)  # the demo classes get places around here, 50 km apart


@pytest.fixture(scope="module")
def located_model(tmp_path_factory, demo_records) -> str:
    """A tiny model_dir whose labels.json gives every class a location."""
    model_dir = write_model_dir(str(tmp_path_factory.mktemp("places") / "model"), demo_records)
    labels = records.read_labels(model_dir)
    found = {
        entry["index"]: locations.Location(
            VIETNAM[0] + 0.45 * entry["index"], VIETNAM[1], 2000.0, "csv"
        )
        for entry in labels
    }
    with open(os.path.join(model_dir, records.LABELS_FILE), "w", encoding="utf-8") as f:
        json.dump(locations.with_locations(labels, found), f)
    return model_dir


def _class_place(model_dir: str, name: str) -> tuple[float, float]:
    entry = next(e for e in records.read_labels(model_dir) if e["name"] == name)
    return entry["latitude"], entry["longitude"]


def _rows(path) -> dict[str, dict]:
    with open(path, encoding="utf-8", newline="") as f:
        return {os.path.basename(row["file"]): row for row in csv.DictReader(f)}


def _exiftool(*args: str) -> list[dict]:
    done = subprocess.run([EXIFTOOL, "-j", *args], capture_output=True, text=True, check=False)
    return json.loads(done.stdout or "[]")


def _predict(model_dir, inputs, output, **kwargs):
    kwargs.setdefault("geo", GeoConfig(locate_min_score=0.0))
    return predict.predict(model_dir, inputs, str(output), min_score=0.0, verbose=False, **kwargs)


@needs_exiftool
def test_a_photo_without_gps_gets_its_landmarks_place_and_keeps_its_own(located_model, tmp_path):
    folder = tmp_path / "trip"
    folder.mkdir()
    (folder / "no_gps.jpg").write_bytes(photo_bytes(seed=1))
    (folder / "no_gps.NEF").write_bytes(b"II*\0 raw sensor data")  # tagged through its twin
    (folder / "with_gps.jpg").write_bytes(located_photo(*VIETNAM, seed=2))
    (folder / "user_pin.jpg").write_bytes(photo_bytes(seed=3))
    user_sidecar = folder / "user_pin.xmp"
    subprocess.run(
        [EXIFTOOL, "-q", "-o", str(user_sidecar), "-XMP:GPSLatitude=10.5",
         "-XMP:GPSLongitude=106.5", "-XMP:GPSLatitudeRef=N", "-XMP:GPSLongitudeRef=E",
         "-Subject=holiday"],
        check=True,
    )  # fmt: skip
    output = tmp_path / "tags.csv"
    _predict(located_model, [str(folder)], output, write_xmp=True)
    rows = _rows(output)

    plain = rows["no_gps.jpg"]
    place = _class_place(located_model, plain["label"])
    assert plain["located_from"] == "landmark"
    assert (float(plain["lat"]), float(plain["lon"])) == pytest.approx(place, abs=1e-6)
    raw = rows["no_gps.NEF"]
    assert (raw["label"], raw["located_from"], raw["lat"]) == (
        plain["label"],
        "landmark",
        plain["lat"],
    )
    [read] = _exiftool("-n", "-GPSLatitude", "-GPSLongitude", str(folder / "no_gps.xmp"))
    assert (read["GPSLatitude"], read["GPSLongitude"]) == pytest.approx(place, abs=1e-5)
    [keywords] = _exiftool(
        "-TagsList", "-HierarchicalSubject", "-Subject", str(folder / "no_gps.xmp")
    )
    assert keywords["TagsList"] in (f"Landmarks/{plain['label']}", [f"Landmarks/{plain['label']}"])
    assert f"Landmarks|{plain['label']}" in str(keywords["HierarchicalSubject"])
    assert plain["label"] in str(keywords["Subject"])

    camera = rows["with_gps.jpg"]
    assert camera["located_from"] == "photo"
    assert (float(camera["lat"]), float(camera["lon"])) == pytest.approx(VIETNAM, abs=1e-5)
    [read] = _exiftool("-n", "-GPSLatitude", str(folder / "with_gps.xmp"))
    assert "GPSLatitude" not in read  # its own location stays in the photo; none is added

    pinned = rows["user_pin.jpg"]
    assert pinned["located_from"] == "sidecar"
    [read] = _exiftool("-n", "-GPSLatitude", "-GPSLongitude", "-Subject", str(user_sidecar))
    assert (read["GPSLatitude"], read["GPSLongitude"]) == pytest.approx((10.5, 106.5))
    assert "holiday" in str(read["Subject"])


def test_gps_far_from_every_landmark_means_no_landmark(located_model, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "a.jpg").write_bytes(photo_bytes(seed=5))
    first = _predict(located_model, [str(folder)], tmp_path / "plain.csv")
    label = first.rows[0].label
    assert label and first.rows[0].located_from == "landmark"
    (folder / "a.jpg").write_bytes(located_photo(*SYDNEY, seed=5))
    (folder / "b.jpg").write_bytes(located_photo(*_class_place(located_model, label), seed=5))
    weighed = _rows(_predict(located_model, [str(folder)], tmp_path / "geo.csv").output)
    assert weighed["a.jpg"]["label"] == predict.NO_LANDMARK
    assert "far from every known landmark" in weighed["a.jpg"]["gps_note"]
    assert label in weighed["a.jpg"]["gps_note"]
    assert weighed["b.jpg"]["label"] == label and weighed["b.jpg"]["gps_note"] == ""
    off = _predict(
        located_model, [str(folder)], tmp_path / "off.csv", geo=GeoConfig(geo_prior="off")
    )
    assert {row.label for row in off.rows} == {label}  # without the prior GPS changes nothing


def test_sidecar_dir_mirrors_the_inputs_and_the_output_resumes(located_model, tmp_path):
    folder = tmp_path / "Hạ Long"
    (folder / "day 1").mkdir(parents=True)
    (folder / "day 1" / "x.jpg").write_bytes(photo_bytes(seed=7))
    sidecars = tmp_path / "sidecars"
    output = tmp_path / "tags.json"
    result = _predict(
        located_model, [str(folder)], output, write_xmp=True, sidecar_dir=str(sidecars)
    )
    written = sidecars / "Hạ Long" / "day 1" / "x.xmp"
    assert written.is_file() and not (folder / "day 1" / "x.xmp").exists()
    assert xmp.location(str(written)) == pytest.approx(
        (result.rows[0].latitude, result.rows[0].longitude), abs=1e-6
    )
    [entry] = json.loads(output.read_text(encoding="utf-8"))["predictions"]
    assert entry["located_from"] == "landmark" and entry["lat"] == result.rows[0].latitude
    again = _predict(
        located_model, [str(folder)], output, write_xmp=True, sidecar_dir=str(sidecars)
    )
    assert again.resumed == 1 and again.rows[0].latitude == result.rows[0].latitude


def test_the_contact_sheet_lists_every_photo(located_model, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "ok.jpg").write_bytes(photo_bytes(seed=8))
    (folder / "far.jpg").write_bytes(located_photo(*SYDNEY, seed=9))
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    sheet = tmp_path / "tags.html"
    result = _predict(located_model, [str(folder)], tmp_path / "t.csv", contact_sheet=str(sheet))
    assert result.contact_sheet == str(sheet)
    page = sheet.read_text(encoding="utf-8")
    for name in ("ok.jpg", "far.jpg", "broken.jpg", "far from every known landmark"):
        assert name in page
    with pytest.raises(UserError, match="must end in .html"):
        _predict(located_model, [str(folder)], tmp_path / "u.csv", contact_sheet="tags.txt")
