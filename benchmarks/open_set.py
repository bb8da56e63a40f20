"""Open-set recognition on real photos: softmax, kNN and hybrid, with distractors.

    python benchmarks/open_set.py [--work_dir=/tmp/lmrec_open_set] [--left_out=hoian_town]

Trains configs/vietnam_landmarks_lite0.cfg (EfficientNet-Lite0, ImageNet weights) on
../shared/data/vn_landmarks, builds its embedding gallery from the prepared train split
and measures, on photos it never trained on:

1. "No landmark": for each classifier (softmax, knn, hybrid) and open-set score, a
   reject threshold chosen (lmrec.knn.choose_threshold) on the validation split plus
   the intel_scenes_small train photos as distractors, then on the vn test folder
   with the 300 intel_scenes_small test photos as distractors: accuracy without
   distractors, GAP with distractors, and the fractions of landmarks and distractors
   rejected; again with the intel train photos added to the gallery as "no landmark"
   neighbours. Retrieval: mAP@100 and recall@1/5 of the test landmarks over the gallery.
2. A landmark added without retraining: the same config trained without one class,
   whose training photos (30 at most) are then added with lmrec.gallery.add.
3. Speed: gallery build against the plain embedding loop over the same photos (and the
   forward pass alone on photos decoded in memory), on the vn train photos each linked
   BUILD_COPIES times; predict's time per photo with hybrid kNN over a 100,000-embedding
   gallery against softmax, and the kNN step alone against the forward pass.

GAP with distractors follows lmrec.evaluate: a rejected photo has no prediction (label
NO_LANDMARK, confidence -inf); a distractor that is not rejected is a wrong prediction
ranked by its confidence. The confidence is the open-set score that decides rejection,
so ranking and rejection agree (with top_probability this is exactly lmrec.evaluate's
rule). Equal confidences rank wrong predictions first (kNN scores tie often); the JSON
also holds GAP with lmrec.evaluate's order among ties (landmark photos first) and GAP
ranked by the top class probability.

Runs, prepared data and the leave-one-out train folder live under --work_dir; a
finished training run there is reused (lmrec resumes it and only evaluates). Writes
benchmarks/results/open_set_vietnam_landmarks_lite0_cpu2.json and prints a table.
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys
import time

import bars

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = "configs/vietnam_landmarks_lite0.cfg"
LANDMARKS = "../shared/data/vn_landmarks"
SCENES = "../shared/data/intel_scenes_small"
DEFAULT_WORK_DIR = "/tmp/lmrec_open_set"
DEFAULT_LEFT_OUT = "hoian_town"  # 30 training photos: the whole class fits the 30-photo add
MAX_ADDED_PHOTOS = 30
BIG_GALLERY = 100_000
KNN_BATCH = 32
BUILD_COPIES = 6  # each vn train photo linked this many times for the build's speed
OUTPUT = os.path.join("benchmarks", "results", "open_set_vietnam_landmarks_lite0_cpu2.json")

BARS = {
    "gap_with_distractors": (">=", 0.95),
    "landmarks_rejected": ("<=", 0.05),
    "accuracy_without_distractors": (">=", 0.98),
    "added_class_accuracy": (">=", 0.9),
    "other_classes_loss_points": ("<=", 2.0),
    "build_over_forward": (">=", 0.9),
    "knn_added_fraction": ("<=", 0.10),
}


def bar(name: str, value: float | None) -> dict:
    return bars.check(BARS, name, value)


# --- training ---------------------------------------------------------------------------


def left_out_folder(work_dir: str, left_out: str) -> str:
    """A copy of the vn train folder without one class: symlinks to the other class folders."""
    source = os.path.abspath(os.path.join(LANDMARKS, "train"))
    folder = os.path.join(work_dir, f"vn_train_without_{left_out}")
    os.makedirs(folder, exist_ok=True)
    for name in sorted(os.listdir(source)):
        link = os.path.join(folder, name)
        if name != left_out and not os.path.lexists(link):
            os.symlink(os.path.join(source, name), link)
    return folder


def train(work_dir: str, name: str, *overrides: str) -> dict:
    """Trains the config into work_dir/runs/name (or evaluates a finished run there)."""
    from lmrec import config
    from lmrec.training import train_and_evaluate

    model_dir = os.path.join(work_dir, "runs", name)
    experiment = config.experiment_from_flagfile(
        CONFIG,
        f"--model_dir={model_dir}",
        f"--data_dir={os.path.join(work_dir, 'tf_records', name)}",
        "--export_after=false",
        *overrides,
    )
    started = time.time()
    result = train_and_evaluate(experiment, verbose=False)
    return {
        "model_dir": model_dir,
        "data_dir": result.data_dir,
        "overrides": list(overrides),
        "resumed_from_work_dir": result.resumed,
        "best_epoch": result.best_epoch,
        "best_val_accuracy": result.best_value,
        "phase_seconds": result.phase_seconds,
        "seconds": round(time.time() - started, 1),
        "test_accuracy_by_evaluate": (result.metrics or {}).get("accuracy"),
    }


def train_models(work_dir: str, left_out: str) -> dict:
    """Both runs: all classes, and all but left_out."""
    full = train(work_dir, "vietnam_landmarks_lite0")
    print(f"trained all classes: {full}", file=sys.stderr)
    without = train(
        work_dir,
        f"vietnam_landmarks_lite0_without_{left_out}",
        f"--input_dir={left_out_folder(work_dir, left_out)}",
    )
    print(f"trained without {left_out}: {without}", file=sys.stderr)
    return {"all_classes": full, "left_out": without}


# --- forward passes ---------------------------------------------------------------------


def forward_function(trained):
    """pixels in [0, 255] -> (softmax probabilities [B, C], L2-normalized embeddings [B, D]).

    One backbone pass for both: the classifier's head with its embedding (the input of
    its "dropout" layer, as lmrec.embeddings.embedding_model takes it) as a second output.
    """
    import keras
    import tensorflow as tf

    from lmrec import embeddings

    model = trained.model
    head = model.head
    feature = head.get_layer(embeddings.FEATURE_LAYER).input
    head_and_feature = keras.Model(head.input, [head.output, feature])
    inputs = keras.Input(tuple(model.input.shape[1:]))
    probabilities, feature = head_and_feature(model.backbone(inputs, training=False))
    embedding = keras.layers.UnitNormalization(axis=-1, dtype="float32")(feature)
    both = keras.Model(inputs, [probabilities, embedding])
    preprocess, size = trained.preprocess, trained.image_size

    @tf.function(input_signature=[tf.TensorSpec([None, size, size, 3], tf.float32)])
    def run(pixels):
        return both(preprocess(pixels), training=False)

    return run


class Queries:
    """Softmax probabilities, embeddings and labels of a set of photos."""

    def __init__(self, probabilities, embeddings, labels, ids):
        self.probabilities, self.embeddings = probabilities, embeddings
        self.labels, self.ids = labels, ids

    def __len__(self) -> int:
        return len(self.labels)

    def where(self, keep) -> Queries:
        import numpy as np

        keep = np.asarray(keep)
        ids = [i for i, k in zip(self.ids, keep, strict=True) if k]
        return Queries(self.probabilities[keep], self.embeddings[keep], self.labels[keep], ids)


def run_queries(forward, dataset) -> Queries:
    """Runs forward over (pixels, labels, ids) batches, such as held_out.EvalData.dataset."""
    import numpy as np
    import tensorflow as tf

    probabilities, vectors, labels, ids = [], [], [], []
    for pixels, batch_labels, batch_ids in dataset:
        p, e = forward(tf.cast(pixels, tf.float32))
        probabilities.append(p.numpy())
        vectors.append(e.numpy())
        labels.append(batch_labels.numpy())
        ids.extend(i.decode("utf-8") for i in batch_ids.numpy())
    return Queries(
        np.concatenate(probabilities),
        np.concatenate(vectors),
        np.concatenate(labels).astype(np.int64),
        ids,
    )


def folder_queries(trained, forward, folder: str, class_names: list[str]) -> Queries:
    """The photos of a folder of class folders, labelled by their index in class_names
    (which may hold classes the model was not trained on, unlike held_out.eval_data)."""
    from lmrec.data import pipeline
    from lmrec.data.sources import folders

    _, found, _ = folders.list_class_folder(folder)
    items = [(rel, path, class_names.index(c)) for rel, path, c in found if c in class_names]
    skipped: list[dict] = []
    dataset = pipeline.photo_dataset(
        items, trained.image_size, 32, trained.config.prepare.max_image_side, skipped
    )
    return run_queries(forward, dataset)


# --- classification, rejection, GAP -----------------------------------------------------


def votes_for(queries: Queries, gallery, num_classes: int, k: int, power: float):
    """kNN votes of the queries over a loaded lmrec.gallery.Gallery."""
    from lmrec import knn

    similarities, indices = knn.search(queries.embeddings, gallery.embeddings, k)
    labels = knn.gather_labels(gallery.vote_labels(), indices)
    return knn.knn_scores(similarities, labels, num_classes, power)


def landmark_classes(gallery) -> int:
    """The gallery's landmark classes; its distractor label, when there is one, comes last."""
    distractor = gallery.distractor_id
    if distractor is None:
        return len(gallery.labels)
    if distractor != len(gallery.labels) - 1:
        raise ValueError("the benchmark adds distractors after every landmark label")
    return distractor


def outputs(classifier: str, queries: Queries, gallery, settings: dict):
    """(probabilities [Q, C], KnnResult or None) of one classifier."""
    from lmrec import knn

    votes = None
    if knn.CLASSIFIERS.get(classifier).uses_gallery:
        num_classes = landmark_classes(gallery)
        votes = votes_for(queries, gallery, num_classes, settings["k"], settings["power"])
    probabilities = knn.classify(classifier, queries.probabilities, votes, settings["knn_weight"])
    return probabilities, votes


def gap(labels, predictions, confidences) -> float:
    """lmrec.metrics.global_average_precision with ties ranked wrong predictions first.

    Equal confidences are common with kNN (every neighbour of one class gives a top
    probability of exactly 1, and a gallery without distractors a vote share of 1 for
    every photo); the metric keeps the input order among them, which would rank the
    landmark photos (given first) above the distractors.
    """
    import numpy as np

    from lmrec import metrics

    labels, predictions = np.asarray(labels), np.asarray(predictions)
    confidences = np.asarray(confidences, np.float64)
    correct = (predictions == labels) & (labels != metrics.NO_LANDMARK)
    order = np.lexsort((correct, -confidences))
    return metrics.global_average_precision(labels[order], predictions[order], confidences[order])


def gap_random_ties(labels, predictions, confidences, draws: int = 100) -> float:
    """The mean GAP over random orders among equal confidences."""
    import numpy as np

    from lmrec import metrics

    rng = np.random.default_rng(0)
    values = []
    for _ in range(draws):
        order = rng.permutation(len(labels))
        values.append(
            metrics.global_average_precision(
                np.asarray(labels)[order],
                np.asarray(predictions)[order],
                np.asarray(confidences)[order],
            )
        )
    return float(np.mean(values))


def open_set_rows(
    classifier: str,
    kinds: list[str],
    validation: Queries,
    choosing_distractors: Queries,
    test: Queries,
    test_distractors: Queries,
    gallery,
    settings: dict,
) -> list[dict]:
    """One row per open-set score kind: the threshold chosen on validation data, and what
    it does on the test photos."""
    import numpy as np

    from lmrec import knn, metrics

    found = {
        name: outputs(classifier, queries, gallery, settings)
        for name, queries in (
            ("validation", validation),
            ("choosing_distractors", choosing_distractors),
            ("test", test),
            ("test_distractors", test_distractors),
        )
    }
    test_probabilities = found["test"][0]
    closed_predictions = test_probabilities.argmax(axis=1)
    accuracy = float(np.mean(closed_predictions == test.labels))
    rows = []
    for kind in kinds:
        scores = {
            name: np.asarray(knn.open_set_score(kind, probabilities, votes), np.float64)
            for name, (probabilities, votes) in found.items()
        }
        threshold = knn.choose_threshold(scores["validation"], scores["choosing_distractors"])
        probabilities = np.concatenate([test_probabilities, found["test_distractors"][0]])
        labels = np.concatenate([test.labels, test_distractors.labels])
        score = np.concatenate([scores["test"], scores["test_distractors"]])
        predictions = probabilities.argmax(axis=1)
        top = probabilities.max(axis=1).astype(np.float64)
        rejected = score < threshold.value
        kept_predictions = np.where(rejected, metrics.NO_LANDMARK, predictions)
        landmark = labels != metrics.NO_LANDMARK
        rows.append(
            {
                "classifier": classifier,
                "open_set_score": kind,
                "threshold": threshold.value,
                "validation_landmarks": len(validation),
                "validation_landmarks_rejected": threshold.landmarks_rejected,
                "choosing_distractors_rejected": threshold.distractors_rejected,
                "accuracy_without_distractors": bar("accuracy_without_distractors", accuracy),
                "gap_with_distractors": bar(
                    "gap_with_distractors",
                    gap(labels, kept_predictions, np.where(rejected, -np.inf, score)),
                ),
                "gap_with_distractors_ties_random_mean": gap_random_ties(
                    labels, kept_predictions, np.where(rejected, -np.inf, score)
                ),
                "gap_with_distractors_ties_landmarks_first": metrics.global_average_precision(
                    labels, kept_predictions, np.where(rejected, -np.inf, score)
                ),
                "gap_with_distractors_ranked_by_top_probability": gap(
                    labels, kept_predictions, np.where(rejected, -np.inf, top)
                ),
                "gap_without_distractors": gap(
                    labels[landmark],
                    kept_predictions[landmark],
                    np.where(rejected, -np.inf, score)[landmark],
                ),
                "gap_with_distractors_no_rejection": gap(labels, predictions, top),
                "tied_scores_of_kept_photos": int(
                    len(score[~rejected]) - len(np.unique(score[~rejected]))
                ),
                "landmarks_rejected": bar("landmarks_rejected", float(np.mean(rejected[landmark]))),
                "distractors_rejected": float(np.mean(rejected[~landmark])),
                "test_landmarks": int(landmark.sum()),
                "test_distractors": int((~landmark).sum()),
            }
        )
    return rows


def retrieval(test: Queries, gallery, k: int = 100) -> dict:
    """mAP@k and recall@1/5 of the test landmarks over the gallery's photos."""
    from lmrec import knn, metrics

    _, indices = knn.search(test.embeddings, gallery.embeddings, k)
    vote_labels = gallery.vote_labels()
    retrieved = knn.gather_labels(vote_labels, indices)
    relevant = metrics.count_relevant(test.labels, vote_labels)
    return {
        "gallery_photos": len(vote_labels),
        f"map_at_{k}": metrics.mean_average_precision_at_k(retrieved, test.labels, relevant, k),
        "recall_at_1": metrics.recall_at_k(retrieved, test.labels, 1),
        "recall_at_5": metrics.recall_at_k(retrieved, test.labels, 5),
    }


def accuracy_of(predictions, labels, keep=None) -> float:
    import numpy as np

    keep = np.ones(len(labels), bool) if keep is None else np.asarray(keep)
    return float(np.mean(np.asarray(predictions)[keep] == np.asarray(labels)[keep]))


# --- the measurements -------------------------------------------------------------------


def open_set(trained, forward, settings: dict) -> dict:
    """Part 1: "no landmark" with each classifier and score, and retrieval."""
    from lmrec import gallery as galleries
    from lmrec.data import held_out

    model_dir = trained.model_dir
    started = time.time()
    validation = run_queries(forward, held_out.eval_data(trained, "", 32).dataset)
    test = run_queries(
        forward, held_out.eval_data(trained, os.path.join(LANDMARKS, "test"), 32).dataset
    )
    choosing = run_queries(
        forward, held_out.distractor_data(trained, os.path.join(SCENES, "train"), 32).dataset
    )
    test_distractors = run_queries(
        forward, held_out.distractor_data(trained, os.path.join(SCENES, "test"), 32).dataset
    )
    query_seconds = round(time.time() - started, 1)
    plain = galleries.load(model_dir, trained)
    rows = open_set_rows(
        "softmax",
        ["top_probability"],
        validation,
        choosing,
        test,
        test_distractors,
        plain,
        settings,
    )
    kinds = ["top_probability", "top_similarity", "margin", "vote_share"]
    for classifier in ("knn", "hybrid"):
        rows += open_set_rows(
            classifier, kinds, validation, choosing, test, test_distractors, plain, settings
        )
    started = time.time()
    galleries.add(model_dir, "", [os.path.join(SCENES, "train")], distractors=True, verbose=False)
    add_seconds = round(time.time() - started, 1)
    with_distractors = galleries.load(model_dir, trained)
    for classifier in ("knn", "hybrid"):
        for row in open_set_rows(
            classifier,
            kinds,
            validation,
            choosing,
            test,
            test_distractors,
            with_distractors,
            settings,
        ):
            row["gallery"] = "with intel train distractors"
            rows.append(row)
    for row in rows:
        row.setdefault("gallery", "trained photos")
    return {
        "photos": {
            "validation_landmarks": len(validation),
            "test_landmarks": len(test),
            "choosing_distractors": len(choosing),
            "test_distractors": len(test_distractors),
            "gallery": len(plain.label_ids),
            "gallery_with_distractors": len(with_distractors.label_ids),
        },
        "query_seconds": query_seconds,
        "add_distractors_seconds": add_seconds,
        "rows": rows,
        "retrieval": {
            "trained photos": retrieval(test, plain),
            "with intel train distractors": retrieval(test, with_distractors),
        },
    }


def added_landmark(full, left_out_dir: str, left_out: str, settings: dict) -> dict:
    """Part 3: the model trained without left_out recognizes it after gallery.add."""
    import numpy as np

    from lmrec import gallery as galleries
    from lmrec import knn, run_files

    trained = run_files.load(left_out_dir)
    forward = forward_function(trained)
    galleries.build(left_out_dir, verbose=False)
    before = galleries.load(left_out_dir, trained)
    class_folder = os.path.join(LANDMARKS, "train", left_out)
    photos = sorted(os.path.join(class_folder, n) for n in os.listdir(class_folder))
    photos = photos[:MAX_ADDED_PHOTOS]
    started = time.time()
    added = galleries.add(left_out_dir, left_out, photos, verbose=False)
    add_seconds = round(time.time() - started, 1)
    after = galleries.load(left_out_dir, trained)
    names = after.class_names()
    test = folder_queries(trained, forward, os.path.join(LANDMARKS, "test"), names)
    is_added = test.labels == names.index(left_out)
    others = ~is_added

    predictions = {"softmax before the add": knn.classify("softmax", test.probabilities).argmax(1)}
    for classifier in ("knn", "hybrid"):
        predictions[f"{classifier} after the add"] = outputs(classifier, test, after, settings)[
            0
        ].argmax(1)
        predictions[f"{classifier} before the add"] = outputs(classifier, test, before, settings)[
            0
        ].argmax(1)
    # The model trained on every class, on the same photos of the other classes.
    full_names = full["trained"].class_names
    full_test = folder_queries(
        full["trained"], full["forward"], os.path.join(LANDMARKS, "test"), full_names
    )
    full_others = full_test.labels != full_names.index(left_out)
    full_accuracy = {
        classifier: accuracy_of(
            outputs(classifier, full_test, full["gallery"], settings)[0].argmax(1),
            full_test.labels,
            full_others,
        )
        for classifier in ("softmax", "knn", "hybrid")
    }
    baseline = accuracy_of(predictions["softmax before the add"], test.labels, others)
    result = {
        "left_out": left_out,
        "added_photos": added.added,
        "add_seconds": add_seconds,
        "gallery_photos_after_add": len(after.label_ids),
        "test_photos_of_added_class": int(is_added.sum()),
        "test_photos_of_other_classes": int(others.sum()),
        "other_classes_accuracy_of_model_trained_on_all_classes": full_accuracy,
        "other_classes_accuracy_softmax_before_add": baseline,
        "by_classifier": {},
    }
    for name, predicted in predictions.items():
        result["by_classifier"][name] = {
            "added_class_accuracy": accuracy_of(predicted, test.labels, is_added),
            "other_classes_accuracy": accuracy_of(predicted, test.labels, others),
        }
    for classifier in ("knn", "hybrid"):
        row = result["by_classifier"][f"{classifier} after the add"]
        row["added_class_accuracy"] = bar("added_class_accuracy", row["added_class_accuracy"])
        loss = round(100.0 * (baseline - row["other_classes_accuracy"]), 2)
        row["other_classes_loss_points_vs_softmax_before_add"] = bar(
            "other_classes_loss_points", loss
        )
        row["other_classes_loss_points_vs_same_classifier_all_classes"] = round(
            100.0 * (full_accuracy[classifier] - row["other_classes_accuracy"]), 2
        )
    # How the added class fares with other numbers of voting neighbours (on the test
    # photos, so a sensitivity, not a choice of k).
    result["k_sensitivity_after_add"] = {
        f"{classifier} k={k}": {
            part: accuracy_of(
                outputs(classifier, test, after, {**settings, "k": k})[0].argmax(1),
                test.labels,
                keep,
            )
            for part, keep in (("added_class", is_added), ("other_classes", others))
        }
        for classifier in ("knn", "hybrid")
        for k in (1, 3, 5, 10, 20)
    }
    result["confusions_after_add"] = {
        name: np.bincount(predicted[is_added], minlength=len(names)).tolist()
        for name, predicted in predictions.items()
    }
    result["class_names_after_add"] = names
    return result


def _pixel_batches(source) -> list:
    """A dataset's photos, decoded once, as float32 pixel batches in memory."""
    import tensorflow as tf

    return [tf.cast(pixels, tf.float32) for pixels, _, _ in source.dataset]


def _median_seconds(function, rounds: int) -> float:
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def _model_copy(trained, work_dir: str, name: str) -> str:
    """The model_dir's run files (no gallery, logs or report) under work_dir/runs/name."""
    import shutil

    copy = os.path.join(work_dir, "runs", name)
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(
        trained.model_dir,
        copy,
        ignore=shutil.ignore_patterns("gallery", ".gallery*", "logs", "report", "resume"),
    )
    return copy


def replicated_train_data(work_dir: str, copies: int) -> str:
    """The vn train photos, each linked `copies` times under its class, prepared as shards
    (no validation split): a gallery big enough that a build's fixed costs (loading the
    model, tracing) weigh as they do on a real dataset."""
    from lmrec.config import PrepareConfig
    from lmrec.data import prepare

    source = os.path.abspath(os.path.join(LANDMARKS, "train"))
    folder = os.path.join(work_dir, f"vn_train_x{copies}")
    for name in sorted(os.listdir(source)):
        os.makedirs(os.path.join(folder, name), exist_ok=True)
        for photo in sorted(os.listdir(os.path.join(source, name))):
            stem, extension = os.path.splitext(photo)
            for copy in range(copies):
                link = os.path.join(folder, name, f"{stem}__{copy}{extension}")
                if not os.path.lexists(link):
                    os.symlink(os.path.join(source, name, photo), link)
    name = f"vn_train_x{copies}"
    config = PrepareConfig.build(
        source="folder",
        input_dir=folder,
        output_dir=os.path.join(work_dir, "tf_records"),
        name=name,
        val_fraction=0.0,
    )
    data_dir = os.path.join(work_dir, "tf_records", name)
    if not prepare.is_prepared(data_dir):
        prepare.prepare(config, verbose=False)
    return data_dir


def build_speed(trained, work_dir: str, rounds: int = 3) -> dict:
    """gallery.build end to end against the plain loop over the same photos, and against
    the embedding model alone on the photos decoded in memory."""
    import tensorflow as tf

    from lmrec import embeddings
    from lmrec import gallery as galleries
    from lmrec.data import held_out, prepare

    data_dir = replicated_train_data(work_dir, BUILD_COPIES)
    photos = prepare.read_stats(data_dir)["totals"]["train"]
    model_dir = _model_copy(trained, work_dir, "build_speed")
    embedder = embeddings.embedding_model(trained.model)
    preprocess, size = trained.preprocess, trained.image_size
    spec = [tf.TensorSpec([None, size, size, 3], tf.float32)]

    def traced():
        @tf.function(input_signature=spec)
        def embed(pixels):
            return embedder(preprocess(pixels), training=False)

        return embed

    def plain_loop():
        # What a user would write: the embedding model in a tf.function (traced once per
        # run, as a build traces it), mapped over lmrec's own tf.data reader of the shards.
        embed = traced()
        source = held_out.train_data(trained, data_dir, 32)
        return [embed(tf.cast(pixels, tf.float32)).numpy() for pixels, _, _ in source.dataset]

    in_memory = _pixel_batches(held_out.train_data(trained, data_dir, 32))
    embed_in_memory = traced()
    embed_in_memory(in_memory[0]).numpy()

    def forward_alone():
        return [embed_in_memory(batch).numpy() for batch in in_memory]

    # The three alternate, so a change in the machine's load hits each of them.
    build_seconds, plain_seconds, forward_seconds = [], [], []
    for _ in range(rounds):
        started = time.perf_counter()
        result = galleries.build(model_dir, data=data_dir, verbose=False)
        build_seconds.append(time.perf_counter() - started)
        plain_seconds.append(_median_seconds(plain_loop, 1))
        forward_seconds.append(_median_seconds(forward_alone, 1))
    if result.photos != photos:
        raise RuntimeError(f"the build embedded {result.photos} photos, not {photos}")
    build, plain, forward = (
        statistics.median(build_seconds),
        statistics.median(plain_seconds),
        statistics.median(forward_seconds),
    )
    return {
        "photos": photos,
        "copies_of_each_train_photo": BUILD_COPIES,
        "build_seconds_each": [round(x, 2) for x in build_seconds],
        "plain_loop_seconds_each": [round(x, 2) for x in plain_seconds],
        "forward_alone_seconds_each": [round(x, 2) for x in forward_seconds],
        "build_photos_per_second": photos / build,
        "plain_loop_photos_per_second": photos / plain,
        "forward_alone_photos_per_second": photos / forward,
        "build_over_forward": bar("build_over_forward", plain / build),
        "build_over_forward_alone": forward / build,
        "note": (
            "build: lmrec.gallery.build end to end in the same process (loading the model, "
            "fingerprint, reading and decoding the prepared shards, tracing, forward pass, "
            "writing the segments and the index); plain loop: the embedding model in a "
            "tf.function traced once per run, mapped over the same shards read and decoded "
            "by the same tf.data reader, model already loaded, nothing written (the bar's "
            "bare forward pass over the photos); forward alone: the traced embedding model "
            "on the same photos decoded beforehand into memory, so without decoding; "
            f"{rounds} rounds alternating the three, medians"
        ),
    }


def _big_gallery_model(trained, plain, work_dir: str) -> str:
    """A copy of the model_dir whose gallery is its train photos plus random unit vectors
    under random trained classes, BIG_GALLERY rows in all."""
    import shutil

    import numpy as np

    from lmrec.gallery import store

    model_dir = _model_copy(trained, work_dir, "knn_speed")
    shutil.copytree(store.gallery_dir(trained.model_dir), store.gallery_dir(model_dir))
    directory = store.gallery_dir(model_dir)
    index = store.read_index(directory)
    trained_ids = [e["id"] for e in index["labels"] if e["origin"] == "trained"]
    rng = np.random.default_rng(0)
    extra = BIG_GALLERY - sum(e["count"] for e in index["labels"])
    rows = rng.standard_normal((extra, plain.dimension)).astype(np.float32)
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    labels = rng.choice(trained_ids, extra).astype(np.int32)
    segment = store.write_segment(
        directory,
        store.new_segment_name(index, "added"),
        rows,
        labels,
        [f"random-{i}" for i in range(extra)],
    )
    index["segments"].append(segment)
    counts = np.bincount(labels, minlength=max(trained_ids) + 1)
    for entry in index["labels"]:
        if entry["id"] in trained_ids:
            entry["count"] += int(counts[entry["id"]])
    store.write_index(directory, index)
    return model_dir


def knn_speed(trained, plain, work_dir: str, rounds: int = 3) -> dict:
    """predict's time per photo with --classifier=hybrid over a BIG_GALLERY-row gallery
    against --classifier=softmax, on the same model and photos; and the kNN step alone
    against the classifier's forward pass."""

    from lmrec import gallery as galleries
    from lmrec import predict, recognizer
    from lmrec.config import ClassifierConfig
    from lmrec.data import held_out

    model_dir = _big_gallery_model(trained, plain, work_dir)
    big = galleries.load(model_dir)
    folders = [
        os.path.join(LANDMARKS, "test"),
        os.path.join(SCENES, "test"),
        os.path.join(SCENES, "train"),
    ]
    taggers = {
        name: predict.load_tagger(model_dir, "auto", ClassifierConfig(classifier=name))
        for name in ("softmax", "hybrid")
    }
    outputs = os.path.join(work_dir, "knn_speed_outputs")
    os.makedirs(outputs, exist_ok=True)
    runs = {"softmax": 0, "hybrid": 0}

    def tag(name: str) -> int:
        runs[name] += 1
        output = os.path.join(outputs, f"{name}_{runs[name]}.csv")
        if os.path.exists(output):
            os.remove(output)
        result = predict.predict(taggers[name], folders, output, verbose=False)
        return len(result.rows)

    photos = tag("softmax")
    tag("hybrid")  # traces both before the timed rounds
    predict_seconds = {"softmax": [], "hybrid": []}
    for _ in range(rounds):
        for name in ("softmax", "hybrid"):
            started = time.perf_counter()
            tag(name)
            predict_seconds[name].append(time.perf_counter() - started)
    softmax = statistics.median(predict_seconds["softmax"]) / photos
    hybrid = statistics.median(predict_seconds["hybrid"]) / photos

    # The kNN step alone, as the Recognizer runs it, against the forward pass it follows.
    settings = recognizer.Settings(classifier="hybrid", score="top_similarity")
    rec = recognizer.Recognizer(trained, settings, big)
    batches = [
        b for b in _pixel_batches(held_out.train_data(trained, "", KNN_BATCH))
        if int(b.shape[0]) == KNN_BATCH
    ]  # fmt: skip
    forwarded = [rec._forward(b) for b in batches]
    forwarded = [(p.numpy(), e.numpy()) for p, e in forwarded]

    def forward_pass():
        return [tuple(x.numpy() for x in rec._forward(b)) for b in batches]

    def knn_step():
        return [rec.answer_embeddings(p, e) for p, e in forwarded]

    knn_step()
    forward_seconds, step_seconds = [], []
    for _ in range(rounds):
        forward_seconds.append(_median_seconds(forward_pass, 1))
        step_seconds.append(_median_seconds(knn_step, 1))
    per_photo = len(batches) * KNN_BATCH
    forward = statistics.median(forward_seconds) / per_photo
    step = statistics.median(step_seconds) / per_photo
    softmax_only = recognizer.Recognizer(trained, recognizer.Settings())
    no_knn = (
        statistics.median(
            _median_seconds(lambda: [softmax_only.answer_embeddings(p, e) for p, e in forwarded], 1)
            for _ in range(rounds)
        )
        / per_photo
    )
    return {
        "gallery_rows": int(len(big.label_ids)),
        "dimension": int(big.dimension),
        "gallery_megabytes_float16": round(big.embeddings.nbytes / 2**20, 1),
        "bytes_per_row_over_2d": big.embeddings.nbytes / len(big.label_ids) / (2 * big.dimension),
        "predict_photos": photos,
        "predict_softmax_ms_per_photo": 1000 * softmax,
        "predict_hybrid_ms_per_photo": 1000 * hybrid,
        "predict_softmax_seconds_each": [round(x, 2) for x in predict_seconds["softmax"]],
        "predict_hybrid_seconds_each": [round(x, 2) for x in predict_seconds["hybrid"]],
        "knn_added_fraction": bar("knn_added_fraction", hybrid / softmax - 1),
        "batch": KNN_BATCH,
        "batches": len(batches),
        "forward_ms_per_photo": 1000 * forward,
        "knn_ms_per_photo": 1000 * (step - no_knn),
        "knn_over_forward": (step - no_knn) / forward,
        "note": (
            "predict: lmrec.predict.predict of the vn test folder and the intel_scenes_small "
            "test and train folders (photos read, decoded, resized, classified, rows written "
            "to a CSV) through a model_dir Tagger loaded once per classifier, hybrid over "
            f"the gallery of the train photos plus random unit vectors ({BIG_GALLERY:,} rows, "
            f"float16), softmax with no gallery; {rounds} rounds alternating the two after "
            "one untimed run each, medians; the bar is hybrid's extra time per photo over "
            "softmax's. kNN step: Recognizer.answer_embeddings (search, votes, hybrid "
            "probabilities, top_similarity) per batch of 32 embeddings, less the same call "
            "without a gallery, against the forward pass (softmax and embedding) of the "
            "same batches in memory"
        ),
    }


# --- report -----------------------------------------------------------------------------


def _value(cell):
    return cell["value"] if isinstance(cell, dict) else cell


def _mark(cell) -> str:
    if not isinstance(cell, dict) or cell.get("met") is None:
        return ""
    return " ok" if cell["met"] else " MISS"


def markdown(result: dict) -> str:
    """The short table printed at the end (figure, then whether it meets its bar)."""
    lines = [
        "| classifier | gallery | open-set score | threshold | acc (no distractors) | "
        "GAP with distractors | landmarks rejected | distractors rejected |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for row in result["open_set"]["rows"]:
        acc, gap, rej = (
            row["accuracy_without_distractors"],
            row["gap_with_distractors"],
            row["landmarks_rejected"],
        )
        lines.append(
            f"| {row['classifier']} | {row['gallery']} | {row['open_set_score']} | "
            f"{row['threshold']:.3f} | {_value(acc):.3f}{_mark(acc)} | "
            f"{_value(gap):.3f}{_mark(gap)} | {_value(rej):.3f}{_mark(rej)} | "
            f"{row['distractors_rejected']:.3f} |"
        )
    lines += ["", "| retrieval over | gallery photos | mAP@100 | recall@1 | recall@5 |"]
    lines.append("|---|---:|---:|---:|---:|")
    for name, r in result["open_set"]["retrieval"].items():
        lines.append(
            f"| {name} | {r['gallery_photos']} | {r['map_at_100']:.3f} | "
            f"{r['recall_at_1']:.3f} | {r['recall_at_5']:.3f} |"
        )
    added = result["added_landmark"]
    lines += [
        "",
        f"Added {added['left_out']} ({added['added_photos']} photos) to the gallery of the "
        "model trained without it:",
        "",
        "| classifier | added class acc | other classes acc | loss vs softmax before add, points |",
        "|---|---:|---:|---:|",
    ]
    for name, r in added["by_classifier"].items():
        loss = r.get("other_classes_loss_points_vs_softmax_before_add")
        lines.append(
            f"| {name} | {_value(r['added_class_accuracy']):.3f}"
            f"{_mark(r['added_class_accuracy'])} | {r['other_classes_accuracy']:.3f} | "
            + (f"{_value(loss):.1f}{_mark(loss)} |" if loss else "- |")
        )
    build, big = result["speed"]["gallery_build"], result["speed"]["knn_big_gallery"]
    ratio, added_fraction = build["build_over_forward"], big["knn_added_fraction"]
    lines += [
        "",
        f"Gallery build of {build['photos']} photos: {build['build_photos_per_second']:.1f} "
        f"photos/s; plain embedding loop {build['plain_loop_photos_per_second']:.1f} photos/s: "
        f"{_value(ratio):.2f}{_mark(ratio)} (forward alone on decoded photos "
        f"{build['forward_alone_photos_per_second']:.1f} photos/s: "
        f"{build['build_over_forward_alone']:.2f}).",
        f"predict over {big['predict_photos']} photos: softmax "
        f"{big['predict_softmax_ms_per_photo']:.2f} ms/photo, hybrid over "
        f"{big['gallery_rows']:,} embeddings {big['predict_hybrid_ms_per_photo']:.2f} ms/photo: "
        f"+{_value(added_fraction):.3f}{_mark(added_fraction)}; kNN step alone "
        f"{big['knn_ms_per_photo']:.2f} ms/photo, {big['knn_over_forward']:.3f} of the "
        f"{big['forward_ms_per_photo']:.1f} ms/photo forward pass.",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work_dir", default=DEFAULT_WORK_DIR, help="runs and prepared data")
    parser.add_argument("--left_out", default=DEFAULT_LEFT_OUT, help="the class to add later")
    parser.add_argument("--output", default=OUTPUT)
    args = parser.parse_args()
    command = " ".join(["python benchmarks/open_set.py", *sys.argv[1:]])
    os.chdir(REPO)  # configs use paths relative to the repo root
    for folder in (LANDMARKS, SCENES):
        if not os.path.isdir(folder):
            print(f"{folder} is absent: nothing to measure", file=sys.stderr)
            return 1
    import machine_info
    import numpy as np

    from lmrec import atomic, embeddings, knn, run_files
    from lmrec import gallery as galleries
    from lmrec.data import held_out

    machine = machine_info.machine()
    work_dir = os.path.abspath(args.work_dir)
    os.makedirs(work_dir, exist_ok=True)
    training = train_models(work_dir, args.left_out)
    model_dir = training["all_classes"]["model_dir"]
    trained = run_files.load(model_dir)
    forward = forward_function(trained)

    # The two-output forward pass against lmrec.embeddings on the validation photos.
    validation = held_out.eval_data(trained, "", 32).dataset
    reference, _, reference_ids = embeddings.embed_dataset(trained, validation)
    mine = run_queries(forward, validation)
    if mine.ids != reference_ids:
        raise RuntimeError("the validation photos came in another order")
    embedding_difference = float(np.max(np.abs(mine.embeddings - reference)))

    galleries.build(model_dir, verbose=False)
    plain = galleries.load(model_dir, trained)
    settings = {
        "k": knn.DEFAULT_K,
        "power": knn.DEFAULT_POWER,
        "knn_weight": knn.DEFAULT_KNN_WEIGHT,
        "max_landmarks_rejected": knn.DEFAULT_MAX_LANDMARKS_REJECTED,
        "threshold_confidence": knn.DEFAULT_THRESHOLD_CONFIDENCE,
    }
    print("measuring open-set recognition ...", file=sys.stderr)
    open_set_result = open_set(trained, forward, settings)
    print("measuring an added landmark ...", file=sys.stderr)
    full = {"trained": trained, "forward": forward, "gallery": plain}
    added = added_landmark(full, training["left_out"]["model_dir"], args.left_out, settings)
    print("measuring speed ...", file=sys.stderr)
    speed_result = {
        "gallery_build": build_speed(trained, work_dir),
        "knn_big_gallery": knn_speed(trained, plain, work_dir),
    }
    # The same embedding path on small files: gallery.add of the intel train distractors.
    speed_result["gallery_add"] = {
        "photos": open_set_result["photos"]["choosing_distractors"],
        "photos_per_second": open_set_result["photos"]["choosing_distractors"]
        / max(open_set_result["add_distractors_seconds"], 1e-9),
        "note": (
            "lmrec.gallery.add of the intel_scenes_small train photos (150x150 JPEG files) "
            "as distractors, end to end, one run timed during the open-set part"
        ),
    }
    result = {
        "benchmark": "open_set",
        "date": datetime.date.today().isoformat(),
        "machine": machine,
        "command": command,
        "config": CONFIG,
        "data": {"landmarks": LANDMARKS, "distractors": SCENES},
        "settings": settings,
        "gap_rule": (
            "As lmrec.evaluate: a photo whose open-set score is below the threshold is "
            "rejected (prediction NO_LANDMARK, confidence -inf: no prediction); every other "
            "photo predicts its top class with the open-set score as confidence, so a kept "
            "distractor is a wrong prediction ranked by that score. Equal confidences rank "
            "wrong predictions first; gap_with_distractors_ties_random_mean is the mean over "
            "random orders among ties; gap_with_distractors_ties_landmarks_first keeps "
            "lmrec.evaluate's order among ties (landmark photos before distractors). "
            "gap_with_distractors_ranked_by_top_probability ranks by the top class "
            "probability instead; gap_with_distractors_no_rejection rejects nothing."
        ),
        "threshold_rule": (
            "lmrec.knn.choose_threshold on the validation split's landmark photos (the "
            "intel_scenes_small train photos only report what it rejects); with fewer than "
            "45 validation landmarks it sits just below the lowest validation score"
        ),
        "training": training,
        "embedding_max_abs_difference_from_lmrec_embeddings": embedding_difference,
        "open_set": open_set_result,
        "added_landmark": added,
        "speed": speed_result,
    }
    result["markdown"] = markdown(result)
    print(result["markdown"])
    atomic.write_json(args.output, result)
    print(f"wrote {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
