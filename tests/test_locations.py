"""Landmark locations: EXIF GPS, robust centres, the user's CSV, labels.json and prepare."""

from __future__ import annotations

import dataclasses
import io
import json
import math
import os
import unicodedata

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image
from PIL.TiffImagePlugin import IFDRational

from lmrec import locations, resume, run_files
from lmrec.config import ExperimentConfig, PrepareConfig
from lmrec.data import images, prepare, records, shards
from lmrec.errors import UserError

EIFFEL = (48.8583701, 2.2944813)
OPERA_HOUSE = (-33.8567844, 151.2152967)
LIBERTY = (40.6892494, -74.0445004)
REDEEMER = (-22.951916, -43.2104872)


def _dms(value: float) -> tuple[float, float, float]:
    degrees = math.floor(value)
    minutes = math.floor((value - degrees) * 60)
    return float(degrees), float(minutes), (value - degrees - minutes / 60) * 3600


def _gps_ifd(latitude: float, longitude: float) -> dict:
    return {
        1: "N" if latitude >= 0 else "S",
        2: _dms(abs(latitude)),
        3: "E" if longitude >= 0 else "W",
        4: _dms(abs(longitude)),
    }


def photo_bytes(gps: dict | None = None, fmt: str = "JPEG", seed: int = 0) -> bytes:
    """A tiny photo with the GPS IFD given (none when gps is None)."""
    pixels = np.random.default_rng(seed).integers(0, 255, (24, 32, 3), dtype=np.uint8)
    exif = Image.Exif()
    if gps is not None:
        exif[0x8825] = gps
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, fmt, exif=exif)
    return out.getvalue()


def located_photo(latitude: float, longitude: float, seed: int = 0, fmt: str = "JPEG") -> bytes:
    return photo_bytes(_gps_ifd(latitude, longitude), fmt, seed)


def _offset(point: tuple[float, float], north_m: float, east_m: float) -> tuple[float, float]:
    latitude, longitude = point
    return (
        latitude + north_m / 111_195.0,
        longitude + east_m / (111_195.0 * math.cos(math.radians(latitude))),
    )


# --- photo_gps ------------------------------------------------------------------------------


@pytest.mark.parametrize("point", [EIFFEL, OPERA_HOUSE, LIBERTY, REDEEMER])
def test_photo_gps_reads_each_hemisphere(point):
    found = locations.photo_gps(located_photo(*point))
    assert found == pytest.approx(point, abs=1e-7)


def test_photo_gps_reads_paths_webp_and_heic(tmp_path):
    path = tmp_path / "photo.jpg"
    path.write_bytes(located_photo(*OPERA_HOUSE))
    assert locations.photo_gps(path) == pytest.approx(OPERA_HOUSE, abs=1e-7)
    assert locations.photo_gps(str(path)) == pytest.approx(OPERA_HOUSE, abs=1e-7)
    webp = located_photo(*LIBERTY, fmt="WEBP")
    assert locations.photo_gps(webp) == pytest.approx(LIBERTY, abs=1e-7)
    if not images.HEIF_AVAILABLE:
        pytest.skip("pillow-heif is not installed: HEIC photos are not read")
    heic = located_photo(*REDEEMER, fmt="HEIF")
    assert locations.photo_gps(heic) == pytest.approx(REDEEMER, abs=1e-7)


def test_photo_gps_reads_a_single_rational_and_byte_references():
    gps = {1: b"S\x00", 2: IFDRational(-33.5 * -2, 2), 3: b"W\x00", 4: (70.0, 30.0)}
    assert locations.photo_gps(photo_bytes(gps)) == pytest.approx((-33.5, -70.5))


def test_photo_gps_keeps_zero_zero_unless_the_status_is_void():
    zero = _gps_ifd(0.0, 0.0)
    assert locations.photo_gps(photo_bytes(zero)) == (0.0, 0.0)
    assert locations.photo_gps(photo_bytes({**zero, 9: "A"})) == (0.0, 0.0)
    assert locations.photo_gps(photo_bytes({**zero, 9: "V"})) is None
    assert locations.photo_gps(photo_bytes({**_gps_ifd(*EIFFEL), 9: "V"})) is None


@pytest.mark.parametrize(
    "photo",
    [
        pytest.param(lambda: photo_bytes(None), id="no-gps"),
        pytest.param(lambda: photo_bytes({0: b"\x02\x02\x00\x00"}), id="version-only"),
        pytest.param(
            lambda: photo_bytes({k: v for k, v in _gps_ifd(*EIFFEL).items() if k != 1}),
            id="no-latitude-ref",
        ),
        pytest.param(lambda: photo_bytes({**_gps_ifd(*EIFFEL), 3: "X"}), id="unknown-ref"),
        pytest.param(lambda: photo_bytes({**_gps_ifd(*EIFFEL), 2: (95.0, 0.0, 0.0)}), id="lat-95"),
        pytest.param(
            lambda: photo_bytes({**_gps_ifd(*EIFFEL), 4: (200.0, 0.0, 0.0)}), id="lon-200"
        ),
        pytest.param(
            lambda: photo_bytes({**_gps_ifd(*EIFFEL), 2: (IFDRational(0, 0), 1.0, 2.0)}),
            id="nan-rational",
        ),
        pytest.param(lambda: photo_bytes(_gps_ifd(*EIFFEL), fmt="PNG")[:60], id="cut-png"),
        pytest.param(lambda: located_photo(*EIFFEL)[:40], id="cut-jpeg"),
        pytest.param(lambda: b"", id="empty"),
        pytest.param(lambda: b"not a photo at all", id="garbage"),
        pytest.param(lambda: b"II*\x00" + b"\x00" * 64, id="tiff-never-parsed"),
        pytest.param(lambda: "/no/such/photo.jpg", id="missing-file"),
        pytest.param(lambda: 12345, id="not-a-path"),
    ],
)
def test_photo_gps_is_none_for_no_or_bad_gps_and_never_raises(photo):
    assert locations.photo_gps(photo()) is None


def test_photo_gps_reads_a_png_with_exif_in_its_header():
    assert locations.photo_gps(located_photo(*EIFFEL, fmt="PNG")) == pytest.approx(EIFFEL)


def test_photo_gps_of_real_photos(vn_landmarks):
    hue = vn_landmarks / "train" / "hue_imperial_city"
    found = {
        path.name: locations.photo_gps(path)
        for path in sorted(vn_landmarks.rglob("*"))
        if path.suffix.lower() in (".jpg", ".jpeg", ".png")
    }
    located = {name: point for name, point in found.items() if point is not None}
    assert len(located) == 4, sorted(located)
    assert located["hue_imperial_city (45).jpg"] == pytest.approx((16.4673333, 107.5794683))
    assert locations.photo_gps(hue / "hue_imperial_city (9).jpg") is None  # GPS IFD, no position


# --- distances and centres ------------------------------------------------------------------


def test_haversine_is_vectorised_and_right():
    assert float(locations.haversine_m(0, 0, 0, 1)) == pytest.approx(111_195, rel=1e-4)
    # Paris - Sydney, about 16,960 km.
    assert float(locations.haversine_m(*EIFFEL, *OPERA_HOUSE)) == pytest.approx(16.96e6, rel=5e-3)
    lat = np.array([EIFFEL[0], LIBERTY[0], REDEEMER[0]])
    lon = np.array([EIFFEL[1], LIBERTY[1], REDEEMER[1]])
    distances = locations.haversine_m(lat[:, None], lon[:, None], lat[None, :], lon[None, :])
    assert distances.shape == (3, 3)
    np.testing.assert_allclose(np.diag(distances), 0, atol=1e-6)
    np.testing.assert_allclose(distances, distances.T)
    assert float(locations.haversine_m(0, 179.9, 0, -179.9)) == pytest.approx(22_239, rel=1e-3)


def test_centre_is_within_100_m_of_the_median_and_ignores_outliers():
    rng = np.random.default_rng(0)
    offsets = rng.normal(0, 300, (40, 2))
    points = [_offset(EIFFEL, north, east) for north, east in offsets]
    points += [LIBERTY, REDEEMER, (0.0, 0.0)]  # mislabelled photos, a camera without a fix
    location = locations.centre_and_spread(points)
    median = np.median(np.array(points), axis=0)
    assert float(locations.haversine_m(location.latitude, location.longitude, *median)) < 100
    assert float(locations.haversine_m(location.latitude, location.longitude, *EIFFEL)) < 150
    assert location.source == "photos" and location.photos == len(points)
    assert location.radius_m == locations.MIN_RADIUS_M  # 90% of the photos within 1 km
    spread = [_offset(EIFFEL, north * 10, east * 10) for north, east in offsets]
    wide = locations.centre_and_spread(spread)
    distances = locations.haversine_m(wide.latitude, wide.longitude, *np.array(spread).T)
    assert wide.radius_m == pytest.approx(np.percentile(distances, 90))
    assert 3000 < wide.radius_m < 10000


def test_too_few_photos_give_no_location():
    two = [EIFFEL, _offset(EIFFEL, 10, 10)]
    assert locations.DEFAULT_MIN_LOCATED_PHOTOS == 3
    assert locations.centre_and_spread(two) is None
    assert locations.centre_and_spread(two, min_photos=2) is not None
    assert locations.centre_and_spread([], min_photos=1) is None
    assert locations.centre_and_spread([*two, (math.nan, 1.0), (91.0, 0.0)]) is None
    assert locations.class_locations({"a": two, "b": [*two, EIFFEL]}).keys() == {"b"}


def test_centre_across_the_antimeridian():
    taveuni = (-16.8, 180.0)
    points = [(-16.8, 179.998), (-16.801, -179.999), (-16.799, 179.999), (-16.8, -179.997)]
    location = locations.centre_and_spread(points)
    distance = locations.haversine_m(location.latitude, location.longitude, *taveuni)
    assert float(distance) < 200
    assert -180 <= location.longitude <= 180
    assert location.radius_m == locations.MIN_RADIUS_M


# --- the user's CSV -------------------------------------------------------------------------

CLASSES = ["Eiffel Tower", "Vịnh Hạ Long", "Statue of Liberty"]
IDS = ["101", "202", "303"]


def _csv(tmp_path, text: str, encoding: str = "utf-8") -> str:
    path = tmp_path / "locations.csv"
    path.write_bytes(text.encode(encoding))
    return str(path)


def test_csv_matches_names_and_ids(tmp_path):
    nfd = unicodedata.normalize("NFD", "Vịnh Hạ Long")
    path = _csv(
        tmp_path,
        "\ufeffName,landmark_id,Lat,lng,radius,source\n"
        f"{nfd},,20.91,107.18,25000,\n"
        "whatever,101,48.8584,2.2945,,wikidata\n"
        "Not here,999,1,2,,\n"  # a landmark this dataset does not hold
        ",303,,,,not_found\n"  # location unknown
        "\n",
    )
    found = locations.read_locations_csv(path, CLASSES, IDS)
    assert found == {
        0: locations.Location(48.8584, 2.2945, locations.MIN_RADIUS_M, "wikidata", 0),
        1: locations.Location(20.91, 107.18, 25000.0, "csv", 0),
    }
    by_name = dict(zip(CLASSES, IDS, strict=True))
    assert locations.read_locations_csv(path, CLASSES, by_name) == found
    # A folder dataset has no landmark ids: rows are matched by name only.
    named = _csv(tmp_path, "name,landmark_id,lat,lon\nEiffel Tower,7,48.8584,2.2945\n")
    assert locations.read_locations_csv(named, CLASSES)[0].latitude == 48.8584
    only_id = _csv(tmp_path, "landmark_id,lat,lon\n7,48.8584,2.2945\n")
    with pytest.raises(UserError, match="line 2: landmark_id 7, but this dataset's classes"):
        locations.read_locations_csv(only_id, CLASSES)


@pytest.mark.parametrize(
    "text, line, words",
    [
        ("name,latitude,longitude\nEiffel Tower,48.85,two\n", 2, ["longitude 'two'", "number"]),
        ("name,latitude,longitude\nEiffel Tower,48,85,2.29\n", 2, ["4 fields"]),
        ("name,lat,lon\n\nEiffel Tower,98.5,2\n", 3, ["latitude 98.5", "[-90, 90]"]),
        ("name,lat,lon\nEiffel Tower,48,-181\n", 2, ["longitude -181"]),
        ("name,lat,lon\nEiffel Tower,nan,2\n", 2, ["finite"]),
        ("name,lat,lon\nEiffel Tower,48,2\nEifel Tower,1,1\n", 3, ["'Eifel Tower'", "'Eiffel"]),
        ("name,lat,lon\nEiffel Tower,48,2\nEiffel Tower,1,1\n", 3, ["already", "line 2"]),
        ("name,lat,lon,radius_m\nEiffel Tower,48,2,-5\n", 2, ["radius_m", "positive"]),
        ("name,lat,lon\nEiffel Tower,48,\n", 2, ["longitude ''"]),
        ("name,lat,lon\n,48,2\n", 2, ["neither"]),
        ("name,place\nEiffel Tower,Paris\n", 1, ["latitude (or lat)", "name, place"]),
        ("name,lat,latitude,lon\n", 1, ["twice", "lat, latitude"]),
    ],
)
def test_csv_errors_name_the_file_and_line(tmp_path, text, line, words):
    path = _csv(tmp_path, text)
    with pytest.raises(UserError) as error:
        locations.read_locations_csv(path, CLASSES, IDS)
    message = str(error.value)
    assert f"{path}, line {line}:" in message, message
    for word in words:
        assert word in message, message


def test_csv_file_problems(tmp_path):
    with pytest.raises(UserError, match="no such file"):
        locations.read_locations_csv(str(tmp_path / "missing.csv"), CLASSES, IDS)
    with pytest.raises(UserError, match="not UTF-8"):
        locations.read_locations_csv(
            _csv(tmp_path, "name,lat,lon\nVịnh Hạ Long,20,107\n", "utf-16"), CLASSES, IDS
        )
    with pytest.raises(UserError, match="empty"):
        locations.read_locations_csv(_csv(tmp_path, ""), CLASSES, IDS)
    with pytest.raises(UserError, match="none of its 1 rows"):
        locations.read_locations_csv(_csv(tmp_path, "landmark_id,lat,lon\n7,1,2\n"), CLASSES, IDS)


# --- labels.json ----------------------------------------------------------------------------


def _labels() -> list[dict]:
    return [
        {"index": i, "name": n, "landmark_id": lid}
        for i, (n, lid) in enumerate(zip(CLASSES, IDS, strict=True))
    ]


def test_labels_round_trip_and_class_arrays(tmp_path):
    eiffel = locations.Location(*EIFFEL, 1234.56, "photos", 17)
    labels = locations.with_locations(_labels(), {0: eiffel})
    assert labels[0] == {
        "index": 0,
        "name": "Eiffel Tower",
        "landmark_id": "101",
        "latitude": 48.8583701,
        "longitude": 2.2944813,
        "radius_m": 1234.6,
        "location_source": "photos",
        "located_photos": 17,
    }
    assert labels[1] == _labels()[1]
    assert locations.locations_of(labels) == {0: locations.Location(*EIFFEL, 1234.6, "photos", 17)}
    assert locations.with_locations(labels, {}) == _labels()  # replaced, not merged
    latitude, longitude, radius = locations.class_arrays(labels)
    assert latitude.dtype == np.float64 and latitude.shape == (3,)
    assert latitude[0] == EIFFEL[0] and longitude[0] == EIFFEL[1] and radius[0] == 1234.6
    assert np.isnan(latitude[1:]).all() and np.isnan(radius[1:]).all()
    with pytest.raises(ValueError):
        locations.with_locations(_labels(), {3: eiffel})
    broken = [dict(labels[0], longitude="east"), *labels[1:]]
    with pytest.raises(UserError, match="entry 0"):
        locations.locations_of(broken)


def test_model_dir_labels_keep_locations_and_resume_ignores_them(tmp_path):
    """train copies the dataset's labels into model_dir (run_files), the export copies
    model_dir's (records.read_labels); a resumed run compares class names only."""
    model_dir = str(tmp_path / "run")
    config = ExperimentConfig()
    plain = _labels()
    run_files.write_run_files(model_dir, config, plain)
    located = locations.with_locations(plain, {1: locations.Location(20.9, 107.1, 9e3, "csv")})
    assert resume.differences(model_dir, config, located) == []
    changed = config.replace(prepare={"landmark_locations": "x.csv", "min_located_photos": 5})
    assert resume.differences(model_dir, changed, located) == []
    run_files.write_run_files(model_dir, config, located)
    assert records.read_labels(model_dir) == located


# --- prepare --------------------------------------------------------------------------------


def _train_ids(data_dir: str) -> set[str]:
    dataset = tf.data.TFRecordDataset(tf.io.gfile.glob(records.shard_pattern(data_dir, "train")))
    return {
        records.parse_example(serialized)[records.IMAGE_ID].numpy().decode()
        for serialized in dataset
    }


def test_prepare_stores_locations_in_labels(tmp_path):
    root = tmp_path / "photos"
    points: dict[str, tuple[float, float]] = {}
    plan = {
        "Eiffel Tower": (EIFFEL, [(0, 0), (40, -30), (-25, 60), (80, 10), (-60, -45), (9e5, 0)]),
        "Statue of Liberty": (LIBERTY, [(0, 0), (30, 30), (-30, 10), (10, -40), (5, 5)]),
        "Vịnh Hạ Long": ((20.91, 107.18), [(0, 0), (100, 100)]),  # too few with GPS
    }
    seed = 0
    for class_name, (centre, offsets) in plan.items():
        (root / class_name).mkdir(parents=True)
        for north, east in offsets:
            point = _offset(centre, north, east)
            name = f"{class_name}/{seed}.jpg"
            (root / name).write_bytes(located_photo(*point, seed=seed))
            points[name] = point
            seed += 1
        (root / class_name / "no_gps.jpg").write_bytes(photo_bytes(None, seed=seed))
    csv_path = _csv(
        tmp_path, "name,latitude,longitude,radius_m\nStatue of Liberty,40.69,-74.04,500\n"
    )
    config = PrepareConfig.build(
        source="folder",
        input_dir=str(root),
        output_dir=str(tmp_path / "out"),
        name="located",
        val_fraction=0.25,
        num_workers=1,
        landmark_locations=csv_path,
    )
    result = prepare.prepare(config, verbose=False)

    labels = records.read_labels(result.data_dir)
    by_name = {entry["name"]: entry for entry in labels}
    train = _train_ids(result.data_dir)
    eiffel_train = [points[i] for i in train if i in points and i.startswith("Eiffel")]
    median = np.median(np.array(eiffel_train), axis=0)
    eiffel = by_name["Eiffel Tower"]
    assert eiffel["location_source"] == "photos"
    assert eiffel["located_photos"] == len(eiffel_train) < 6  # validation photos never count
    distance = locations.haversine_m(eiffel["latitude"], eiffel["longitude"], *median)
    assert float(distance) < 100
    assert eiffel["radius_m"] >= locations.MIN_RADIUS_M
    liberty = by_name["Statue of Liberty"]
    assert (liberty["latitude"], liberty["longitude"], liberty["radius_m"]) == (40.69, -74.04, 500)
    assert liberty["location_source"] == "csv" and liberty["located_photos"] == 0
    assert "latitude" not in by_name["Vịnh Hạ Long"]
    stats = result.stats
    assert stats["locations"]["from_photos"] == 1 and stats["locations"]["from_file"] == 1
    per_class = {entry["name"]: entry for entry in stats["classes"]}
    assert per_class["Eiffel Tower"]["train_gps"] == len(eiffel_train)
    assert per_class["Eiffel Tower"]["train_gps"] + per_class["Eiffel Tower"]["val_gps"] == 6

    again = prepare.prepare(
        dataclasses.replace(config, landmark_locations="", overwrite=True, min_located_photos=1),
        verbose=False,
    )
    relabelled = {e["name"]: e for e in records.read_labels(again.data_dir)}
    assert relabelled["Statue of Liberty"]["location_source"] == "photos"
    assert relabelled["Vịnh Hạ Long"]["located_photos"] >= 1


def test_prepare_refuses_a_bad_locations_file_before_writing(tmp_path):
    root = tmp_path / "photos" / "Eiffel Tower"
    root.mkdir(parents=True)
    (root / "a.jpg").write_bytes(located_photo(*EIFFEL))
    bad = _csv(tmp_path, "name,lat,lon\nEifel Tower,48.8,2.3\n")
    config = PrepareConfig.build(
        source="folder",
        input_dir=str(tmp_path / "photos"),
        output_dir=str(tmp_path / "out"),
        num_workers=1,
        landmark_locations=bad,
    )
    with pytest.raises(UserError, match=r"line 2: no class is named 'Eifel Tower' \(did you mean"):
        prepare.prepare(config, verbose=False)
    assert not os.path.exists(tmp_path / "out" / "photos")
    with pytest.raises(UserError, match="min_located_photos"):
        prepare.prepare(
            dataclasses.replace(config, landmark_locations="", min_located_photos=0), verbose=False
        )


def test_a_resumed_prepare_rewrites_shards_without_gps_points(tmp_path):
    work = tmp_path / "work"
    (work / shards.RESULTS_DIR).mkdir(parents=True)
    for name, result in {
        "train-00000-of-00002.tfrecord": {"kept": 1, "gps": {}},
        "train-00001-of-00002.tfrecord": {"kept": 1},
    }.items():
        (work / name).write_bytes(b"")
        (work / shards.RESULTS_DIR / f"{name}.json").write_text(json.dumps(result))
    assert set(shards.finished_results(str(work))) == {"train-00000-of-00002.tfrecord"}
