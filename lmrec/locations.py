"""Where each landmark is: latitude, longitude and a radius per class, kept in labels.json.

A class's location comes from the GPS (EXIF) of its training photos, or from a
CSV the user gives (--landmark_locations; scripts/fetch_landmark_locations.py
writes one for Google Landmarks v2 from Wikimedia Commons and Wikidata). It is
metadata beside the class, for whatever wants to weigh a prediction by where a
photo was taken; the classifier never sees it.

labels.json entries with a location carry five more keys beside index, name and
landmark_id (LOCATION_KEYS): latitude and longitude (degrees, WGS84), radius_m
(how far from the centre the landmark's photos are taken), location_source
("photos", "csv", or the source a CSV row names, e.g. "commons" or "wikidata")
and located_photos (how many photos with GPS the location came from; 0 when it
came from a file). Entries without a location have none of them.

A centre from photos is the coordinate-wise median of their positions: half
the photos may be anywhere (a mislabelled photo, a camera with a stale fix)
without moving it far. The radius is the SPREAD_PERCENTILE-th percentile of the
photos' distances from it, never below MIN_RADIUS_M: a landmark is seen from
around it, and a handful of photos taken at one spot says little about how far.
"""

from __future__ import annotations

import csv
import difflib
import io
import math
import os
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from lmrec.data import images
from lmrec.errors import UserError

EARTH_RADIUS_M = 6_371_008.8  # mean Earth radius (IUGG), what haversine distances use
DEFAULT_MIN_LOCATED_PHOTOS = 3  # fewer photos with GPS than this: no location from photos
SPREAD_PERCENTILE = 90.0  # radius: this percentile of the photos' distances from the centre
MIN_RADIUS_M = 1000.0  # the smallest radius stored, and a CSV row's radius when it has none

# The labels.json keys a location adds to an entry.
LATITUDE, LONGITUDE, RADIUS, SOURCE, PHOTOS = (
    "latitude",
    "longitude",
    "radius_m",
    "location_source",
    "located_photos",
)
LOCATION_KEYS = (LATITUDE, LONGITUDE, RADIUS, SOURCE, PHOTOS)

# CSV columns read by read_locations_csv: each entry's names are accepted aliases.
CSV_NAME = ("name",)
CSV_LANDMARK_ID = ("landmark_id",)
CSV_LATITUDE = ("latitude", "lat")
CSV_LONGITUDE = ("longitude", "lon", "lng")
CSV_RADIUS = ("radius_m", "radius")
CSV_SOURCE = ("source",)

_GPS_IFD = 0x8825
_GPS_LATITUDE_REF, _GPS_LATITUDE, _GPS_LONGITUDE_REF, _GPS_LONGITUDE = 1, 2, 3, 4
_GPS_STATUS = 9
# What photo_gps hands Pillow: the formats lmrec reads (images.READ_FORMATS); Pillow's
# JPEG opener also returns MPO images. Other plugins never parse a photo's bytes.
_OPENERS = tuple(name for name in images.READ_FORMATS if name != "MPO")


@dataclass(frozen=True)
class Location:
    """Where a landmark is.

    Attributes:
      latitude, longitude: the centre in degrees (WGS84); longitude in [-180, 180].
      radius_m: how far from the centre its photos are taken, in metres.
      source: where it came from: "photos", "csv", or a CSV row's own source.
      photos: how many photos with GPS it came from (0 when it came from a file).
    """

    latitude: float
    longitude: float
    radius_m: float
    source: str
    photos: int = 0


# --- photos ---------------------------------------------------------------------------------


def photo_gps(photo: str | os.PathLike | bytes | bytearray) -> tuple[float, float] | None:
    """(latitude, longitude) in degrees from a photo's EXIF GPS, or None.

    Reads the GPS IFD's latitude and longitude (degrees, minutes, seconds as
    rationals) with their N/S and E/W references. HEIC works when pillow-heif is
    installed (lmrec.data.images registers it). Only the header is parsed; no
    pixel is decoded.

    Args:
      photo: a file path (read within images.DEFAULT_LIMITS) or the file's bytes.

    Returns:
      None when the photo has no GPS, a reference is missing or unknown (the
      hemisphere is then unknown), GPSStatus says void (a receiver without a fix;
      its coordinates may be stale or 0, 0), or a value is not a finite number or
      out of range. Never raises: a bad file is only a photo without a location.
    """
    try:
        if isinstance(photo, bytes | bytearray | memoryview):
            data = bytes(photo)
        else:
            data = images.read_file(os.fspath(photo))
        with Image.open(io.BytesIO(data), formats=_OPENERS) as image:
            if image.format == "PNG" and "exif" not in image.info:
                return None  # an eXIf chunk after the pixels: Pillow would decode them to look
            gps = image.getexif().get_ifd(_GPS_IFD)
        if not gps or _text(gps.get(_GPS_STATUS)) == "V":
            return None
        latitude = _degrees(gps.get(_GPS_LATITUDE), _text(gps.get(_GPS_LATITUDE_REF)), "N", "S")
        longitude = _degrees(gps.get(_GPS_LONGITUDE), _text(gps.get(_GPS_LONGITUDE_REF)), "E", "W")
    except Exception:  # noqa: BLE001 - any file may be hostile; see the docstring.
        return None
    if latitude is None or longitude is None or abs(latitude) > 90 or abs(longitude) > 180:
        return None
    return latitude, longitude


def _text(value: Any) -> str:
    """An EXIF ASCII value ('N', b'N\\x00') as upper-case text without padding."""
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    return str(value or "").strip("\x00 ").upper()


def _degrees(value: Any, ref: str, positive: str, negative: str) -> float | None:
    """Degrees from 1-3 rationals (degrees, minutes, seconds), signed by the reference."""
    if ref not in (positive, negative) or value is None:
        return None
    parts = tuple(value) if isinstance(value, tuple | list) else (value,)
    if not 1 <= len(parts) <= 3:
        return None
    total = 0.0
    for position, part in enumerate(parts):
        number = float(part)
        if not math.isfinite(number) or number < 0:
            return None
        total += number / 60**position
    return -total if ref == negative else total


def haversine_m(lat1: Any, lon1: Any, lat2: Any, lon2: Any) -> np.ndarray:
    """Great-circle distances in metres between points in degrees (numpy broadcasting)."""
    phi1, phi2 = np.radians(lat1), np.radians(lat2)
    dphi = phi2 - phi1
    dlambda = np.radians(np.asarray(lon2, dtype=np.float64) - np.asarray(lon1, dtype=np.float64))
    a = np.sin(dphi / 2) ** 2 + np.cos(phi1) * np.cos(phi2) * np.sin(dlambda / 2) ** 2
    return 2 * EARTH_RADIUS_M * np.arcsin(np.sqrt(np.clip(a, 0.0, 1.0)))


def centre_and_spread(
    points: Sequence[Sequence[float]] | np.ndarray,
    min_photos: int = DEFAULT_MIN_LOCATED_PHOTOS,
    percentile: float = SPREAD_PERCENTILE,
    min_radius_m: float = MIN_RADIUS_M,
) -> Location | None:
    """A landmark's Location from its photos' (latitude, longitude) points.

    The centre is the coordinate-wise median. Longitudes are unwrapped around a
    reference before the median (first the first point, then that first median),
    so photos on both sides of the antimeridian (Fiji's 180th meridian) get a
    centre between them rather than near 0°; the reference inside the cluster
    keeps the cut on the far side of the globe.

    Args:
      points: [N, 2] latitudes and longitudes in degrees; non-finite or out-of-range
        rows are left out.
      min_photos: fewer usable points than this gives None.
      percentile: the radius is this percentile of the distances from the centre.
      min_radius_m: the radius is never smaller than this.

    Returns:
      Location(source="photos", photos=N), or None for too few points.
    """
    array = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    usable = np.isfinite(array).all(axis=1)
    usable &= (np.abs(array[:, 0]) <= 90) & (np.abs(array[:, 1]) <= 180)
    array = array[usable]
    if len(array) < max(1, min_photos):
        return None
    latitudes, longitudes = array[:, 0], array[:, 1]
    reference = longitudes[0]
    for _ in range(2):
        reference = reference + float(np.median(_wrap(longitudes - reference)))
    latitude = float(np.median(latitudes))
    longitude = float(_wrap(np.float64(reference)))
    distances = haversine_m(latitude, longitude, latitudes, longitudes)
    radius = max(float(min_radius_m), float(np.percentile(distances, percentile)))
    return Location(latitude, longitude, radius, "photos", int(len(array)))


def _wrap(longitude: np.ndarray) -> np.ndarray:
    """Longitudes into [-180, 180)."""
    return (longitude + 180.0) % 360.0 - 180.0


def class_locations(
    points_by_class: Mapping[str, Sequence[Sequence[float]] | np.ndarray],
    min_photos: int = DEFAULT_MIN_LOCATED_PHOTOS,
) -> dict[str, Location]:
    """centre_and_spread for each class; classes with too few points are left out."""
    found = {}
    for class_name, points in points_by_class.items():
        location = centre_and_spread(points, min_photos)
        if location is not None:
            found[class_name] = location
    return found


# --- a user's CSV ---------------------------------------------------------------------------


def read_locations_csv(
    path: str,
    class_names: Sequence[str],
    landmark_ids: Mapping[str, str] | Sequence[str] = (),
) -> dict[int, Location]:
    """Reads landmark locations from a CSV file (--landmark_locations).

    The header names the columns (any order, case-insensitive): `name` and/or
    `landmark_id`, `latitude` (or `lat`), `longitude` (or `lon`, `lng`), and
    optionally `radius_m` (or `radius`; MIN_RADIUS_M when absent or empty) and
    `source` (stored as location_source; "csv" when absent or empty). UTF-8, with
    or without a byte-order mark.

    A row with a landmark_id belongs to the class with that id, when the classes
    have ids (GLDv2, TFRecords); a row whose id no class has is left out, since a
    file may list more landmarks than one dataset holds (the fetch script's covers
    a whole GLDv2 selection). Other rows belong to the class with their name
    (Unicode NFC, exact). A row with both coordinates empty says the landmark's
    location is unknown and is left out too.

    Args:
      path: the CSV file.
      class_names: the classes, in label order.
      landmark_ids: each class's landmark id, by class name or in label order.

    Returns:
      label index -> Location, for the classes the file locates.

    Raises:
      UserError: a missing or non-UTF-8 file, a header without the columns, or a
        bad row (not a number, out of range, a name no class has, a class twice);
        the message names the file, the line and the problem, and suggests close
        class names.
    """
    if isinstance(landmark_ids, Mapping):
        ids = [str(landmark_ids.get(name, "")) for name in class_names]
    else:
        ids = [str(value) for value in landmark_ids] or [""] * len(class_names)
    index_of_id = {value.strip(): i for i, value in reversed(list(enumerate(ids))) if value}
    index_of_name = {_nfc(name): i for i, name in reversed(list(enumerate(class_names)))}
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            return _read_rows(path, csv.reader(f), class_names, index_of_id, index_of_name)
    except FileNotFoundError:
        raise UserError(f"--landmark_locations={path}: no such file") from None
    except IsADirectoryError:
        raise UserError(f"--landmark_locations={path} is a folder, not a CSV file") from None
    except UnicodeDecodeError as error:
        raise UserError(
            f"{path} is not UTF-8 text (byte {error.start}: {error.reason}); save it as UTF-8"
        ) from None
    except csv.Error as error:
        raise UserError(f"{path}: not a readable CSV file ({error})") from None


def _nfc(text: str) -> str:
    return unicodedata.normalize("NFC", text.strip())


def _read_rows(
    path: str,
    reader: Any,
    class_names: Sequence[str],
    index_of_id: dict[str, int],
    index_of_name: dict[str, int],
) -> dict[int, Location]:
    header = next(reader, None)
    if not header or not any(cell.strip() for cell in header):
        raise UserError(f"{path} is empty: it needs a header line, e.g. name,latitude,longitude")
    columns = {
        key: _column(path, header, aliases)
        for key, aliases in (
            ("name", CSV_NAME),
            ("id", CSV_LANDMARK_ID),
            ("lat", CSV_LATITUDE),
            ("lon", CSV_LONGITUDE),
            ("radius", CSV_RADIUS),
            ("source", CSV_SOURCE),
        )
    }
    if (
        columns["name"] is None
        and columns["id"] is None
        or None in (columns["lat"], columns["lon"])
    ):
        raise UserError(
            f"{path}, line 1: the header needs name or landmark_id, latitude (or lat) and "
            f"longitude (or lon, lng) columns; it has {', '.join(header)}"
        )
    found: dict[int, Location] = {}
    line_of: dict[int, int] = {}
    rows = 0
    for row in reader:
        line = reader.line_num
        if not any(cell.strip() for cell in row):
            continue
        rows += 1

        def cell(key: str, row: list[str] = row) -> str:
            column = columns[key]
            return row[column].strip() if column is not None and column < len(row) else ""

        def bad(problem: str, line: int = line) -> UserError:
            return UserError(f"{path}, line {line}: {problem}")

        if len(row) > len(header):
            raise bad(f"{len(row)} fields, but the header has {len(header)}")
        landmark_id, name = cell("id"), _nfc(cell("name"))
        if landmark_id and index_of_id:
            if landmark_id not in index_of_id:
                continue  # a landmark this dataset does not hold
            index = index_of_id[landmark_id]
        elif name:
            if name not in index_of_name:
                raise bad(f"no class is named {name!r}{_suggestion(name, class_names)}")
            index = index_of_name[name]
        elif landmark_id:
            raise bad(f"landmark_id {landmark_id}, but this dataset's classes have no ids: name it")
        else:
            raise bad("neither a name nor a landmark_id")
        if not cell("lat") and not cell("lon"):
            continue  # the file says this landmark's location is unknown
        latitude = _number(cell("lat"), "latitude", bad)
        longitude = _number(cell("lon"), "longitude", bad)
        if abs(latitude) > 90:
            raise bad(f"latitude {latitude:g} is not within [-90, 90] degrees")
        if abs(longitude) > 180:
            raise bad(f"longitude {longitude:g} is not within [-180, 180] degrees")
        radius = MIN_RADIUS_M
        if cell("radius"):
            radius = _number(cell("radius"), "radius_m", bad)
            if radius <= 0:
                raise bad(f"radius_m must be a positive number of metres, got {radius:g}")
        if index in line_of:
            raise bad(
                f"class {class_names[index]!r} already has a location (line {line_of[index]})"
            )
        line_of[index] = line
        found[index] = Location(latitude, longitude, radius, cell("source") or "csv", 0)
    if rows and not line_of:
        more = ", ..." if len(class_names) > 5 else ""
        raise UserError(
            f"{path}: none of its {rows} rows names a class of this dataset "
            f"(classes: {', '.join(map(repr, class_names[:5]))}{more})"
        )
    return found


def _column(path: str, header: list[str], aliases: tuple[str, ...]) -> int | None:
    """The position of the one header cell among aliases (case-insensitive), or None."""
    matches = [i for i, cell in enumerate(header) if cell.strip().lower() in aliases]
    if len(matches) > 1:
        names = ", ".join(header[i].strip() for i in matches)
        raise UserError(f"{path}, line 1: the header names one column twice ({names})")
    return matches[0] if matches else None


def _number(text: str, what: str, bad: Any) -> float:
    try:
        value = float(text)
    except ValueError:
        raise bad(f"{what} {text!r} is not a number (degrees as decimals, e.g. 48.8584)") from None
    if not math.isfinite(value):
        raise bad(f"{what} {text!r} is not a finite number")
    return value


def _suggestion(name: str, class_names: Sequence[str]) -> str:
    """' (did you mean 'A'?)' with the closest class names, or ''."""
    by_folded = {_nfc(c).casefold(): c for c in reversed(class_names)}
    close = difflib.get_close_matches(name.casefold(), list(by_folded), n=3, cutoff=0.6)
    return f" (did you mean {' or '.join(repr(by_folded[c]) for c in close)}?)" if close else ""


# --- labels.json ----------------------------------------------------------------------------


def with_locations(
    labels: Sequence[Mapping[str, Any]], locations: Mapping[int, Location]
) -> list[dict[str, Any]]:
    """labels.json entries with exactly these locations (other entries lose theirs).

    Args:
      labels: [{"index", "name", "landmark_id", ...}] ordered by index.
      locations: label index -> Location.

    Returns:
      New entries; the given ones are not changed.

    Raises:
      ValueError: a location for an index labels does not have.
    """
    unknown = sorted(set(locations) - set(range(len(labels))))
    if unknown:
        raise ValueError(f"locations for labels {unknown[:5]} that are not in labels.json")
    entries = []
    for index, entry in enumerate(labels):
        new = {key: value for key, value in entry.items() if key not in LOCATION_KEYS}
        location = locations.get(index)
        if location is not None:
            new[LATITUDE] = round(float(location.latitude), 7)  # ~1 cm
            new[LONGITUDE] = round(float(location.longitude), 7)
            new[RADIUS] = round(float(location.radius_m), 1)
            new[SOURCE] = location.source
            new[PHOTOS] = int(location.photos)
        entries.append(new)
    return entries


def locations_of(labels: Iterable[Mapping[str, Any]]) -> dict[int, Location]:
    """The locations labels.json entries hold: label index -> Location.

    Raises:
      UserError: an entry with a latitude but no valid longitude, or values that are
        not finite numbers in range.
    """
    found = {}
    for position, entry in enumerate(labels):
        if entry.get(LATITUDE) is None and entry.get(LONGITUDE) is None:
            continue
        index = entry.get("index", position)
        try:
            latitude, longitude = float(entry[LATITUDE]), float(entry[LONGITUDE])
            radius = float(entry.get(RADIUS, MIN_RADIUS_M))
            photos = int(entry.get(PHOTOS, 0))
            valid = (
                abs(latitude) <= 90
                and abs(longitude) <= 180
                and math.isfinite(radius)
                and radius > 0
            )
        except (KeyError, TypeError, ValueError):
            valid = False
        if not valid:
            located = {key: entry.get(key) for key in LOCATION_KEYS}
            raise UserError(
                f"labels.json entry {index} ({entry.get('name')!r}): bad location {located}"
            )
        found[index] = Location(latitude, longitude, radius, str(entry.get(SOURCE, "")), photos)
    return found


def class_arrays(labels: Sequence[Mapping[str, Any]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(latitude, longitude, radius_m) float64 arrays [num classes], NaN where unknown."""
    size = len(labels)
    latitude, longitude, radius = (np.full(size, np.nan) for _ in range(3))
    for index, location in locations_of(labels).items():
        latitude[index] = location.latitude
        longitude[index] = location.longitude
        radius[index] = location.radius_m
    return latitude, longitude, radius
