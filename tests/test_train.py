"""Training from a flagfile: the demo config beats chance, and model_dir describes itself."""

from __future__ import annotations

import csv
import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from lmrec import callbacks, config, console, performance, run_files, training
from lmrec.data import records
from lmrec.errors import UserError
from lmrec.models import classifier
from lmrec.train import train_and_evaluate
from tests.conftest import small_demo_config, tiny_run_config

# Trains, exports or runs commands: left out by `pytest -m "not slow"`.
pytestmark = pytest.mark.slow

# 8 classes: chance is 0.125. The shrunk demo run (conftest.trained_demo) reached 0.53, 0.56 and
# 0.57 validation accuracy in three runs on a 2-core CPU; 0.35 (2.8x chance) leaves room for the
# run-to-run noise of multi-threaded training.
CHANCE = 1 / 8
REQUIRED_ACCURACY = 2.8 * CHANCE


def test_demo_config_beats_chance_by_a_wide_margin(trained_demo):
    metrics = trained_demo.metrics
    assert metrics["num_images"] == 8 * 16  # 20% of 80 per class held out
    assert metrics["accuracy"] >= REQUIRED_ACCURACY, metrics["accuracy"]
    assert metrics["top5_accuracy"] > metrics["accuracy"]
    assert 0.0 < metrics["gap"] <= 1.0 and 0.0 < metrics["macro_f1"] <= 1.0


def test_both_phases_ran_and_history_records_them(trained_demo):
    phases = [row["phase"] for row in trained_demo.history]
    assert phases == ["frozen"] + ["finetune"] * 10
    with open(os.path.join(trained_demo.model_dir, run_files.HISTORY_CSV), encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert [r["phase"] for r in rows] == phases
    assert {"loss", "accuracy", "val_loss", "val_accuracy", "learning_rate"} <= set(rows[0])
    # Cosine schedule: the learning rate falls within phase 2.
    finetune_rates = [float(r["learning_rate"]) for r in rows if r["phase"] == "finetune"]
    assert finetune_rates[-1] < finetune_rates[0]


def test_model_dir_is_self_describing(trained_demo):
    d = trained_demo.model_dir
    for name in (
        run_files.FLAGS_FILE,
        run_files.CONFIG_FILE,
        records.LABELS_FILE,
        run_files.BEST_WEIGHTS,
        run_files.LAST_WEIGHTS,
        run_files.CURVES_PNG,
        os.path.join(run_files.REPORT_DIR, "metrics.json"),
        os.path.join(run_files.REPORT_DIR, "confusion_matrix.png"),
    ):
        assert os.path.isfile(os.path.join(d, name)), name
    assert os.listdir(os.path.join(d, run_files.LOGS_DIR)), "TensorBoard logs written"
    rerun = config.experiment_from_flagfile(os.path.join(d, run_files.FLAGS_FILE))
    assert rerun == config.load_experiment(os.path.join(d, run_files.CONFIG_FILE))
    assert rerun.data.image_size == 64 and rerun.train.model_dir == d
    with open(os.path.join(d, records.LABELS_FILE), encoding="utf-8") as f:
        assert [e["name"] for e in json.load(f)][:2] == ["tower", "arch"]
    leftovers = [n for _, _, files in os.walk(d) for n in files if n.startswith(".tmp-")]
    assert not leftovers, leftovers


def test_best_checkpoint_is_the_best_validation_epoch(trained_demo):
    best = max(row["val_accuracy"] for row in trained_demo.history)
    assert trained_demo.best_value == pytest.approx(best)
    tied = [row for row in trained_demo.history if row["val_accuracy"] == best]
    chosen = trained_demo.history[trained_demo.best_epoch - 1]
    assert chosen["val_accuracy"] == pytest.approx(best)
    assert chosen["val_loss"] == min(row["val_loss"] for row in tied), "ties go to the lower loss"


def test_unwritable_model_dir_fails_at_once(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    experiment = small_demo_config(str(tmp_path), model_dir=str(blocker / "run"))
    with pytest.raises(UserError, match="--model_dir=.* is not writable"):
        train_and_evaluate(experiment, verbose=False)


@pytest.mark.parametrize("select, kept_epoch", [("best", 1), ("last", 2)])
def test_select_epoch_decides_which_weights_are_kept(tmp_path, select, kept_epoch):
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1, use_bias=False)])
    saved = callbacks.AtomicCheckpoint(str(tmp_path), "val_accuracy", select)
    saved.set_model(model)
    kernels = {}
    for epoch, accuracy in ((1, 0.9), (2, 0.8)):
        kernels[epoch] = np.full((2, 1), float(epoch), np.float32)
        model.layers[0].kernel.assign(kernels[epoch])
        saved.on_epoch_end(epoch - 1, {"val_accuracy": accuracy, "val_loss": 1.0})
        saved.hold()  # as the resume checkpoint does at an epoch end it does not save
    # Epoch ends only note what is due; the files come with the next flush.
    assert not os.path.exists(tmp_path / run_files.BEST_WEIGHTS)
    model.layers[0].kernel.assign(np.zeros((2, 1), np.float32))  # training went on
    saved.on_train_end()
    np.testing.assert_array_equal(model.layers[0].kernel.numpy(), np.zeros((2, 1)))
    for name, epoch in ((run_files.BEST_WEIGHTS, kept_epoch), (run_files.LAST_WEIGHTS, 2)):
        model.load_weights(str(tmp_path / name))
        np.testing.assert_array_equal(model.layers[0].kernel.numpy(), kernels[epoch])
    assert saved.best_epoch == kept_epoch


def test_unknown_select_epoch_is_rejected(tmp_path):
    experiment = small_demo_config(str(tmp_path), select_epoch="first")
    with pytest.raises(UserError, match="--select_epoch"):
        training.validate(experiment)


def test_arcface_run_evaluates_exports_and_reloads(tmp_path, demo_records):
    """--loss=subcenter_arcface through train, evaluate, export and model_dir.load."""
    experiment = _tiny(
        tmp_path,
        demo_records,
        loss="subcenter_arcface",
        subcenters=2,
        evaluate_after=True,
        export_after=True,
        tensorboard_images=8,
    )
    result = train_and_evaluate(experiment, verbose=False)
    assert 0.0 <= result.metrics["accuracy"] <= 1.0 and np.isfinite(result.history[0]["loss"])
    trained = run_files.load(result.model_dir)
    assert trained.config.model.loss == "subcenter_arcface"
    assert trained.model.head.get_layer("cosine_classifier").kernel.shape[-1] == 8 * 2
    images = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    expected = trained.model(trained.preprocess(images.astype("float32")), training=False)
    served = tf.saved_model.load(result.export_path).signatures["serving_images"](
        images=tf.constant(images)
    )
    np.testing.assert_allclose(served["probabilities"].numpy(), expected.numpy(), atol=1e-5)


def _tiny(tmp_path, demo_records, **overrides):
    """A couple of fine-tuning steps: training mechanics, not accuracy."""
    settings = dict(epochs_frozen=0, epochs_finetune=1, steps_per_epoch=2)
    return tiny_run_config(str(tmp_path), demo_records, **{**settings, **overrides})


def test_mixed_bfloat16_trains_in_bfloat16_then_evaluates_and_exports_in_float32(
    tmp_path, demo_records, monkeypatch
):
    built = []  # the training model, then evaluate's and export's rebuilt ones
    build = classifier.build_classifier
    monkeypatch.setattr(
        classifier, "build_classifier", lambda *a, **k: built.append(build(*a, **k)) or built[-1]
    )
    experiment = _tiny(
        tmp_path, demo_records, mixed_precision="bfloat16", evaluate_after=True, export_after=True
    )
    result = train_and_evaluate(experiment, verbose=False)

    assert keras.mixed_precision.global_policy().name == "float32", "policy restored"
    trained, evaluated = built[0], built[1]
    conv = trained.backbone.get_layer("stem_conv")
    assert (conv.compute_dtype, conv.variable_dtype) == ("bfloat16", "float32")
    assert trained.head.get_layer("probabilities").compute_dtype == "float32"
    assert np.isfinite(result.history[0]["loss"]) and 0.0 <= result.metrics["accuracy"] <= 1.0
    assert evaluated.backbone.get_layer("stem_conv").compute_dtype == "float32"
    images = tf.zeros([1, 32, 32, 3], tf.uint8)
    served = tf.saved_model.load(result.export_path).signatures["serving_images"](images=images)
    assert served["probabilities"].dtype == tf.float32


@pytest.mark.parametrize("jit_compile", ["true", "false"])
def test_float16_compiles_with_loss_scaling_and_jit_compile_follows_the_flag(tmp_path, jit_compile):
    experiment = small_demo_config(str(tmp_path), jit_compile=jit_compile)
    with performance.dtype_policy(performance.dtype_policy_name("float16")):
        model = classifier.build_classifier(experiment.model, 4, 32)
    training.prepare_phase(model, "frozen", 1e-3, 1, 1, experiment)
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    assert model.jit_compile is (jit_compile == "true")
    assert keras.mixed_precision.global_policy().name == "float32"


@pytest.mark.skipif(performance.gpu_visible(), reason="the warnings are for CPU-only machines")
def test_slow_settings_on_cpu_warn_without_refusing():
    (xla,) = performance.warnings_for("none", "true", "efficientnet_lite0")
    assert "several-fold" in xla
    assert performance.warnings_for("none", "auto", "efficientnet_lite0") == []
    assert performance.warnings_for("none", "true", "baseline") == []
    (float16,) = performance.warnings_for("float16", "false", "baseline")
    assert "without a GPU" in float16
    assert performance.dtype_policy_name("auto") == "float32"


@pytest.mark.parametrize(
    "flag, value",
    [
        ("mixed_precision", "float8"),
        ("jit_compile", "yes"),
        ("early_stopping_metric", "val_f1"),
        ("early_stopping_patience", -1),
        ("tensorboard_images", -1),
        ("tensorboard_images_every", 0),
        ("checkpoint_min_seconds", -1),
    ],
)
def test_bad_performance_and_callback_flags_are_rejected(tmp_path, flag, value):
    experiment = small_demo_config(str(tmp_path), **{flag: value})
    with pytest.raises(UserError, match=f"--{flag}"):
        training.validate(experiment)


@pytest.mark.parametrize(
    "flag, value, closest",
    [
        ("early_stopping_metric", "val_acuracy", "val_accuracy"),
        ("cache_frozen_features", "of", "off"),
    ],
)
def test_unknown_names_list_the_valid_ones_and_the_closest(tmp_path, flag, value, closest):
    experiment = small_demo_config(str(tmp_path), **{flag: value})
    with pytest.raises(UserError, match=f"did you mean '{closest}'.*valid .* names: "):
        training.validate(experiment)


def test_quiet_mode_silences_the_messages_and_verbose_brings_them(tmp_path, demo_records, capsys):
    experiment = _tiny(tmp_path, demo_records, balance="class_weights")
    with console.quiet():
        result = train_and_evaluate(experiment)  # verbose, but the console is quiet
    quiet = capsys.readouterr()
    assert quiet.err == "" and quiet.out == "", "no message, no progress bar"
    assert result.history and not console.is_quiet(), "quiet ends with the block"

    train_and_evaluate(experiment, verbose=False)  # finished: evaluates and exports only
    assert capsys.readouterr().err == ""
    train_and_evaluate(experiment)
    err = capsys.readouterr().err
    assert "already finished" in err and "Balance: class_weights" in err and "Done in" in err


def _summaries(folder: str) -> dict[str, list[tuple[int, str]]]:
    """tag -> [(step, plugin name)] of every summary in the event files under folder."""
    found: dict[str, list[tuple[int, str]]] = {}
    for path in tf.io.gfile.glob(os.path.join(folder, "events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                found.setdefault(value.tag, []).append(
                    (event.step, value.metadata.plugin_data.plugin_name)
                )
    return found


# "on": phase 1 trains part of the head on cached features; the callbacks must not notice.
@pytest.mark.parametrize("cache", ["off", "on"])
def test_early_stopping_ends_a_phase_and_tensorboard_gets_images_and_learning_rate(
    tmp_path, demo_records, cache
):
    # A learning rate of 0 on a frozen backbone: val_accuracy cannot improve after epoch 1.
    experiment = _tiny(
        tmp_path,
        demo_records,
        epochs_frozen=4,
        lr_frozen=0.0,
        early_stopping_patience=1,
        early_stopping_metric="val_accuracy",
        tensorboard_images=4,
        tensorboard_images_every=2,
        cache_frozen_features=cache,
    )
    result = train_and_evaluate(experiment, verbose=False)

    assert [(row["epoch"], row["phase"]) for row in result.history] == [
        (1, "frozen"),
        (2, "frozen"),
        (3, "finetune"),
    ]
    assert result.stopped_early == {"frozen": 2}
    assert result.feature_cache["used"] is (cache == "on")
    logs = os.path.join(result.model_dir, run_files.LOGS_DIR)
    samples = _summaries(os.path.join(logs, "samples"))
    # Every 2nd epoch (epoch 1, the first's drawing skipped) and each phase's last (2).
    assert samples["sample_predictions"] == [(1, "images"), (2, "images")]
    assert "epoch_learning_rate" in _summaries(os.path.join(logs, "train"))


def test_epoch_tensorboard_skips_per_step_summary_calls_but_logs_every_epoch(tmp_path, monkeypatch):
    """Keras' TensorBoard calls tf.summary.scalar per step even when logging per epoch."""
    names: list[str] = []
    scalar = tf.summary.scalar

    def recording(name, *args, **kwargs):
        names.append(name)
        return scalar(name, *args, **kwargs)

    monkeypatch.setattr(tf.summary, "scalar", recording)
    x = np.random.default_rng(0).normal(size=(12, 3)).astype("float32")
    y = np.eye(2, dtype="float32")[np.arange(12) % 2]
    calls = {}
    for board in (keras.callbacks.TensorBoard, callbacks.EpochTensorBoard):
        names.clear()
        model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, activation="softmax")])
        model.compile("sgd", "categorical_crossentropy", metrics=["accuracy"])
        log_dir = str(tmp_path / board.__name__)
        model.fit(x, y, batch_size=4, epochs=2, verbose=0, callbacks=[board(log_dir=log_dir)])
        calls[board] = list(names)
        logged = _summaries(os.path.join(log_dir, "train"))
        assert [step for step, _ in logged["epoch_loss"]] == [0, 1]
        assert "epoch_learning_rate" in logged and not any(t.startswith("batch_") for t in logged)
    assert calls[keras.callbacks.TensorBoard].count("batch_loss") == 6  # 3 steps x 2 epochs
    assert not any(name.startswith("batch_") for name in calls[callbacks.EpochTensorBoard])
    assert [n for n in calls[callbacks.EpochTensorBoard] if n.startswith("epoch_")] == [
        n for n in calls[keras.callbacks.TensorBoard] if n.startswith("epoch_")
    ]
    with pytest.raises(ValueError, match="per epoch"):
        callbacks.EpochTensorBoard(log_dir=str(tmp_path), update_freq=10)


def test_training_curves_of_a_run_without_a_finished_epoch_say_so_without_warnings(tmp_path):
    import warnings

    from lmrec import plots

    path = tmp_path / "curves.png"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # matplotlib warns on a legend with nothing in it
        plots.training_curves_png([], str(path))
    assert path.stat().st_size > 0
