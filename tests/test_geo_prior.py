"""lmrec.geo_prior: a photo's GPS rules out or weighs down landmarks far from it."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lmrec import geo_prior, knn, locations
from lmrec.errors import UserError
from lmrec.metrics import NO_LANDMARK

NAN = float("nan")
EIFFEL = (48.8584, 2.2945)
SACRE_COEUR = (48.8867, 2.3431)  # 4.7 km from the Eiffel Tower
BIG_BEN = (51.5007, -0.1246)  # 341 km from it
HA_LONG_BAY = (20.9101, 107.1839)  # 9,300 km from it
SYDNEY = (-33.8568, 151.2153)
NAMES = ["Eiffel Tower", "Big Ben", "Ha Long Bay", "Added without a location"]
# Eiffel Tower, Big Ben (no radius known), Ha Long Bay (25 km), and a gallery class past
# the located ones.
CLASS_LAT = np.array([EIFFEL[0], BIG_BEN[0], HA_LONG_BAY[0]])
CLASS_LON = np.array([EIFFEL[1], BIG_BEN[1], HA_LONG_BAY[1]])
CLASS_RADIUS = np.array([300.0, NAN, 25_000.0])
MODES = geo_prior.GEO_PRIORS.names()


def _apply(probabilities, photos, mode="rule_out", **kwargs):
    photos = np.array(photos, np.float64).reshape(-1, 2)
    return geo_prior.apply(
        np.asarray(probabilities, np.float32),
        photos[:, 0],
        photos[:, 1],
        CLASS_LAT,
        CLASS_LON,
        CLASS_RADIUS,
        mode=mode,
        **kwargs,
    )


def _north_of(point, km: float) -> tuple[float, float]:
    """The point km due north of point (along its meridian)."""
    return point[0] + math.degrees(km * 1000.0 / geo_prior.EARTH_RADIUS_M), point[1]


def _same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


# --- distances --------------------------------------------------------------------------


def test_haversine_known_distances_and_broadcasting():
    one_degree = geo_prior.EARTH_RADIUS_M * math.pi / 180.0
    assert geo_prior.haversine_m(10.0, 20.0, 11.0, 20.0) == pytest.approx(one_degree, rel=1e-12)
    assert geo_prior.haversine_m(0.0, 0.0, 0.0, 180.0) == pytest.approx(
        math.pi * geo_prior.EARTH_RADIUS_M, rel=1e-12
    )
    assert geo_prior.haversine_m(*EIFFEL, *EIFFEL) == 0.0
    assert geo_prior.haversine_m(*EIFFEL, *BIG_BEN) / 1000.0 == pytest.approx(340.5, abs=1.0)
    # Metre precision between nearby points, where the law of cosines would round.
    assert geo_prior.haversine_m(*EIFFEL, *_north_of(EIFFEL, 0.01)) == pytest.approx(10.0, 1e-6)
    assert np.isnan(geo_prior.haversine_m(NAN, 0.0, 1.0, 1.0))

    rng = np.random.default_rng(0)
    lat1, lat2 = rng.uniform(-90, 90, (2, 7, 1))
    lon1, lon2 = rng.uniform(-180, 180, (2, 1, 5))
    distances = geo_prior.haversine_m(lat1, lon1, lat2, lon2)
    assert distances.shape == (7, 5)
    phi1, phi2, dl = np.radians(lat1), np.radians(lat2), np.radians(lon2 - lon1)
    cosines = np.sin(phi1) * np.sin(phi2) + np.cos(phi1) * np.cos(phi2) * np.cos(dl)
    reference = geo_prior.EARTH_RADIUS_M * np.arccos(np.clip(cosines, -1, 1))
    np.testing.assert_allclose(distances, reference, rtol=1e-7)


# --- the rules --------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_rows_without_gps_are_the_input_bit_for_bit(mode, dtype):
    rng = np.random.default_rng(1)
    probabilities = rng.dirichlet(np.ones(5), size=6).astype(dtype) * 0.9
    probabilities[0, 1] = -0.0  # even a negative zero keeps its sign
    # No GPS, NaN longitude, out of range, and (0, 0): a camera's placeholder for no fix.
    lat = np.array([NAN, HA_LONG_BAY[0], 91.0, 0.0, 10.0, NAN])
    lon = np.array([NAN, NAN, 0.0, 0.0, 200.0, 3.0])
    result = geo_prior.apply(probabilities, lat, lon, CLASS_LAT, CLASS_LON, CLASS_RADIUS, mode)
    assert _same_bits(result.probabilities, probabilities)
    assert not result.changed.any() and not result.nothing_left.any()
    assert not result.far_from_all.any()
    assert np.isnan(result.nearest_km).all() and (result.nearest_class == -1).all()
    assert (result.cause == -1).all()


@pytest.mark.parametrize("mode", ["rule_out", "soft"])
def test_a_photo_at_a_landmark_keeps_it_and_loses_the_far_ones(mode):
    probabilities = [[0.5, 0.2, 0.2, 0.1]]
    result = _apply(probabilities, [EIFFEL], mode)
    np.testing.assert_array_equal(result.probabilities, np.float32([[0.5, 0.0, 0.0, 0.1]]))
    assert result.before[0] == result.after[0] == 0 and not result.changed[0]
    assert not result.far_from_all[0]
    assert result.nearest_km[0] == 0.0 and result.nearest_class[0] == 0
    # From across the city, inside the minimum radius, the tower stays.
    assert _apply(probabilities, [SACRE_COEUR], mode).probabilities[0, 0] == np.float32(0.5)


def test_a_photo_on_another_continent_leans_to_no_landmark():
    probabilities = np.float32([[0.7, 0.2, 0.1, 0.0], [0.1, 0.8, 0.1, 0.0]])
    result = _apply(probabilities, [SYDNEY, SYDNEY])
    assert (result.probabilities == 0.0).all()  # not renormalised onto anything
    assert result.far_from_all.all() and result.nothing_left.all() and result.changed.all()
    assert (result.after == NO_LANDMARK).all()
    assert result.nearest_class.tolist() == [2, 2]  # Ha Long Bay is the nearest
    assert result.nearest_km[0] == pytest.approx(
        geo_prior.haversine_m(*SYDNEY, *HA_LONG_BAY) / 1000.0
    )
    # top_probability falls to 0: any threshold above 0 rejects the photo.
    scores = knn.open_set_score("top_probability", result.probabilities)
    np.testing.assert_array_equal(scores < 0.05, [True, True])
    # A class without a location keeps its share, and is what is left to answer with.
    kept = _apply([[0.7, 0.1, 0.0, 0.2]], [SYDNEY])
    assert kept.after[0] == 3 and not kept.nothing_left[0] and kept.far_from_all[0]
    assert knn.open_set_score("top_probability", kept.probabilities)[0] == np.float32(0.2)


def test_soft_mode_falls_with_distance():
    probabilities = np.full((1, 4), 0.25, np.float32)
    km = np.array([0, 4, 5.1, 8, 12, 20, 40, 80, 139, 145, 400, 4000], np.float64)
    photos = [_north_of(EIFFEL, d) for d in km]
    result = _apply(np.repeat(probabilities, len(km), axis=0), photos, "soft")
    eiffel = result.probabilities[:, 0]
    assert (np.diff(eiffel) <= 0).all()
    reach_km = geo_prior.DEFAULT_MIN_RADIUS_M / 1000.0
    assert (eiffel[km <= reach_km] == np.float32(0.25)).all()
    expected = 0.25 * np.exp(-(km - reach_km) / geo_prior.DEFAULT_SCALE_KM)
    expected = np.where(km <= reach_km, 0.25, expected)
    expected = np.where(expected < 0.25 * geo_prior.SOFT_RULE_OUT_WEIGHT, 0.0, expected)
    np.testing.assert_allclose(eiffel, expected, rtol=1e-6)
    assert eiffel[-1] == 0.0  # ruled out outright on another continent
    # Soft is never harsher than rule_out.
    ruled = _apply(np.repeat(probabilities, len(km), axis=0), photos, "rule_out")
    assert (result.probabilities >= ruled.probabilities).all()
    # A longer scale keeps more.
    longer = _apply(probabilities, [photos[6]], "soft", scale_km=30.0).probabilities[0, 0]
    assert longer > eiffel[6]


def test_the_minimum_radius_and_a_known_radius():
    probabilities = [[0.4, 0.3, 0.2, 0.1]]
    three_km_away = _north_of(EIFFEL, 3.0)
    # The Eiffel Tower's own 300 m radius is raised to the minimum...
    assert _apply(probabilities, [three_km_away]).probabilities[0, 0] == np.float32(0.4)
    assert _apply(probabilities, [three_km_away], min_radius_m=2_000.0).probabilities[0, 0] == 0
    # ... and with no minimum its 300 m hold.
    near = _apply(probabilities, [_north_of(EIFFEL, 0.29)], min_radius_m=0.0)
    assert near.probabilities[0, 0] == np.float32(0.4)
    assert _apply(probabilities, [_north_of(EIFFEL, 0.31)], min_radius_m=0.0).probabilities[
        0, 0
    ] == np.float32(0.0)
    # Ha Long Bay's 25 km radius is above the minimum and counts as it is.
    bay = [_north_of(HA_LONG_BAY, 20.0), _north_of(HA_LONG_BAY, 30.0)]
    result = _apply([[0.1, 0.1, 0.7, 0.1]] * 2, bay)
    np.testing.assert_array_equal(result.probabilities[:, 2], np.float32([0.7, 0.0]))
    np.testing.assert_array_equal(result.far_from_all, [False, True])
    # Big Ben's unknown radius is the minimum.
    ben = _apply(probabilities * 2, [_north_of(BIG_BEN, 4.9), _north_of(BIG_BEN, 5.1)])
    np.testing.assert_array_equal(ben.probabilities[:, 1], np.float32([0.3, 0.0]))


@pytest.mark.parametrize("mode", ["rule_out", "soft"])
def test_classes_without_a_location_pass_through(mode):
    probabilities = np.float32([[0.3, 0.3, 0.2, 0.2]])
    # Big Ben's location unknown, Ha Long Bay's latitude unusable, the 4th column has none.
    lat = np.array([EIFFEL[0], NAN, 95.0])
    lon = np.array([EIFFEL[1], BIG_BEN[1], HA_LONG_BAY[1]])
    result = geo_prior.apply(probabilities, [SYDNEY[0]], [SYDNEY[1]], lat, lon, CLASS_RADIUS, mode)
    np.testing.assert_array_equal(result.probabilities, np.float32([[0.0, 0.3, 0.2, 0.2]]))
    assert result.nearest_class[0] == 0 and result.far_from_all[0]
    # With no located class at all, nothing is far and nothing changes.
    none = geo_prior.apply(probabilities, [SYDNEY[0]], [SYDNEY[1]], [], [], [], mode)
    assert _same_bits(none.probabilities, probabilities) and not none.far_from_all[0]
    assert np.isnan(none.nearest_km[0])


def test_off_ignores_gps_but_still_measures_it():
    probabilities = np.float32([[0.6, 0.2, 0.1, 0.1]])
    result = _apply(probabilities, [SYDNEY], "off")
    assert _same_bits(result.probabilities, probabilities)
    assert not result.changed[0] and result.cause[0] == -1
    assert result.far_from_all[0] and result.nearest_class[0] == 2


def test_labels_json_locations_feed_it():
    labels = [
        {
            "index": 0,
            "name": "Eiffel Tower",
            "latitude": EIFFEL[0],
            "longitude": EIFFEL[1],
            "radius_m": 1000.0,
        },
        {"index": 1, "name": "Big Ben"},
    ]
    lat, lon, radius = locations.class_arrays(labels)
    probabilities = np.float32([[0.5, 0.4, 0.1]])  # a third class added to the gallery
    result = geo_prior.apply(probabilities, [SYDNEY[0]], [SYDNEY[1]], lat, lon, radius)
    np.testing.assert_array_equal(result.probabilities, np.float32([[0.0, 0.4, 0.1]]))
    assert result.after[0] == 1 and result.far_from_all[0]


# --- what changed and the note ----------------------------------------------------------


def test_notes_name_the_landmark_gps_ruled_out():
    probabilities = np.float32(
        [
            [0.6, 0.1, 0.3, 0.0],  # at Ha Long Bay: the Eiffel Tower is ruled out
            [0.6, 0.1, 0.3, 0.0],  # in Sydney: nothing left
            [0.1, 0.1, 0.8, 0.0],  # at Ha Long Bay, already Ha Long Bay
            [0.6, 0.1, 0.3, 0.0],  # no GPS
            [0.3, 0.6, 0.1, 0.0],  # 12 km north of Big Ben (soft: weight exp(-0.7))
        ]
    )
    photos = [HA_LONG_BAY, SYDNEY, HA_LONG_BAY, (NAN, NAN), _north_of(BIG_BEN, 12.0)]
    result = _apply(probabilities, photos)
    np.testing.assert_array_equal(result.changed, [True, True, False, False, True])
    lines = geo_prior.notes(result, NAMES)
    assert lines[0] == "GPS 9,300 km from Eiffel Tower: ruled out; now Ha Long Bay"
    assert lines[1] == (
        "GPS 16,964 km from Eiffel Tower: ruled out; now no landmark (far from every known "
        "landmark)"
    )
    assert lines[2] == lines[3] == ""
    assert lines[4] == (
        "GPS 12 km from Big Ben: ruled out; now no landmark (far from every known landmark)"
    )

    soft = _apply(probabilities[4:], photos[4:], "soft")
    assert soft.cause_weight[0] == pytest.approx(math.exp(-0.7))
    assert not soft.changed[0]  # Big Ben keeps half of 0.6; the Eiffel Tower is ruled out
    # Once a threshold of 0.35 applies, the weighed-down Big Ben is rejected.
    rejected = knn.top_probability(soft.probabilities) < 0.35
    lines = geo_prior.notes(soft, NAMES, rejected_after=rejected)
    assert lines == [
        "GPS 12 km from Big Ben: weight 0.5; now no landmark (far from every known landmark)"
    ]


def test_a_ruled_out_runner_up_can_decide_the_answer():
    # The margin score rejects a near tie; GPS rules out the runner-up (Big Ben) and the
    # Eiffel Tower is accepted. The note names the class GPS took probability from.
    probabilities = np.float32([[0.45, 0.44, 0.0, 0.0]])
    result = _apply(probabilities, [EIFFEL])
    before = knn.margin(probabilities) < 0.1
    after = knn.margin(result.probabilities) < 0.1
    assert before[0] and not after[0] and not result.changed[0]
    assert result.cause[0] == 1
    assert geo_prior.notes(result, NAMES, before, after) == [
        "GPS 341 km from Big Ben: ruled out; now Eiffel Tower"
    ]
    np.testing.assert_array_equal(
        geo_prior.answers(probabilities, before) != geo_prior.answers(result.probabilities, after),
        [True],
    )


def test_distance_text():
    assert geo_prior.distance_text(0.8504) == "850 m"
    assert geo_prior.distance_text(4.747) == "4.7 km"
    assert geo_prior.distance_text(9299.8) == "9,300 km"


# --- random inputs ----------------------------------------------------------------------


def _random_case(rng, queries=40, located=12, classes=15):
    probabilities = rng.dirichlet(np.full(classes, 0.3), size=queries).astype(np.float32)
    probabilities *= rng.uniform(0.2, 1.0, (queries, 1)).astype(np.float32)
    probabilities[rng.random(queries) < 0.1] = 0.0  # rows the classifier already rejects
    # Photos clustered near the landmarks (so some are within reach) or anywhere.
    class_lat = rng.uniform(-60, 70, located)
    class_lon = rng.uniform(-180, 180, located)
    near = rng.integers(0, located, queries)
    photo_lat = np.clip(class_lat[near] + rng.normal(0, 0.05, queries), -90, 90)
    photo_lon = class_lon[near] + rng.normal(0, 0.05, queries)
    anywhere = rng.random(queries) < 0.3
    photo_lat[anywhere] = rng.uniform(-90, 90, anywhere.sum())
    photo_lon[anywhere] = rng.uniform(-180, 180, anywhere.sum())
    photo_lat[rng.random(queries) < 0.25] = NAN
    class_lat[rng.random(located) < 0.2] = NAN
    radius = np.where(rng.random(located) < 0.3, NAN, rng.uniform(0, 20_000, located))
    return probabilities, photo_lat, photo_lon, class_lat, class_lon, radius


@pytest.mark.parametrize("seed", range(5))
def test_random_inputs_off_is_the_identity_and_nothing_increases(seed):
    rng = np.random.default_rng(seed)
    probabilities, photo_lat, photo_lon, class_lat, class_lon, radius = _random_case(rng)
    no_gps = np.isnan(photo_lat)
    off = geo_prior.apply(probabilities, photo_lat, photo_lon, class_lat, class_lon, radius, "off")
    assert _same_bits(off.probabilities, probabilities) and not off.changed.any()
    for mode in ("rule_out", "soft"):
        result = geo_prior.apply(
            probabilities, photo_lat, photo_lon, class_lat, class_lon, radius, mode, scale_km=3.0
        )
        assert result.probabilities.dtype == np.float32
        assert (result.probabilities <= probabilities).all()
        assert (result.probabilities >= 0).all()
        assert _same_bits(result.probabilities[no_gps], probabilities[no_gps])
        unlocated = np.r_[np.isnan(class_lat), np.ones(3, bool)]
        assert _same_bits(result.probabilities[:, unlocated], probabilities[:, unlocated])
        np.testing.assert_array_equal(result.before, geo_prior.answers(probabilities))
        np.testing.assert_array_equal(result.after, geo_prior.answers(result.probabilities))
        np.testing.assert_array_equal(result.changed, result.before != result.after)
        assert not result.changed[no_gps].any()
        lost = (result.probabilities < probabilities).any(axis=1)
        np.testing.assert_array_equal(result.cause >= 0, lost)
        assert result.changed.any() and (~result.changed & ~no_gps).any()  # a real mix
        # Against a reference: the photo's distance to each located class and its reach.
        located = ~np.isnan(class_lat)
        distance = geo_prior.haversine_m(
            photo_lat[:, None], photo_lon[:, None], class_lat[located], class_lon[located]
        )
        reach = np.maximum(np.nan_to_num(radius[located]), geo_prior.DEFAULT_MIN_RADIUS_M)
        beyond = distance > reach
        np.testing.assert_array_equal(result.far_from_all, ~no_gps & beyond.all(axis=1))
        np.testing.assert_allclose(result.nearest_km, np.min(distance, axis=1) / 1000.0)
        if mode == "rule_out":
            expected = np.where(beyond, 0.0, probabilities[:, :12][:, located])
            expected[no_gps] = probabilities[:, :12][:, located][no_gps]
            np.testing.assert_array_equal(result.probabilities[:, :12][:, located], expected)
        lines = geo_prior.notes(result, [f"class {i}" for i in range(15)])
        assert [bool(line) for line in lines] == result.changed.tolist()


@pytest.mark.parametrize("seed", range(2))
def test_distances_in_blocks_give_the_same_answer(seed, monkeypatch):
    rng = np.random.default_rng(seed)
    case = _random_case(rng)
    whole = geo_prior.apply(*case, "soft")
    monkeypatch.setattr(geo_prior, "_BLOCK_PAIRS", 25)  # two photos per block
    blocked = geo_prior.apply(*case, "soft")
    for field, a, b in zip(whole._fields, whole, blocked, strict=True):
        np.testing.assert_array_equal(a, b, err_msg=field)


@pytest.mark.parametrize("mode", MODES)
def test_apply_tf_agrees_with_apply(mode):
    import tensorflow as tf

    rng = np.random.default_rng(7)
    case = _random_case(rng)
    expected = geo_prior.apply(*case, mode, scale_km=3.0).probabilities
    eager = geo_prior.apply_tf(*case, mode, scale_km=3.0).numpy()
    graph = tf.function(lambda *args: geo_prior.apply_tf(*args, mode, scale_km=3.0))
    traced = graph(*(tf.constant(v) for v in case)).numpy()
    no_gps = np.isnan(case[1])
    for got in (eager, traced):
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, expected, rtol=1e-6, atol=0)
        assert _same_bits(got[no_gps], case[0][no_gps])
        if mode != "soft":
            assert _same_bits(got, expected)


# --- mistakes ---------------------------------------------------------------------------


def test_mistakes_are_user_errors():
    probabilities = np.full((1, 4), 0.25, np.float32)
    with pytest.raises(UserError, match="did you mean 'rule_out'"):
        _apply(probabilities, [EIFFEL], "ruleout")
    with pytest.raises(UserError, match="one latitude and longitude per photo"):
        _apply(probabilities, [EIFFEL, EIFFEL])
    with pytest.raises(UserError, match="5 class locations for 4 classes"):
        geo_prior.apply(probabilities, [1.0], [1.0], np.ones(5), np.ones(5), np.ones(5))
    with pytest.raises(UserError, match="three vectors of one length"):
        geo_prior.apply(probabilities, [1.0], [1.0], np.ones(3), np.ones(2), np.ones(3))
    with pytest.raises(UserError, match="min_radius_m must be at least 0"):
        _apply(probabilities, [EIFFEL], min_radius_m=-1.0)
    with pytest.raises(UserError, match="scale_km must be above 0"):
        _apply(probabilities, [EIFFEL], "soft", scale_km=0.0)
    with pytest.raises(UserError, match="scale_km must be above 0"):
        geo_prior.apply_tf(probabilities, [1.0], [1.0], [1.0], [1.0], [1.0], "soft", scale_km=-1)
