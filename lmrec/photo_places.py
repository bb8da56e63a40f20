"""Where each photo predict tags was taken: its GPS as evidence, its landmark's place.

A photo's own location is its EXIF GPS, else a location in its XMP sidecar that the
photographer (or their photo manager) put there; a location lmrec wrote from a
landmark is not evidence of anything. With a location, lmrec.geo_prior weighs the
classes by how far their landmarks are (--geo_prior), and the row records the
photo's own coordinates (located_from "photo" or "sidecar"). Without one, a photo
whose landmark has a location in labels.json and scores at least --locate_min_score
gets that location (located_from "landmark"), which --xmp writes to its sidecar; a
photo that has a location is never given another.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lmrec import geo_prior, metrics, xmp
from lmrec.config import GeoConfig
from lmrec.tag_store import Row

# The photo's own (latitude, longitude, where it was read: "photo" | "sidecar"), or
# (None, None, "") without one, or UNREADABLE when its sidecar's location could not be
# read (then nothing is written over it).
Own = tuple[float | None, float | None, str]
UNREADABLE = (None, None, "unreadable sidecar")


def own_location(exif_gps: tuple[float, float] | None, sidecar: str | None) -> Own:
    """The photo's own location: EXIF first, then its sidecar's, unless lmrec wrote it."""
    if exif_gps is not None:
        return exif_gps[0], exif_gps[1], "photo"
    if not sidecar:
        return None, None, ""
    try:
        found = xmp.photographer_location(sidecar)
    except (xmp.BadSidecar, OSError):
        return UNREADABLE
    return (found[0], found[1], "sidecar") if found is not None else (None, None, "")


@dataclass(frozen=True)
class Places:
    """The classes' locations and the settings that use them, for one predict run."""

    config: GeoConfig
    class_names: list[str]
    class_lat: np.ndarray
    class_lon: np.ndarray
    class_radius_m: np.ndarray
    score_kind: str  # the open-set score predict's scores are (lmrec.knn.OPEN_SET_SCORES)
    threshold: float

    @property
    def any_located(self) -> bool:
        return bool(np.isfinite(self.class_lat).any())

    def weigh(self, probabilities: np.ndarray, scores: np.ndarray, own: list[Own]):
        """(probabilities, open-set scores, notes) after the geo prior.

        Rows without a location come back unchanged. The top_probability score follows
        the weighed probabilities; a photo GPS leaves with no class at all scores -inf,
        so it is "no landmark" whatever the threshold; other scores (kNN similarities)
        do not move. notes say, per photo, how GPS changed the answer ("" if it did not).
        """
        notes = [""] * len(probabilities)
        latitude = np.array([np.nan if o[0] is None else o[0] for o in own], np.float64)
        longitude = np.array([np.nan if o[1] is None else o[1] for o in own], np.float64)
        if self.config.geo_prior == "off" or not self.any_located or np.isnan(latitude).all():
            return probabilities, scores, notes
        result = geo_prior.apply(
            probabilities,
            latitude,
            longitude,
            self.class_lat,
            self.class_lon,
            self.class_radius_m,
            mode=self.config.geo_prior,
            min_radius_m=self.config.geo_prior_min_radius_m,
            scale_km=self.config.geo_prior_scale_km,
        )
        weighed = result.probabilities
        new_scores = np.asarray(scores, np.float64).copy()
        if self.score_kind == "top_probability":
            new_scores = weighed.max(axis=1).astype(np.float64)
        new_scores[result.nothing_left] = -np.inf
        rejected_before = np.asarray(scores) < self.threshold
        rejected_after = new_scores < self.threshold
        notes = geo_prior.notes(result, self.class_names, rejected_before, rejected_after)
        return weighed, new_scores, notes

    def locate(self, rows: list[Row], own: list[Own], notes: list[str]) -> None:
        """Fills each row's location: the photo's own, else its landmark's when confident."""
        index = {name: i for i, name in enumerate(self.class_names[: len(self.class_lat)])}
        for row, (latitude, longitude, source), note in zip(rows, own, notes, strict=True):
            row.gps_note = note
            if source in ("photo", "sidecar"):
                row.latitude, row.longitude, row.located_from = latitude, longitude, source
                continue
            if source or row.label in ("", metrics.NO_LANDMARK_NAME):
                continue  # an unreadable sidecar location is left alone
            i = index.get(row.label)
            if i is None or not np.isfinite(self.class_lat[i]):
                continue
            if row.score >= self.config.locate_min_score:
                row.latitude = float(self.class_lat[i])
                row.longitude = float(self.class_lon[i])
                row.located_from = xmp.LOCATED_FROM


def for_tagger(tagger, config: GeoConfig | None, threshold: float) -> Places:
    """The Places of a predict.Tagger (its labels' locations, its open-set score) with the
    reject threshold predict applies."""
    latitude, longitude, radius = tagger.locations()
    return Places(
        config=config or GeoConfig(),
        class_names=list(tagger.class_names),
        class_lat=latitude,
        class_lon=longitude,
        class_radius_m=radius,
        score_kind=tagger.open_set_score,
        threshold=threshold,
    )
