"""Phase 1 on cached features: the same head as on images, and off (with the reason) if not."""

from __future__ import annotations

import csv
import os

import numpy as np
import pytest

from lmrec import feature_cache, run_files, training
from lmrec.config import ModelConfig
from lmrec.data import pipeline, prepare
from lmrec.errors import UserError
from lmrec.models import classifier
from lmrec.train import train_and_evaluate
from tests.conftest import small_demo_config, tiny_run_config

# Trains, exports or runs commands: left out by `pytest -m "not slow"`.
pytestmark = pytest.mark.slow


def _tiny(tmp_path, demo_records, name: str, **overrides):
    """Phase 1 only, a few steps: training mechanics, not accuracy."""
    settings = dict(model_dir=str(tmp_path / name), epochs_frozen=3, epochs_finetune=0)
    settings["steps_per_epoch"] = 2
    return tiny_run_config(str(tmp_path), demo_records, **{**settings, **overrides})


def _train_images(demo_records) -> int:
    return prepare.read_stats(demo_records)["totals"]["train"]


def test_cached_and_uncached_frozen_phases_give_equal_weights(tmp_path, demo_records, monkeypatch):
    # One batch per epoch holding the whole training split, so the order within a pass does
    # not matter; without augmentation or dropout the two phases then compute the same
    # gradients up to float summation order. The image pipeline runs in order here: in any
    # order (its default, for speed) an image of the next pass can overtake one of this pass
    # and land in this epoch's batch (seen: 1e-4 apart, 1 run in 2). SGD, because Adam's
    # first steps are about lr * sign(gradient): a gradient near 0 whose sign the summation
    # order flips moves a weight by up to 2 * lr (measured: 6e-5 to 5e-4 apart with Adam,
    # 4e-9 with SGD).
    make_dataset = pipeline.make_dataset
    monkeypatch.setattr(
        pipeline, "make_dataset", lambda *a, **k: make_dataset(*a, **k, deterministic=True)
    )
    images = _train_images(demo_records)
    settings = dict(
        optimizer="sgd",
        lr_frozen=0.05,
        augment="none",
        dropout=0.0,
        batch_size=images,
        steps_per_epoch=1,
        select_epoch="last",
        tensorboard_images=2,
    )
    runs = {
        mode: train_and_evaluate(
            _tiny(tmp_path, demo_records, mode, cache_frozen_features=mode, **settings),
            verbose=False,
        )
        for mode in ("on", "off")
    }
    cached, uncached = runs["on"], runs["off"]
    assert cached.feature_cache["used"] and cached.feature_cache["passes"] == 1
    assert cached.feature_cache["shape"] == [256]  # the baseline's 2x2x256 map after "gap"
    assert uncached.feature_cache == {"used": False, "reason": "--cache_frozen_features=off"}

    # The checkpoint holds the whole classifier, equal to the one trained on images.
    trained = {mode: run_files.load(run.model_dir).model for mode, run in runs.items()}
    for a, b in zip(trained["on"].weights, trained["off"].weights, strict=True):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-5, err_msg=a.path)
    assert cached.history[-1]["loss"] < cached.history[0]["loss"], "the head trained"
    for key in ("loss", "accuracy", "val_loss", "val_accuracy", "learning_rate"):
        np.testing.assert_allclose(
            [row[key] for row in cached.history],
            [row[key] for row in uncached.history],
            rtol=1e-4,
            err_msg=key,
        )

    # The same outputs as an ordinary phase 1: history rows, both checkpoints, TensorBoard.
    with open(os.path.join(cached.model_dir, run_files.HISTORY_CSV), encoding="utf-8") as f:
        assert [row["phase"] for row in csv.DictReader(f)] == ["frozen"] * 3
    for name in (run_files.BEST_WEIGHTS, run_files.LAST_WEIGHTS):
        assert os.path.isfile(os.path.join(cached.model_dir, name))
    logs = os.path.join(cached.model_dir, run_files.LOGS_DIR)
    assert sorted(os.listdir(logs)) == ["samples", "train", "validation"]
    assert cached.phase_seconds["frozen"] >= cached.feature_cache["seconds"]


def _model(**overrides) -> ModelConfig:
    return ModelConfig(**{"backbone": "baseline", "weights": "none", **overrides})


def test_augmented_passes_are_cached_on_disk_and_deleted_after_the_phase(
    tmp_path, demo_records, monkeypatch
):
    caches = []
    extract = feature_cache.extract
    monkeypatch.setattr(
        feature_cache, "extract", lambda *a, **k: caches.append(extract(*a, **k)) or caches[-1]
    )
    cache_dir = tmp_path / "cache"
    experiment = _tiny(
        tmp_path,
        demo_records,
        "light",
        augment="light",
        feature_cache_passes=2,
        feature_cache_dir=str(cache_dir),
        cache_frozen_features="on",
    )
    result = train_and_evaluate(experiment, verbose=False)

    (cache,) = caches
    images = _train_images(demo_records)
    assert cache.passes == 2 and cache.features.shape == (2 * images, 256)
    assert isinstance(cache.features, np.memmap)
    assert result.feature_cache["storage"] == "disk" and result.feature_cache["passes"] == 2
    first, second = cache.labels[:images], cache.labels[images:]
    assert sorted(first) == sorted(second), "each pass holds every training image once"
    by_label = [np.sort(cache.features[:images][first == 0], axis=0)]
    by_label.append(np.sort(cache.features[images:][second == 0], axis=0))
    assert not np.allclose(*by_label), "the two passes are augmented differently"
    assert os.listdir(cache_dir) == [], "the cache is deleted when phase 1 ends"
    assert [row["phase"] for row in result.history] == ["frozen"] * 3


def test_training_batches_cycle_through_the_passes():
    passes, images = 3, 6
    features = np.repeat(np.arange(passes, dtype=np.float32), images)[:, None]  # = pass index
    cache = feature_cache.FeatureCache(
        features=features,
        labels=np.tile(np.arange(images, dtype=np.int32) % 3, passes),
        passes=passes,
        val_features=None,
        val_labels=None,
        head=None,
        plan=feature_cache.Plan(),
        seconds=0.0,
    )
    experiment = small_demo_config("/unused", batch_size=images, augment="light")
    batches = cache.training_dataset(experiment, 3).take(7)
    epochs = [(x.numpy()[:, 0], y.numpy()) for x, y in batches]
    assert [set(x) for x, _ in epochs] == [{e % passes} for e in range(7)]
    assert all(sorted(y.argmax(-1)) == [0, 0, 1, 1, 2, 2] for _, y in epochs)
    assert cache.validation_dataset(images, 3) is None


def test_passes_are_at_most_the_frozen_epochs_and_one_without_augmentation(tmp_path):
    def passes(**overrides):
        return feature_cache.cached_passes(small_demo_config(str(tmp_path), **overrides))

    assert passes(augment="light", feature_cache_passes=3, epochs_frozen=10) == 3
    assert passes(augment="light", feature_cache_passes=3, epochs_frozen=2) == 2
    assert passes(augment="none", feature_cache_passes=3, epochs_frozen=10) == 1


@pytest.fixture(scope="module")
def baseline_model():
    return classifier.build_classifier(_model(), 8, 32)


STATS = {"totals": {"train": 160, "val": 40}}


@pytest.mark.parametrize(
    "overrides, reason",
    [
        (dict(mixing="mixup"), "--mixing=mixup mixes images"),
        (dict(cache_frozen_features="off"), "--cache_frozen_features=off"),
        # 2 epochs of 1 step of 16 images (+ 40 val) read fewer images than one pass of 160.
        (dict(augment="none", epochs_frozen=2), "no fewer than the 112"),
    ],
)
def test_auto_leaves_the_cache_off_and_says_why(tmp_path, baseline_model, overrides, reason):
    settings = dict(epochs_frozen=10, batch_size=16, mixing="none", image_size=32)
    experiment = small_demo_config(str(tmp_path), **{**settings, **overrides})
    plan = feature_cache.plan(baseline_model, experiment, STATS, 1, str(tmp_path))
    assert not plan.use and reason in plan.reason
    assert plan.describe().startswith("Phase frozen reads images (no feature cache): ")


def test_scratch_backbone_with_dropout_is_not_cached(tmp_path):
    model = classifier.build_classifier(_model(backbone="efficientnetb0"), 8, 32)
    experiment = small_demo_config(
        str(tmp_path), backbone="efficientnetb0", image_size=32, epochs_frozen=10, mixing="none"
    )
    plan = feature_cache.plan(model, experiment, STATS, 10, str(tmp_path))
    assert not plan.use and "random layers (block2b_drop" in plan.reason
    pretrained = experiment.replace(model={"weights": "imagenet"})
    assert feature_cache.plan(model, pretrained, STATS, 10, str(tmp_path)).use


def test_on_refuses_what_the_cache_cannot_reproduce(tmp_path, baseline_model):
    experiment = small_demo_config(
        str(tmp_path), image_size=32, mixing="cutmix", cache_frozen_features="on"
    )
    with pytest.raises(UserError, match="--cache_frozen_features=on, but --mixing=cutmix"):
        feature_cache.plan(baseline_model, experiment, STATS, 1, str(tmp_path))


def test_mixing_run_reads_images_and_prints_why(tmp_path, demo_records, capsys):
    experiment = _tiny(tmp_path, demo_records, "mixup", mixing="mixup", epochs_frozen=1)
    result = train_and_evaluate(experiment, verbose=True)
    assert result.feature_cache["used"] is False
    err = capsys.readouterr().err
    assert "Phase frozen reads images (no feature cache): --mixing=mixup mixes images" in err


def test_mirrored_strategy_trains_on_cached_features(tmp_path, demo_records, capsys):
    experiment = _tiny(
        tmp_path,
        demo_records,
        "mirrored",
        augment="none",
        strategy="mirrored",
        cache_frozen_features="on",
        epochs_frozen=2,
    )
    result = train_and_evaluate(experiment, verbose=True)
    assert result.feature_cache["used"] and len(result.history) == 2
    assert np.isfinite(result.history[-1]["loss"])
    err = capsys.readouterr().err
    assert "Phase frozen on cached features: the backbone runs once over 1 pass of" in err
    assert "in memory" in err


@pytest.mark.parametrize(
    "flag, value", [("cache_frozen_features", "sometimes"), ("feature_cache_passes", 0)]
)
def test_bad_cache_flags_are_rejected(tmp_path, flag, value):
    experiment = small_demo_config(str(tmp_path), **{flag: value})
    with pytest.raises(UserError, match=f"--{flag}"):
        training.validate(experiment)
