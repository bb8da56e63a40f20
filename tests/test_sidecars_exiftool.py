"""The sidecars lmrec writes, read back by exiftool: what every photo manager will see.

exiftool (Debian: libimage-exiftool-perl) reads XMP the way digiKam, darktable,
Lightroom, PhotoPrism and Immich do; each test writes with lmrec.xmp and parses
`exiftool -j` (JSON) output.
"""

import json
import os
import shutil
import subprocess

import pytest

from lmrec import photo_archive, xmp

pytestmark = pytest.mark.skipif(
    shutil.which("exiftool") is None,
    reason="exiftool is not installed (Debian: apt-get install libimage-exiftool-perl)",
)

# Landmarks on every side of the equator and the prime meridian, with their names.
PLACES = {
    "Eiffel Tower": (48.858370, 2.294481),
    "Sydney Opera House": (-33.856784, 151.215297),
    "Christ the Redeemer": (-22.951916, -43.210487),
    "Statue of Liberty": (40.689247, -74.044502),
    "Cầu Rồng": (16.061203, 108.227247),
    "Hạ Long Bay": (20.910051, 107.183902),
}
LANDMARK_TAGS = ("-TagsList", "-HierarchicalSubject", "-Subject")

# A photographer's sidecar as exiftool writes it: keywords in all three lists and a GPS
# position with altitude (a different place from any landmark above).
USER_SIDECAR_TAGS = (
    "-XMP-dc:Subject=holiday",
    "-XMP-dc:Subject=Anna",
    "-XMP-lr:HierarchicalSubject=People|Anna",
    "-XMP-digiKam:TagsList=People/Anna",
    "-XMP:Rating=4",
    "-XMP:GPSLatitude=51.500729",
    "-XMP:GPSLongitude=-0.124625",
    "-XMP:GPSAltitude=12",
)
USER_LOCATION = (51.500729, -0.124625)


def exiftool(path: str, *tags: str) -> dict:
    """exiftool's -j answer for one file: {tag name: value}."""
    done = subprocess.run(
        ["exiftool", "-j", *tags, path], capture_output=True, check=True, text=True
    )
    return json.loads(done.stdout)[0]


def listed(value) -> list:
    """exiftool gives a one-entry list as a plain value."""
    return value if isinstance(value, list) else [value]


def landmark_tags(path: str) -> dict[str, list]:
    tags = exiftool(path, *LANDMARK_TAGS)
    return {
        name: listed(tags.get(name, [])) for name in ("TagsList", "HierarchicalSubject", "Subject")
    }


def position(path: str) -> tuple[float, float] | None:
    tags = exiftool(path, "-n", "-GPSLatitude", "-GPSLongitude")
    if "GPSLatitude" not in tags:
        return None
    return tags["GPSLatitude"], tags["GPSLongitude"]


def user_sidecar(tmp_path) -> str:
    path = str(tmp_path / "photo.xmp")
    subprocess.run(["exiftool", "-q", "-o", path, *USER_SIDECAR_TAGS], check=True)
    return path


@pytest.mark.parametrize("name", sorted(PLACES))
def test_new_sidecar_carries_landmark_and_location(tmp_path, name):
    path = str(tmp_path / "photo.xmp")
    assert xmp.write_keyword(path, name, 0.9, "demo", location=PLACES[name]) is True
    assert landmark_tags(path) == {
        "TagsList": [f"Landmarks/{name}"],
        "HierarchicalSubject": [f"Landmarks|{name}"],
        "Subject": [name],
    }
    assert position(path) == pytest.approx(PLACES[name], abs=1e-6)
    tags = exiftool(path, "-GPSVersionID", "-GPSMapDatum", "-GPSLatitudeRef", "-GPSLongitudeRef")
    latitude, longitude = PLACES[name]
    assert tags["GPSVersionID"] == "2.3.0.0" and tags["GPSMapDatum"] == "WGS-84"
    assert tags["GPSLatitudeRef"] == ("North" if latitude >= 0 else "South")
    assert tags["GPSLongitudeRef"] == ("East" if longitude >= 0 else "West")


def test_user_sidecar_keeps_its_keywords_and_its_location(tmp_path):
    path = user_sidecar(tmp_path)
    before = exiftool(path, "-n", "-GPS:all", "-XMP-exif:all", "-Rating")
    assert xmp.write_keyword(path, "Cầu Rồng", 0.9, "demo", location=PLACES["Cầu Rồng"]) is False
    assert landmark_tags(path) == {
        "TagsList": ["People/Anna", "Landmarks/Cầu Rồng"],
        "HierarchicalSubject": ["People|Anna", "Landmarks|Cầu Rồng"],
        "Subject": ["holiday", "Anna", "Cầu Rồng"],
    }
    assert exiftool(path, "-n", "-GPS:all", "-XMP-exif:all", "-Rating") == before
    assert position(path) == pytest.approx(USER_LOCATION, abs=1e-6)
    assert xmp.location(path) == pytest.approx(USER_LOCATION, abs=1e-6)


def test_replaced_label_replaces_lmrecs_keyword_and_location_only(tmp_path):
    path = user_sidecar(tmp_path)
    subprocess.run(  # a sidecar with keywords but no location yet
        ["exiftool", "-q", "-overwrite_original", "-XMP-exif:GPS*=", path], check=True
    )
    xmp.write_keyword(path, "Hạ Long Bay", 0.6, "demo", location=PLACES["Hạ Long Bay"])
    assert position(path) == pytest.approx(PLACES["Hạ Long Bay"], abs=1e-6)
    assert xmp.write_keyword(path, "Cầu Rồng", 0.9, "demo", location=PLACES["Cầu Rồng"]) is True
    assert landmark_tags(path) == {
        "TagsList": ["People/Anna", "Landmarks/Cầu Rồng"],
        "HierarchicalSubject": ["People|Anna", "Landmarks|Cầu Rồng"],
        "Subject": ["holiday", "Anna", "Cầu Rồng"],
    }
    assert position(path) == pytest.approx(PLACES["Cầu Rồng"], abs=1e-6)
    assert exiftool(path, "-Rating")["Rating"] == 4


def test_location_moved_with_exiftool_after_lmrec_wrote_it_is_kept(tmp_path):
    path = str(tmp_path / "photo.xmp")
    xmp.write_keyword(path, "Eiffel Tower", 0.9, "demo", location=PLACES["Eiffel Tower"])
    subprocess.run(  # the photographer corrects the position in another tool
        ["exiftool", "-q", "-overwrite_original", "-XMP:GPSLatitude=48.8600", path], check=True
    )
    moved = (48.86, PLACES["Eiffel Tower"][1])
    assert xmp.write_keyword(path, "Louvre", 0.8, "demo", location=(48.860611, 2.337644)) is False
    assert position(path) == pytest.approx(moved, abs=1e-6)
    assert landmark_tags(path)["Subject"] == ["Louvre"]


def test_sidecar_dir_tree_reads_back_with_exiftool(tmp_path):
    inputs = [tmp_path / "2023" / "Vietnam", tmp_path / "2024" / "Vietnam"]
    for folder in inputs:
        (folder / "day 1").mkdir(parents=True)
        (folder / "day 1" / "IMG_1.jpg").write_bytes(b"")
    out = tmp_path / "sidecars"
    found = photo_archive.scan([str(folder) for folder in inputs], sidecar_dir=str(out))
    names = ["Cầu Rồng", "Hạ Long Bay"]
    for folder, name in zip(inputs, names, strict=True):
        sidecar = found.sidecars[str(folder / "day 1" / "IMG_1.jpg")]
        xmp.write_keyword(sidecar, name, 0.9, "demo", location=PLACES[name])
    done = subprocess.run(
        ["exiftool", "-j", "-r", "-ext", "xmp", "-n", "-Subject", "-GPSLatitude", str(out)],
        capture_output=True,
        check=True,
        text=True,
    )
    read = {
        os.path.relpath(entry["SourceFile"], out): (entry["Subject"], entry["GPSLatitude"])
        for entry in json.loads(done.stdout)
    }
    assert len(read) == 2 and all(path.startswith("Vietnam-") for path in read)
    assert sorted(read.values()) == [(name, pytest.approx(PLACES[name][0])) for name in names]
