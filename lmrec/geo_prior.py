"""A photo's own GPS as evidence: landmarks far from where it was taken lose probability.

Everything here works on arrays: class probabilities [Q, C] from any classifier
(lmrec.knn.classify), the photos' GPS [Q] (NaN where a photo has none) and the
classes' locations [C_located] (latitude, longitude, radius_m; NaN where unknown).
Reading EXIF and labels.json (lmrec.locations: photo_gps, class_arrays), and the
flags, live elsewhere.

    result = apply(probabilities, photo_lat, photo_lon, class_lat, class_lon, class_radius_m)
    scores = knn.open_set_score(kind, result.probabilities, votes)
    rejected = (scores < threshold) | result.nothing_left
    column = notes(result, class_names, rejected_before, rejected)

Each class gets a weight in [0, 1] from the distance d between the photo and the
class's location, measured against its reach r (GEO_PRIORS: off | rule_out | soft),
and its probability is multiplied by that weight:

- r is the class's radius_m raised to at least min_radius_m (DEFAULT_MIN_RADIUS_M).
  A radius is how far from its location a photo of the landmark is taken, not only
  the landmark's extent: a building is photographed from the street or across a
  river, a mountain or a bay (Ha Long Bay covers 1,500 km²) from tens of kilometres.
  GPS fixes drift too. A class whose location is unknown keeps weight 1, as do the
  columns past the located ones (landmarks added to a gallery without a location).
- A photo without GPS keeps its probabilities exactly, in every mode. So does a
  photo whose GPS is out of range or exactly (0, 0), the placeholder cameras write
  without a fix.

The kept probabilities are not renormalised. Each row sums to at most what it summed
to before, and what GPS took away joins the "no landmark" share (1 minus the row's
sum, as knn_probabilities and hybrid already leave it). A photo taken far from every
known landmark keeps only the mass of classes without a location, and leans to "no
landmark" rather than to the nearest landmark. Renormalising would turn "the
classifier thinks it is the Eiffel Tower, and GPS says it is 8,000 km from it" into
certainty about some landmark the classifier barely considered.

How the open-set scores (lmrec.knn.OPEN_SET_SCORES) read the adjusted rows:
top_probability falls to the best class that is left, at its unscaled probability, so
a threshold above 0 rejects a photo whose remaining mass is small; margin may rise
(GPS rules out the runner-up) as well as fall; top_similarity and vote_share read the
kNN votes and do not move at all. A photo GPS leaves with no class at all
(GeoResult.nothing_left) has top_probability 0, which the default threshold of 0
does not reject, so a caller rejects nothing_left rows whatever its score.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import tensorflow as tf

from lmrec.errors import UserError
from lmrec.locations import EARTH_RADIUS_M, haversine_m
from lmrec.metrics import NO_LANDMARK, NO_LANDMARK_NAME
from lmrec.registry import Registry

# --geo_prior: rule_out. A photo taken 1,000 km from the Eiffel Tower cannot show it
# (a replica in Las Vegas is not the Eiffel Tower), and when a photo's GPS is wrong the
# answer becomes "no landmark" with a note saying why, never a confident wrong tag.
# Soft suits locations whose radii are not curated.
DEFAULT_MODE = "rule_out"
# --geo_prior_min_radius_m: every located class reaches at least this far. 5 km covers
# GPS drift and the usual viewpoints of a city landmark (across a river or harbour, a
# skyline from a hill: Sacré-Cœur to the Eiffel Tower is 4.7 km) while other cities,
# where replicas and look-alikes stand, stay out of reach. Mountains, bays and other
# landmarks seen from farther need their own radius_m in labels.json.
DEFAULT_MIN_RADIUS_M = 5_000.0
# --geo_prior_scale_km: soft mode's weight is exp(-(d - r) / scale) past the radius.
# 10 km past the radius keeps 37%, 25 km 8%, 50 km (the next town) 0.7%.
DEFAULT_SCALE_KM = 10.0
# Soft mode rules a class out below this weight (about 14 scales past its radius,
# 140 km at the default scale), so a photo on another continent ends as "no landmark"
# in both modes rather than on a probability of 1e-30 that the default threshold of 0
# would still accept.
SOFT_RULE_OUT_WEIGHT = 1e-6

# Distances are computed for this many (photo, located class) pairs at a time, so a
# batch against 200,000 GLDv2 landmarks takes 128 MiB rather than its full matrix.
_BLOCK_PAIRS = 1 << 24


def _haversine_m_tf(lat1, lon1, lat2, lon2) -> tf.Tensor:
    """lmrec.locations.haversine_m in TensorFlow ops (float64, broadcasting)."""
    lat1, lon1, lat2, lon2 = (
        tf.cast(v, tf.float64) * (math.pi / 180.0) for v in (lat1, lon1, lat2, lon2)
    )
    a = (
        tf.sin((lat2 - lat1) / 2.0) ** 2
        + tf.cos(lat1) * tf.cos(lat2) * tf.sin((lon2 - lon1) / 2.0) ** 2
    )
    return 2.0 * EARTH_RADIUS_M * tf.asin(tf.sqrt(tf.minimum(a, 1.0)))


# ---------------------------------------------------------------------------------------
# The modes


def _rule_out(excess_m, scale_m):
    """Weight 1 within the reach, 0 beyond it."""
    return np.where(excess_m > 0.0, 0.0, 1.0)


def _rule_out_tf(excess_m, scale_m):
    return tf.where(excess_m > 0.0, tf.zeros_like(excess_m), tf.ones_like(excess_m))


def _soft(excess_m, scale_m):
    """exp(-excess / scale) past the reach, 0 below SOFT_RULE_OUT_WEIGHT.

    Exponential rather than Gaussian: for a positive excess distance with a known mean
    it is the maximum-entropy choice, and its tail is heavier, so an unusually distant
    viewpoint is weakened rather than erased within a few scales.
    """
    weight = np.exp(-np.maximum(excess_m, 0.0) / scale_m)
    return np.where(weight < SOFT_RULE_OUT_WEIGHT, 0.0, weight)


def _soft_tf(excess_m, scale_m):
    weight = tf.exp(-tf.maximum(excess_m, 0.0) / scale_m)
    return tf.where(weight < SOFT_RULE_OUT_WEIGHT, tf.zeros_like(weight), weight)


class GeoPriorSpec(NamedTuple):
    """One way to weigh a class by how far past its reach a photo was taken.

    weights(excess_m, scale_m) -> weights in [0, 1] (numpy), weights_tf the same in
    TensorFlow ops; excess_m = distance - reach, <= 0 within it. None for off.
    uses_scale says whether --geo_prior_scale_km matters.
    """

    weights: Callable | None
    weights_tf: Callable | None
    uses_scale: bool
    description: str


GEO_PRIORS: Registry[GeoPriorSpec] = Registry(
    "geo prior",
    {
        "off": GeoPriorSpec(
            None, None, False, "GPS ignored: the classifier's probabilities as they are"
        ),
        "rule_out": GeoPriorSpec(
            _rule_out,
            _rule_out_tf,
            False,
            "a landmark farther from the photo than its radius gets probability 0",
        ),
        "soft": GeoPriorSpec(
            _soft,
            _soft_tf,
            True,
            "probability times exp(-(distance - radius) / --geo_prior_scale_km) past the radius",
        ),
    },
    flag="geo_prior",
)


# ---------------------------------------------------------------------------------------
# Applying it


class GeoResult(NamedTuple):
    """Class probabilities after the geo prior, and what GPS said about each photo.

    probabilities: [Q, C] the input's dtype, each entry at most the input's; rows
      without GPS are the input's exactly. 1 minus a row's sum is its "no landmark" share.
    before, after: [Q] int64 top class before and after (NO_LANDMARK for a row with no
      probability left), without any open-set threshold.
    changed: [Q] bool, after != before.
    nothing_left: [Q] bool, GPS took every class the photo had some probability for.
    far_from_all: [Q] bool, GPS known, some class located, none within its reach.
    nearest_km: [Q] float64 distance to the nearest located class; NaN without GPS.
    nearest_class: [Q] int64 that class, -1 without one.
    cause: [Q] int64 the class GPS weighed down that a note names: the top class before
      when it lost probability, else the class that lost the most; -1 when none lost any.
    cause_km, cause_weight: [Q] float64 its distance and weight (NaN without a cause).
    """

    probabilities: np.ndarray
    before: np.ndarray
    after: np.ndarray
    changed: np.ndarray
    nothing_left: np.ndarray
    far_from_all: np.ndarray
    nearest_km: np.ndarray
    nearest_class: np.ndarray
    cause: np.ndarray
    cause_km: np.ndarray
    cause_weight: np.ndarray


def answers(probabilities, rejected=None) -> np.ndarray:
    """[Q] int64 top class of each row; NO_LANDMARK where rejected or the row has no mass.

    Compare answers(before, rejected_before) with answers(after, rejected_after) for
    the photos whose answer GPS changed once the open-set threshold is applied.
    """
    probabilities = np.asarray(probabilities)
    if probabilities.shape[1] == 0:
        return np.full(len(probabilities), NO_LANDMARK, np.int64)
    top = np.argmax(probabilities, axis=1).astype(np.int64)
    empty = ~(np.max(probabilities, axis=1) > 0)
    if rejected is not None:
        empty |= np.asarray(rejected, bool)
    return np.where(empty, NO_LANDMARK, top)


def _valid_gps(lat, lon) -> np.ndarray:
    """Coordinates usable as a location: finite, in range, and not exactly (0, 0)."""
    with np.errstate(invalid="ignore"):
        return (
            np.isfinite(lat)
            & np.isfinite(lon)
            & (np.abs(lat) <= 90.0)
            & (np.abs(lon) <= 180.0)
            & ~((lat == 0.0) & (lon == 0.0))
        )


def _check(
    probabilities, photo_lat, photo_lon, class_lat, class_lon, class_radius_m, min_radius_m
) -> None:
    if probabilities.ndim != 2:
        raise UserError(
            f"The geo prior takes probabilities [Q, C], got shape {probabilities.shape}"
        )
    queries, classes = probabilities.shape
    if photo_lat.shape != (queries,) or photo_lon.shape != (queries,):
        raise UserError(
            f"The geo prior needs one latitude and longitude per photo ({queries}), got shapes "
            f"{photo_lat.shape} and {photo_lon.shape}"
        )
    if not class_lat.shape == class_lon.shape == class_radius_m.shape or class_lat.ndim != 1:
        raise UserError(
            "Class latitudes, longitudes and radii must be three vectors of one length, got "
            f"shapes {class_lat.shape}, {class_lon.shape} and {class_radius_m.shape}"
        )
    if len(class_lat) > classes:
        raise UserError(
            f"{len(class_lat)} class locations for {classes} classes: a location belongs "
            "to each of the first classes, in order"
        )
    if not min_radius_m >= 0.0:
        raise UserError(f"--geo_prior_min_radius_m must be at least 0, got {min_radius_m}")


def _locations(class_lat, class_lon, class_radius_m, min_radius_m):
    """(indices of the located classes, their reach in metres)."""
    located = np.flatnonzero(_valid_gps(class_lat, class_lon))
    radius = class_radius_m[located]
    with np.errstate(invalid="ignore"):
        radius = np.where(np.isfinite(radius) & (radius > 0.0), radius, 0.0)
    return located, np.maximum(radius, min_radius_m)


def apply(
    probabilities,
    photo_lat,
    photo_lon,
    class_lat,
    class_lon,
    class_radius_m,
    mode: str = DEFAULT_MODE,
    min_radius_m: float = DEFAULT_MIN_RADIUS_M,
    scale_km: float = DEFAULT_SCALE_KM,
) -> GeoResult:
    """Class probabilities weighed by how far each located class is from the photo.

    Args:
      probabilities: [Q, C] from a classifier, each row summing to at most 1.
      photo_lat, photo_lon: [Q] degrees; NaN (or out of range, or exactly 0, 0) where a
        photo has no GPS.
      class_lat, class_lon, class_radius_m: [C_located], C_located <= C, the first
        classes' locations; NaN where unknown. Classes past C_located have none.
      mode: a GEO_PRIORS name.
      min_radius_m: the least reach of a located class.
      scale_km: soft mode's decay length past the reach.

    Returns:
      GeoResult. In mode off the probabilities are the input's and before == after;
      nearest_km, nearest_class and far_from_all still describe the photo.

    Raises:
      UserError: an unknown mode, shapes that do not fit, a negative minimum radius or
        (soft) a scale that is not positive.
    """
    spec = GEO_PRIORS.get(mode)
    probabilities = np.asarray(probabilities)
    photo_lat, photo_lon = (np.asarray(v, np.float64).reshape(-1) for v in (photo_lat, photo_lon))
    class_lat, class_lon, class_radius_m = (
        np.asarray(v, np.float64).reshape(-1) for v in (class_lat, class_lon, class_radius_m)
    )
    _check(probabilities, photo_lat, photo_lon, class_lat, class_lon, class_radius_m, min_radius_m)
    if spec.uses_scale and not scale_km > 0.0:
        raise UserError(f"--geo_prior_scale_km must be above 0, got {scale_km}")
    queries = len(probabilities)
    located, reach = _locations(class_lat, class_lon, class_radius_m, min_radius_m)
    has_gps = _valid_gps(photo_lat, photo_lon)

    adjusted = probabilities.copy()
    nearest_km = np.full(queries, np.nan)
    nearest_class = np.full(queries, -1, np.int64)
    far_from_all = np.zeros(queries, bool)
    cause = np.full(queries, -1, np.int64)
    cause_km = np.full(queries, np.nan)
    cause_weight = np.full(queries, np.nan)
    before = answers(probabilities)
    position_of = np.full(probabilities.shape[1], -1, np.int64)  # class -> located position
    position_of[located] = np.arange(len(located))

    rows = np.flatnonzero(has_gps) if len(located) else np.zeros(0, np.int64)
    block = max(1, _BLOCK_PAIRS // max(len(located), 1))
    for start in range(0, len(rows), block):
        at = rows[start : start + block]
        distance = haversine_m(
            photo_lat[at, None], photo_lon[at, None], class_lat[located], class_lon[located]
        )
        excess = distance - reach
        closest = np.argmin(distance, axis=1)
        nearest_km[at] = distance[np.arange(len(at)), closest] / 1000.0
        nearest_class[at] = located[closest]
        far_from_all[at] = np.all(excess > 0.0, axis=1)
        if spec.weights is None:
            continue
        weights = spec.weights(excess, scale_km * 1000.0)
        kept = probabilities[at][:, located]
        scaled = np.where(weights < 1.0, kept * weights.astype(probabilities.dtype), kept)
        adjusted[at[:, None], located] = scaled
        # The class a note names: the top class before when it lost probability, else
        # the class that lost the most.
        lost = kept.astype(np.float64) - scaled
        pick = np.arange(len(at))
        top_position = position_of[np.maximum(before[at], 0)]
        top_lost = (before[at] >= 0) & (top_position >= 0)
        top_lost &= lost[pick, np.maximum(top_position, 0)] > 0.0
        position = np.where(top_lost, top_position, np.argmax(lost, axis=1))
        any_lost = np.max(lost, axis=1) > 0.0
        cause[at] = np.where(any_lost, located[position], -1)
        cause_km[at] = np.where(any_lost, distance[pick, position] / 1000.0, np.nan)
        cause_weight[at] = np.where(any_lost, weights[pick, position], np.nan)

    after = answers(adjusted)
    return GeoResult(
        probabilities=adjusted,
        before=before,
        after=after,
        changed=after != before,
        nothing_left=(before != NO_LANDMARK) & (after == NO_LANDMARK),
        far_from_all=far_from_all,
        nearest_km=nearest_km,
        nearest_class=nearest_class,
        cause=cause,
        cause_km=cause_km,
        cause_weight=cause_weight,
    )


def apply_tf(
    probabilities,
    photo_lat,
    photo_lon,
    class_lat,
    class_lon,
    class_radius_m,
    mode: str = DEFAULT_MODE,
    min_radius_m: float = DEFAULT_MIN_RADIUS_M,
    scale_km: float = DEFAULT_SCALE_KM,
) -> tf.Tensor:
    """apply's probabilities [Q, C] in TensorFlow ops only, for a graph with a GPS input.

    Same arguments and rules as apply (mode, min_radius_m and scale_km are Python
    values); rows without GPS come back unchanged. Builds the whole [Q, C_located]
    distance matrix, which suits a serving batch.
    """
    spec = GEO_PRIORS.get(mode)
    probabilities = tf.convert_to_tensor(probabilities)
    if spec.weights_tf is None:
        return tf.identity(probabilities)
    if not min_radius_m >= 0.0:
        raise UserError(f"--geo_prior_min_radius_m must be at least 0, got {min_radius_m}")
    if spec.uses_scale and not scale_km > 0.0:
        raise UserError(f"--geo_prior_scale_km must be above 0, got {scale_km}")

    def valid(lat, lon):
        finite = tf.math.is_finite(lat) & tf.math.is_finite(lon)
        in_range = (tf.abs(lat) <= 90.0) & (tf.abs(lon) <= 180.0)
        return finite & in_range & ~((lat == 0.0) & (lon == 0.0))

    photo_lat, photo_lon, class_lat, class_lon, class_radius_m = (
        tf.reshape(tf.cast(v, tf.float64), [-1])
        for v in (photo_lat, photo_lon, class_lat, class_lon, class_radius_m)
    )
    class_ok = valid(class_lat, class_lon)
    radius = tf.where(
        tf.math.is_finite(class_radius_m) & (class_radius_m > 0.0),
        class_radius_m,
        tf.zeros_like(class_radius_m),
    )
    reach = tf.maximum(radius, tf.constant(min_radius_m, tf.float64))
    distance = _haversine_m_tf(photo_lat[:, None], photo_lon[:, None], class_lat, class_lon)
    weights = spec.weights_tf(distance - reach, tf.constant(scale_km * 1000.0, tf.float64))
    use = valid(photo_lat, photo_lon)[:, None] & class_ok[None, :]
    weights = tf.where(use, weights, tf.ones_like(weights))
    unlocated = tf.shape(probabilities)[1] - tf.shape(weights)[1]
    weights = tf.pad(weights, [[0, 0], [0, unlocated]], constant_values=1.0)
    scaled = probabilities * tf.cast(weights, probabilities.dtype)
    return tf.where(weights < 1.0, scaled, probabilities)


# ---------------------------------------------------------------------------------------
# What a person reads


def distance_text(km: float) -> str:
    """A distance as a person writes it: "850 m", "4.7 km", "9,300 km"."""
    if km < 1.0:
        return f"{km * 1000.0:.0f} m"
    if km < 10.0:
        return f"{km:.1f} km"
    return f"{km:,.0f} km"


def notes(result: GeoResult, class_names, rejected_before=None, rejected_after=None) -> list[str]:
    """[Q] one short line per photo whose answer GPS changed, "" for the others.

    "GPS 9,300 km from Eiffel Tower: ruled out; now Ha Long Bay". With the open-set
    rejections before and after the prior, a photo that the threshold rejects (or
    accepts) because of GPS gets its line too.
    """

    def name(index: int) -> str:
        return NO_LANDMARK_NAME if index == NO_LANDMARK else str(class_names[index])

    before = np.where(
        np.asarray(rejected_before, bool) if rejected_before is not None else False,
        NO_LANDMARK,
        result.before,
    )
    after = np.where(
        np.asarray(rejected_after, bool) if rejected_after is not None else False,
        NO_LANDMARK,
        result.after,
    )
    lines = []
    for i in range(len(before)):
        if before[i] == after[i]:
            lines.append("")
            continue
        cause = int(result.cause[i])
        if cause < 0:
            text = "GPS changed the answer"
        else:
            weight = float(result.cause_weight[i])
            effect = "ruled out" if weight == 0.0 else f"weight {weight:.2g}"
            text = f"GPS {distance_text(float(result.cause_km[i]))} from {name(cause)}: {effect}"
        text += f"; now {name(int(after[i]))}"
        if after[i] == NO_LANDMARK and result.far_from_all[i]:
            text += " (far from every known landmark)"
        lines.append(text)
    return lines
