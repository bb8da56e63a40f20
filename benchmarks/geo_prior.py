"""GPS as evidence: predict's --geo_prior on real photos given synthetic GPS.

    python benchmarks/geo_prior.py [--work_dir=DIR] [--training_dir=DIR]

Uses the model benchmarks/open_set.py trains (configs/vietnam_landmarks_lite0.cfg on
../shared/data/vn_landmarks) in --training_dir/runs/vietnam_landmarks_lite0 (by default
open_set.py's /tmp/lmrec_open_set): a finished run there is only read, never changed;
otherwise open_set.train trains it. Its run files (config.json, flags.cfg, labels.json,
the best weights, and the gallery and open_set.json when it has them) are copied to
--work_dir/model (by default under /tmp/lmrec_geo_prior), whose labels.json then gets
the class locations of benchmarks/vn_landmark_locations.csv (public coordinates; a
radius for the landscapes photographed from far around: Ha Long Bay, Sa Pa). Without a
gallery in the run, one is built in the copy for --classifier=hybrid.

The 55 test photos are decoded once (upright RGB) and saved three times as JPEG with
the same pixels and quality, differing only in their EXIF GPS:

- no_gps: none;
- true_gps: the class's location, moved by up to JITTER_M in a random direction;
- far_gps: a random point in a land area of another continent (FAR_REGIONS).

Each copy's GPS is read back with lmrec.locations.photo_gps and its bytes without the
EXIF segment are compared with the others'. lmrec.predict.predict then tags each folder
with --classifier=softmax and hybrid, --geo_prior=rule_out (the default) and soft, and
no_gps once more with --geo_prior=off; the model's stored reject threshold applies as
predict resolves it. A photo is right when its label is its class folder's name.

Bars, for each classifier and geo prior mode:

- true_gps_accuracy_gain: true_gps accuracy minus no_gps accuracy, >= 0;
- far_gps_no_landmark: the fraction of far_gps photos labelled "no landmark", >= 0.9;
- no_gps_rows_differing_from_off: no_gps rows whose label, score or top-k differ from
  --geo_prior=off's, <= 0.

Writes benchmarks/results/geo_prior_vietnam_landmarks_lite0_cpu2.json and prints a table.
"""

from __future__ import annotations

import argparse
import datetime
import io
import math
import os
import shutil
import sys
import time

import bars
import open_set

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN = "vietnam_landmarks_lite0"
LOCATIONS_CSV = os.path.join("benchmarks", "vn_landmark_locations.csv")
DEFAULT_WORK_DIR = "/tmp/lmrec_geo_prior"
OUTPUT = os.path.join("benchmarks", "results", "geo_prior_vietnam_landmarks_lite0_cpu2.json")
SEED = 0
JITTER_M = 300.0  # a true_gps photo lies this far from its class's location at most
VARIANTS = ("no_gps", "true_gps", "far_gps")
CLASSIFIERS = ("softmax", "hybrid")
MODES = ("rule_out", "soft")
# (latitude range, longitude range) of areas that are land, far from Vietnam.
FAR_REGIONS = {
    "Europe": ((45.0, 52.0), (2.0, 28.0)),
    "North America": ((33.0, 45.0), (-115.0, -90.0)),
    "South America": ((-25.0, -5.0), (-65.0, -45.0)),
    "Africa": ((-20.0, 10.0), (15.0, 30.0)),
    "Australia": ((-32.0, -20.0), (118.0, 148.0)),
}
READ_BACK_TOLERANCE_DEGREES = 1e-6  # about 0.1 m

BARS = {
    "true_gps_accuracy_gain": (">=", 0.0),
    "far_gps_no_landmark": (">=", 0.9),
    "no_gps_rows_differing_from_off": ("<=", 0),
}


def bar(name: str, value: float | None) -> dict:
    return bars.check(BARS, name, value)


# --- the model --------------------------------------------------------------------------


def trained_model(training_dir: str) -> dict:
    """The open_set benchmark's model_dir: a finished run is only read, else it is trained.

    open_set.train on a finished run evaluates it again, which rewrites its run files and
    report; reading its resume state instead leaves that run exactly as it is.
    """
    from lmrec import resume, run_files

    model_dir = os.path.join(training_dir, "runs", RUN)
    state = resume.read(model_dir) if os.path.isdir(model_dir) else None
    if state is not None and state.complete:
        if os.path.isfile(os.path.join(model_dir, run_files.BEST_WEIGHTS)):
            return {"model_dir": model_dir, "trained_now": False}
    trained = open_set.train(training_dir, RUN)
    return {**trained, "trained_now": True}


def located_model_copy(model_dir: str, work_dir: str) -> dict:
    """model_dir's run files and gallery under work_dir/model, labels.json with locations.

    Returns:
      {"model_dir", "gallery": "copied" | "built", "locations": {name: {...}}}
    """
    from lmrec import atomic, locations, recognizer, run_files
    from lmrec import gallery as galleries
    from lmrec.data import records
    from lmrec.gallery import store

    copy = os.path.join(work_dir, "model")
    shutil.rmtree(copy, ignore_errors=True)
    os.makedirs(os.path.dirname(os.path.join(copy, run_files.BEST_WEIGHTS)))
    files = [
        run_files.CONFIG_FILE,
        run_files.FLAGS_FILE,
        records.LABELS_FILE,
        run_files.BEST_WEIGHTS,
        recognizer.OPEN_SET_FILE,
    ]
    for name in files:
        if os.path.isfile(os.path.join(model_dir, name)):
            shutil.copy2(os.path.join(model_dir, name), os.path.join(copy, name))
    labels = records.read_labels(copy)
    class_names = records.label_names(labels)
    found = locations.read_locations_csv(LOCATIONS_CSV, class_names)
    missing = [name for i, name in enumerate(class_names) if i not in found]
    if missing:
        raise RuntimeError(f"{LOCATIONS_CSV} has no location for {missing}")
    atomic.write_json(
        os.path.join(copy, records.LABELS_FILE), locations.with_locations(labels, found)
    )
    if os.path.isdir(store.gallery_dir(model_dir)):
        shutil.copytree(store.gallery_dir(model_dir), store.gallery_dir(copy))
        gallery = "copied"
    else:
        galleries.build(copy, verbose=False)
        gallery = "built"
    return {
        "model_dir": copy,
        "gallery": gallery,
        "locations": {
            class_names[i]: {
                "latitude": location.latitude,
                "longitude": location.longitude,
                "radius_m": location.radius_m,
            }
            for i, location in sorted(found.items())
        },
    }


# --- the photos -------------------------------------------------------------------------


def _dms(value: float) -> tuple[float, float, float]:
    """Degrees, minutes and seconds of a non-negative angle, as EXIF stores it."""
    degrees = math.floor(value)
    minutes = math.floor((value - degrees) * 60)
    return float(degrees), float(minutes), (value - degrees - minutes / 60) * 3600


def gps_exif(latitude: float, longitude: float):
    """A PIL Image.Exif holding only a GPS IFD with these coordinates."""
    from PIL import Image

    exif = Image.Exif()
    exif[0x8825] = {
        1: "N" if latitude >= 0 else "S",
        2: _dms(abs(latitude)),
        3: "E" if longitude >= 0 else "W",
        4: _dms(abs(longitude)),
    }
    return exif


def jittered(rng, latitude: float, longitude: float, max_m: float) -> tuple[float, float]:
    """A point up to max_m from (latitude, longitude), uniform over the disc."""
    distance = max_m * math.sqrt(rng.uniform())
    bearing = rng.uniform(0.0, 2.0 * math.pi)
    north, east = distance * math.cos(bearing), distance * math.sin(bearing)
    metres_per_degree = math.pi * 6_371_008.8 / 180.0
    return (
        latitude + north / metres_per_degree,
        longitude + east / (metres_per_degree * math.cos(math.radians(latitude))),
    )


def far_point(rng) -> tuple[str, float, float]:
    """(region, latitude, longitude): a random point of a random FAR_REGIONS area."""
    region = str(rng.choice(list(FAR_REGIONS)))
    (south, north), (west, east) = FAR_REGIONS[region]
    return region, float(rng.uniform(south, north)), float(rng.uniform(west, east))


def without_exif(jpeg: bytes) -> bytes:
    """A JPEG file's bytes without its EXIF (APP1 "Exif") segment."""
    if jpeg[:2] != b"\xff\xd8":
        raise ValueError("not a JPEG file")
    kept, position = [jpeg[:2]], 2
    while position < len(jpeg):
        marker = jpeg[position : position + 2]
        if marker[0] != 0xFF or marker[1] == 0xDA:  # start of scan: the rest is image data
            break
        length = int.from_bytes(jpeg[position + 2 : position + 4], "big")
        segment = jpeg[position : position + 2 + length]
        if not (marker[1] == 0xE1 and segment[4:10] == b"Exif\x00\x00"):
            kept.append(segment)
        position += 2 + length
    kept.append(jpeg[position:])
    return b"".join(kept)


def reads_back(read: tuple[float, float] | None, written: tuple[float, float] | None) -> bool:
    """Whether photo_gps read what was written (None for a photo without GPS)."""
    if read is None or written is None:
        return read is written
    return max(abs(read[0] - written[0]), abs(read[1] - written[1])) <= READ_BACK_TOLERANCE_DEGREES


def write_photo_copies(work_dir: str, found: dict) -> dict:
    """The test photos as work_dir/photos/<variant>/<class>/<stem>.jpg, checked.

    Args:
      found: class name -> {"latitude", "longitude", "radius_m"}.

    Returns:
      {"folders": {variant: path}, "photos": [{"file", "class", "true", "far", ...}],
       "far_regions": {region: count}, "nearest_far_km": float}
    """
    import numpy as np

    from lmrec import locations
    from lmrec.data import images

    rng = np.random.default_rng(SEED)
    root = os.path.join(work_dir, "photos")
    shutil.rmtree(root, ignore_errors=True)
    source = os.path.join(open_set.LANDMARKS, "test")
    class_lat = np.array([v["latitude"] for v in found.values()])
    class_lon = np.array([v["longitude"] for v in found.values()])
    each, regions = [], {}
    for class_name in sorted(os.listdir(source)):
        if class_name not in found:
            raise RuntimeError(f"test class {class_name} has no location in {LOCATIONS_CSV}")
        for variant in VARIANTS:
            os.makedirs(os.path.join(root, variant, class_name))
        for name in sorted(os.listdir(os.path.join(source, class_name))):
            path = os.path.join(source, class_name, name)
            if not images.has_image_extension(path):
                continue
            decoded = images.decode(images.read_file(path), path)
            true = jittered(
                rng, found[class_name]["latitude"], found[class_name]["longitude"], JITTER_M
            )
            region, *far = far_point(rng)
            regions[region] = regions.get(region, 0) + 1
            relative = os.path.join(class_name, os.path.splitext(name)[0] + ".jpg")
            written = {}
            for variant, gps in (("no_gps", None), ("true_gps", true), ("far_gps", tuple(far))):
                out = io.BytesIO()
                options = {} if gps is None else {"exif": gps_exif(*gps)}
                decoded.image.save(out, "JPEG", quality=images.JPEG_QUALITY, **options)
                target = os.path.join(root, variant, relative)
                if os.path.exists(target):
                    raise RuntimeError(f"two test photos would be saved as {target}")
                with open(target, "wb") as f:
                    f.write(out.getvalue())
                read = locations.photo_gps(target)
                if not reads_back(read, gps):
                    raise RuntimeError(f"{target} reads back GPS {read}, written {gps}")
                written[variant] = out.getvalue()
            if len({without_exif(data) for data in written.values()}) != 1:
                raise RuntimeError(f"the copies of {path} differ in more than their EXIF")
            far_km = locations.haversine_m(far[0], far[1], class_lat, class_lon).min() / 1000
            true_m = locations.haversine_m(
                true[0],
                true[1],
                found[class_name]["latitude"],
                found[class_name]["longitude"],
            )
            each.append(
                {
                    "file": relative,
                    "source": os.path.relpath(path, open_set.LANDMARKS),
                    "source_format": decoded.source_format,
                    "class": class_name,
                    "true_gps": [round(true[0], 7), round(true[1], 7)],
                    "true_gps_offset_m": round(float(true_m), 1),
                    "far_gps": [round(far[0], 7), round(far[1], 7)],
                    "far_region": region,
                    "far_gps_nearest_landmark_km": round(float(far_km), 1),
                }
            )
    return {
        "folders": {variant: os.path.join(root, variant) for variant in VARIANTS},
        "photos": each,
        "far_regions": dict(sorted(regions.items())),
        "nearest_far_km": min(r["far_gps_nearest_landmark_km"] for r in each),
        "largest_true_gps_offset_m": max(r["true_gps_offset_m"] for r in each),
    }


# --- predict ------------------------------------------------------------------------------


def tag(tagger, folder: str, output: str, mode: str) -> tuple[dict, float]:
    """predict's rows of folder under one --geo_prior, by path within it; and the seconds."""
    from lmrec import predict
    from lmrec.config import GeoConfig

    if os.path.exists(output):
        os.remove(output)
    started = time.perf_counter()
    result = predict.predict(tagger, [folder], output, geo=GeoConfig(geo_prior=mode), verbose=False)
    seconds = time.perf_counter() - started
    if result.failures:
        raise RuntimeError(f"predict failed on {result.failures}")
    return {os.path.relpath(row.file, folder): row for row in result.rows}, seconds


def figures(rows: dict, seconds: float) -> dict:
    """Accuracy, the "no landmark" and GPS-note fractions of one predict run."""
    from lmrec import metrics

    photos = len(rows)
    correct = [r for name, r in rows.items() if r.label == name.split(os.sep)[0]]
    no_landmark = [r for r in rows.values() if r.label == metrics.NO_LANDMARK_NAME]
    noted = [r for r in rows.values() if r.gps_note]
    located: dict[str, int] = {}
    for r in rows.values():
        located[r.located_from or "none"] = located.get(r.located_from or "none", 0) + 1
    return {
        "photos": photos,
        "accuracy": len(correct) / photos,
        "no_landmark": len(no_landmark) / photos,
        "with_gps_note": len(noted) / photos,
        "located_from": dict(sorted(located.items())),
        "seconds": round(seconds, 2),
        "wrong": [
            {"file": name, "label": r.label, "score": r.score, "gps_note": r.gps_note}
            for name, r in sorted(rows.items())
            if r.label != name.split(os.sep)[0]
        ],
        "gps_notes_sample": sorted({r.gps_note for r in noted})[:5],
    }


def differing_rows(rows: dict, reference: dict) -> list[str]:
    """The photos whose label, score or top-k differ between two runs (exact comparison)."""
    if set(rows) != set(reference):
        raise RuntimeError("the two runs tagged different photos")
    return [
        name
        for name in sorted(rows)
        if (rows[name].label, rows[name].score, rows[name].top)
        != (reference[name].label, reference[name].score, reference[name].top)
    ]


def measure(model_dir: str, folders: dict, work_dir: str) -> dict:
    """Every predict run, its figures, and the bars of each classifier and mode."""
    import numpy as np

    from lmrec import predict
    from lmrec.config import ClassifierConfig

    outputs = os.path.join(work_dir, "outputs")
    os.makedirs(outputs, exist_ok=True)
    runs, bars, thresholds = [], [], {}
    for classifier in CLASSIFIERS:
        tagger = predict.load_tagger(model_dir, "auto", ClassifierConfig(classifier=classifier))
        latitude = tagger.locations()[0]
        if len(latitude) != len(tagger.class_names) or not np.isfinite(latitude).all():
            raise RuntimeError(f"{model_dir}/labels.json does not locate every class")
        thresholds[classifier] = {
            "open_set_score": tagger.open_set_score,
            "reject_threshold": tagger.reject_threshold,
            "engine": tagger.engine,
        }
        found = {}
        for variant, mode in [("no_gps", "off")] + [(v, m) for m in MODES for v in VARIANTS]:
            output = os.path.join(outputs, f"{classifier}_{variant}_{mode}.csv")
            rows, seconds = tag(tagger, folders[variant], output, mode)
            found[variant, mode] = rows
            runs.append(
                {"classifier": classifier, "photos_gps": variant, "geo_prior": mode}
                | figures(rows, seconds)
            )
            print(f"{classifier} {variant} {mode}: {runs[-1]['accuracy']:.3f}", file=sys.stderr)
        by_key = {
            (r["photos_gps"], r["geo_prior"]): r for r in runs if r["classifier"] == classifier
        }
        for mode in MODES:
            differing = differing_rows(found["no_gps", mode], found["no_gps", "off"])
            gain = by_key["true_gps", mode]["accuracy"] - by_key["no_gps", mode]["accuracy"]
            for name, value, extra in (
                ("true_gps_accuracy_gain", gain, {}),
                ("far_gps_no_landmark", by_key["far_gps", mode]["no_landmark"], {}),
                ("no_gps_rows_differing_from_off", len(differing), {"photos": differing}),
            ):
                bars.append(
                    {"classifier": classifier, "geo_prior": mode, "name": name}
                    | bar(name, value)
                    | extra
                )
    return {"thresholds": thresholds, "runs": runs, "bars": bars}


# --- report -----------------------------------------------------------------------------


def markdown(result: dict) -> str:
    """The tables printed at the end: every run, then every bar."""
    lines = [
        "| classifier | photos' GPS | geo prior | photos | accuracy | no landmark | GPS note | s |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in result["runs"]:
        lines.append(
            f"| {r['classifier']} | {r['photos_gps']} | {r['geo_prior']} | {r['photos']} | "
            f"{r['accuracy']:.3f} | {r['no_landmark']:.3f} | {r['with_gps_note']:.3f} | "
            f"{r['seconds']:.1f} |"
        )
    lines += ["", "| classifier | geo prior | bar | value | met |", "|---|---|---|---:|---|"]
    for b in result["bars"]:
        value = b["value"] if isinstance(b["value"], int) else f"{b['value']:.3f}"
        lines.append(
            f"| {b['classifier']} | {b['geo_prior']} | {b['name']} {b['bar']} | {value} | "
            f"{'yes' if b['met'] else 'NO'} |"
        )
    thresholds = ", ".join(
        f"{name}: {t['open_set_score']} < {t['reject_threshold']:g}"
        for name, t in result["thresholds"].items()
    )
    lines += ["", f"Reject thresholds (as predict resolves them): {thresholds}."]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--work_dir", default=DEFAULT_WORK_DIR, help="the model copy, photos and outputs"
    )
    parser.add_argument(
        "--training_dir",
        default=open_set.DEFAULT_WORK_DIR,
        help="benchmarks/open_set.py's --work_dir, whose run is used (or trained)",
    )
    parser.add_argument("--output", default=OUTPUT)
    args = parser.parse_args()
    command = " ".join(["python benchmarks/geo_prior.py", *sys.argv[1:]])
    os.chdir(REPO)  # configs and the locations file use paths relative to the repo root
    if not os.path.isdir(open_set.LANDMARKS):
        print(f"{open_set.LANDMARKS} is absent: nothing to measure", file=sys.stderr)
        return 1
    import machine_info

    from lmrec import atomic, geo_prior
    from lmrec.data import images

    started = time.time()
    machine = machine_info.machine()
    work_dir = os.path.abspath(args.work_dir)
    os.makedirs(work_dir, exist_ok=True)
    training = trained_model(os.path.abspath(args.training_dir))
    print(f"model: {training['model_dir']}", file=sys.stderr)
    model = located_model_copy(training["model_dir"], work_dir)
    photos = write_photo_copies(work_dir, model["locations"])
    print(f"wrote {len(photos['photos'])} photos x {len(VARIANTS)}", file=sys.stderr)
    measured = measure(model["model_dir"], photos["folders"], work_dir)
    default_bars = [b for b in measured["bars"] if b["geo_prior"] == geo_prior.DEFAULT_MODE]
    result = {
        "benchmark": "geo_prior",
        "date": datetime.date.today().isoformat(),
        "machine": machine,
        "command": command,
        "config": open_set.CONFIG,
        "data": os.path.join(open_set.LANDMARKS, "test"),
        "training": training,
        "model_copy": {k: v for k, v in model.items() if k != "locations"},
        "locations_file": LOCATIONS_CSV,
        "locations": model["locations"],
        "settings": {
            "classifiers": list(CLASSIFIERS),
            "geo_priors": ["off", *MODES],
            "geo_prior_min_radius_m": geo_prior.DEFAULT_MIN_RADIUS_M,
            "geo_prior_scale_km": geo_prior.DEFAULT_SCALE_KM,
            "seed": SEED,
            "true_gps_jitter_m": JITTER_M,
            "far_regions": {
                name: {"latitude": list(lat), "longitude": list(lon)}
                for name, (lat, lon) in FAR_REGIONS.items()
            },
            "jpeg_quality": images.JPEG_QUALITY,
        },
        "thresholds": measured["thresholds"],
        "photos": {
            "count": len(photos["photos"]),
            "far_regions": photos["far_regions"],
            "nearest_far_gps_to_a_landmark_km": photos["nearest_far_km"],
            "largest_true_gps_offset_m": photos["largest_true_gps_offset_m"],
            "each": photos["photos"],
        },
        "runs": measured["runs"],
        "bars": measured["bars"],
        "all_default_bars_met": all(b["met"] for b in default_bars),
        "seconds": round(time.time() - started, 1),
        "note": (
            "Accuracy: predict's label equals the photo's class folder; 'no landmark' is "
            "lmrec.metrics.NO_LANDMARK_NAME; GPS note: the row's gps_note is not empty. "
            "true_gps_accuracy_gain compares true_gps with no_gps under the same geo prior; "
            "no_gps_rows_differing_from_off compares label, score and top-k exactly with "
            "the no_gps run under --geo_prior=off. Seconds: one predict call (reading, "
            "decoding and tagging the 55 photos), the first of each classifier with tracing."
        ),
    }
    result["markdown"] = markdown(result)
    print(result["markdown"])
    atomic.write_json(args.output, result)
    print(f"wrote {args.output} in {result['seconds']:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
