"""A killed run resumes from its last checkpoint and trains exactly the steps that were left."""

from __future__ import annotations

import csv
import filecmp
import json
import os
import signal
import subprocess
import sys
import time

import h5py
import keras
import numpy as np
import pytest

from lmrec import callbacks, resume, run_files
from lmrec.errors import UserError
from lmrec.train import train_and_evaluate
from tests.conftest import REPO, TINY_RUN, small_demo_config

# Trains, exports or runs commands: left out by `pytest -m "not slow"`.
pytestmark = pytest.mark.slow

STEPS_PER_EPOCH = 6
FROZEN_EPOCHS, FINETUNE_EPOCHS = 1, 2
EXPECTED_STEPS = {"frozen": STEPS_PER_EPOCH * FROZEN_EPOCHS, "finetune": 2 * STEPS_PER_EPOCH}


def _settings(demo_records, **overrides) -> dict:
    settings = dict(
        TINY_RUN,
        data_dir=demo_records,
        epochs_frozen=FROZEN_EPOCHS,
        epochs_finetune=FINETUNE_EPOCHS,
        steps_per_epoch=STEPS_PER_EPOCH,
        batch_size=8,
        checkpoint_every_steps=1,
    )
    settings.update(overrides)
    return settings


def _config(tmp_path, demo_records, **overrides):
    return small_demo_config(str(tmp_path), **_settings(demo_records, **overrides))


class _Interrupt(Exception):
    pass


class _KillAt(keras.callbacks.Callback):
    """Stands in for a kill: raises after global step `at`, once its checkpoint is saved."""

    def __init__(self, at: int):
        super().__init__()
        self.at = at

    def on_train_batch_end(self, batch, logs=None):
        if int(self.model.optimizer.iterations) >= self.at:
            self.weights = self.model.get_weights()  # what the model held when it "died"
            raise _Interrupt


class _EpochEndWeights(keras.callbacks.Callback):
    def __init__(self, into: dict):
        super().__init__()
        self.into = into

    def on_epoch_end(self, epoch, logs=None):
        self.into[epoch + 1] = self.model.get_weights()


def _has_optimizer(path: str) -> bool:
    with h5py.File(path, "r") as f:
        return "optimizer" in f


def _train_until_interrupted(config, monkeypatch, callbacks_for) -> resume.State:
    """Trains with callbacks_for(model, fit kwargs) added to each fit until one raises
    _Interrupt (a stand-in for a kill); returns the state the run saved."""
    original_fit = keras.Model.fit

    def fit(self, *args, **kwargs):
        kwargs["callbacks"] = [*kwargs["callbacks"], *callbacks_for(self, kwargs)]
        return original_fit(self, *args, **kwargs)

    monkeypatch.setattr(keras.Model, "fit", fit)
    with pytest.raises(_Interrupt):
        train_and_evaluate(config, verbose=False)
    monkeypatch.setattr(keras.Model, "fit", original_fit)
    return resume.read(config.train.model_dir)


def _history(model_dir: str) -> list[dict]:
    with open(os.path.join(model_dir, run_files.HISTORY_CSV)) as f:
        return list(csv.DictReader(f))


def _leftovers(model_dir: str) -> list[str]:
    return [
        os.path.join(root, name)
        for root, _, names in os.walk(model_dir)
        for name in names
        if name.startswith(".tmp-")
    ]


def test_interrupted_mid_epoch_resumes_with_the_same_steps_and_learning_rates(
    tmp_path, demo_records, monkeypatch
):
    whole = train_and_evaluate(_config(tmp_path / "whole", demo_records), verbose=False)
    assert whole.steps == EXPECTED_STEPS and not whole.resumed

    config = _config(tmp_path / "killed", demo_records)
    model_dir = config.train.model_dir

    # Interrupt in phase 2's second epoch, after its step 3 (global step 6 + 6 + 3).
    def kill_in_phase_2(model, fit_kwargs):
        phase_2 = model.optimizer.iterations is not None and fit_kwargs.get("initial_epoch", 0) >= 1
        return [_KillAt(STEPS_PER_EPOCH + 3)] if phase_2 else []

    state = _train_until_interrupted(config, monkeypatch, kill_in_phase_2)
    assert (state.phase, state.epoch, state.step) == ("finetune", 2, 3)
    assert state.steps == {"frozen": 6, "finetune": 9}

    resumed = train_and_evaluate(config, verbose=False)
    assert resumed.resumed
    assert resumed.steps == whole.steps
    assert [row["epoch"] for row in resumed.history] == [1, 2, 3]
    # The schedule runs on the restored step counter: each epoch ends at the same rate.
    rates = [float(row["learning_rate"]) for row in _history(model_dir)]
    assert rates == pytest.approx(
        [float(row["learning_rate"]) for row in _history(whole.model_dir)]
    )
    assert resume.read(model_dir).complete
    assert not _leftovers(model_dir)
    assert os.listdir(os.path.join(model_dir, resume.RESUME_DIR)) == ["state.json"]


def test_a_finished_run_started_again_does_not_train_again(tmp_path, demo_records, capsys):
    config = _config(tmp_path, demo_records, epochs_finetune=1)
    first = train_and_evaluate(config, verbose=False)
    again = train_and_evaluate(config, verbose=True)
    assert again.resumed and again.steps == first.steps
    assert [int(row["epoch"]) for row in _history(config.train.model_dir)] == [1, 2]
    assert again.best_epoch == first.best_epoch
    assert "already finished" in capsys.readouterr().err


def _interrupted_run(tmp_path, demo_records, monkeypatch, **overrides):
    config = _config(tmp_path, demo_records, **overrides)
    original_fit = keras.Model.fit

    def fit_with_kill(self, *args, **kwargs):
        kwargs["callbacks"] = [*kwargs["callbacks"], _KillAt(2)]
        return original_fit(self, *args, **kwargs)

    monkeypatch.setattr(keras.Model, "fit", fit_with_kill)
    with pytest.raises(_Interrupt):
        train_and_evaluate(config, verbose=False)
    monkeypatch.setattr(keras.Model, "fit", original_fit)
    return config


def test_resuming_with_other_classes_fails_at_once(tmp_path, demo_records, monkeypatch):
    config = _interrupted_run(tmp_path, demo_records, monkeypatch)
    labels_path = os.path.join(config.train.model_dir, "labels.json")
    with open(labels_path) as f:
        labels = json.load(f)
    labels[0]["name"] = "Mount Rainier"
    with open(labels_path, "w") as f:
        json.dump(labels, f)
    with pytest.raises(UserError, match=r"labels\.json; missing here: Mount Rainier"):
        train_and_evaluate(config, verbose=False)


def test_resuming_with_other_settings_lists_them(tmp_path, demo_records, monkeypatch):
    config = _interrupted_run(tmp_path, demo_records, monkeypatch)
    changed = _config(tmp_path, demo_records, lr_finetune=0.5, evaluate_after=True)
    with pytest.raises(UserError, match=r"--lr_finetune: 0\.002 then, 0\.5 now") as error:
        train_and_evaluate(changed, verbose=False)
    assert "evaluate_after" not in str(error.value)
    assert "delete" in str(error.value) and config.train.model_dir in str(error.value)


def test_a_broken_state_file_names_itself(tmp_path, demo_records, monkeypatch):
    config = _interrupted_run(tmp_path, demo_records, monkeypatch)
    path = os.path.join(config.train.model_dir, resume.STATE_FILE)
    with open(path, "w") as f:
        f.write('{"phase": "fine')
    with pytest.raises(UserError, match=r"Cannot read the resume state .*state\.json"):
        train_and_evaluate(config, verbose=False)


def test_a_full_disk_fails_before_training(tmp_path, demo_records, monkeypatch):
    config = _config(tmp_path, demo_records)
    usage = resume.shutil.disk_usage(str(tmp_path))
    monkeypatch.setattr(resume.shutil, "disk_usage", lambda path: usage._replace(free=2**20))
    with pytest.raises(UserError, match=r"Not enough free disk for --model_dir=.*1 MB free"):
        train_and_evaluate(config, verbose=False)
    assert not os.path.exists(os.path.join(config.train.model_dir, run_files.HISTORY_CSV))


def test_a_stale_temp_file_from_a_kill_during_save_is_not_picked_up(
    tmp_path, demo_records, monkeypatch
):
    config = _interrupted_run(tmp_path, demo_records, monkeypatch)
    folder = os.path.join(config.train.model_dir, resume.RESUME_DIR)
    state = resume.read(config.train.model_dir)
    # What a kill inside save_weights leaves: a truncated temp file beside the real one.
    with open(os.path.join(folder, ".tmp-abc-ckpt-000099.weights.h5"), "wb") as f:
        f.write(b"\x89HDF\r\n")
    assert resume.read(config.train.model_dir).weights_file == state.weights_file
    assert train_and_evaluate(config, verbose=False).steps == EXPECTED_STEPS


def test_early_stopping_patience_survives_a_resume():
    stopper = callbacks.ResumableEarlyStopping(
        monitor="loss", patience=3, initial={"wait": 2, "best": 0.5, "best_epoch": 4}
    )
    stopper.on_train_begin()
    assert (stopper.wait, stopper.best, stopper.best_epoch) == (2, 0.5, 4)
    stopper.wait = 3
    stopper.on_train_begin()  # a second fit of the same phase keeps counting
    assert stopper.state() == {"wait": 3, "best": 0.5, "best_epoch": 4}


def test_sigkill_mid_epoch_then_the_same_command_resumes(
    tmp_path, demo_records, env_for_subprocess
):
    settings = _settings(demo_records, epochs_finetune=3)
    flags = [f"--{key}={value}" for key, value in settings.items()]
    model_dir = str(tmp_path / "runs" / "demo")
    command = [
        sys.executable,
        "-m",
        "lmrec.train",
        f"--flagfile={REPO / 'configs' / 'baseline_demo.cfg'}",
        f"--output_dir={tmp_path}/tf_records",
        f"--model_dir={model_dir}",
        *flags,
    ]
    process = subprocess.Popen(
        command, cwd=REPO, env=env_for_subprocess, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    state_path = os.path.join(model_dir, resume.STATE_FILE)
    deadline = time.monotonic() + 300
    killed_at = None
    while time.monotonic() < deadline and process.poll() is None:
        try:
            with open(state_path) as f:
                saved = json.load(f)
        except (OSError, ValueError):
            saved = None
        # Mid-epoch of phase 2, with steps of the run still to go.
        if saved and saved["phase"] == "finetune" and saved["epoch"] >= 2 and saved["step"] > 0:
            process.send_signal(signal.SIGKILL)
            killed_at = saved
            break
        time.sleep(0.01)
    process.wait(timeout=60)
    assert killed_at is not None, (
        f"the run ended (code {process.returncode}) before a mid-epoch checkpoint was seen: "
        f"{process.stderr.read().decode()[-2000:]}"
    )
    assert process.returncode == -signal.SIGKILL

    finished = subprocess.run(command, cwd=REPO, env=env_for_subprocess, capture_output=True)
    assert finished.returncode == 0, finished.stderr.decode()[-3000:]
    assert "Resuming the run" in finished.stderr.decode()
    state = resume.read(model_dir)
    assert state.complete
    assert state.steps == {"frozen": 6, "finetune": 3 * STEPS_PER_EPOCH}
    assert [int(row["epoch"]) for row in _history(model_dir)] == [1, 2, 3, 4]
    assert not _leftovers(model_dir)


def test_a_finished_run_with_new_settings_trains_anew(tmp_path, demo_records, capsys):
    train_and_evaluate(_config(tmp_path, demo_records, epochs_finetune=1), verbose=False)
    changed = train_and_evaluate(_config(tmp_path, demo_records, epochs_finetune=2), verbose=True)
    assert not changed.resumed
    assert changed.steps == {"frozen": 6, "finetune": 12}
    assert "finished run with other classes or settings: training anew" in capsys.readouterr().err
    assert [int(row["epoch"]) for row in _history(changed.model_dir)] == [1, 2, 3]


def test_interrupted_phase_on_cached_features_resumes_with_the_same_steps(
    tmp_path, demo_records, monkeypatch
):
    """Phase 1 on cached features saves the whole classifier and the shared optimizer."""
    overrides = dict(epochs_frozen=3, epochs_finetune=1, augment="none", cache_frozen_features="on")
    whole = train_and_evaluate(_config(tmp_path / "whole", demo_records, **overrides), False)
    assert whole.feature_cache["used"]
    assert whole.steps == {"frozen": 3 * STEPS_PER_EPOCH, "finetune": STEPS_PER_EPOCH}

    config = _config(tmp_path / "killed", demo_records, **overrides)

    def kill_in_phase_1(model, fit_kwargs):
        # The first fit is phase 1's, on the head after its cached pooling layer.
        assert model.name == "head_on_cached_features"
        return [_KillAt(STEPS_PER_EPOCH + 2)]

    state = _train_until_interrupted(config, monkeypatch, kill_in_phase_1)
    assert (state.phase, state.epoch, state.step) == ("frozen", 1, 2)

    resumed = train_and_evaluate(config, verbose=False)
    assert resumed.resumed and resumed.feature_cache["used"]
    assert resumed.steps == whole.steps
    rates = [float(row["learning_rate"]) for row in _history(config.train.model_dir)]
    assert rates == pytest.approx(
        [float(row["learning_rate"]) for row in _history(whole.model_dir)]
    )


def test_epoch_ends_within_checkpoint_min_seconds_wait_for_the_phase_end(
    tmp_path, demo_records, monkeypatch
):
    saves = []
    original_save = resume.save

    def counting_save(model_dir, model, state, *args):
        saves.append((state.phase, state.epoch, state.step, state.phase_done))
        original_save(model_dir, model, state, *args)
        path = resume.weights_path(model_dir, state)
        assert _has_optimizer(path) is not state.phase_done  # a finished phase's is not restored
        if state.phase_done:  # copied from the last weights, just written
            last = os.path.join(model_dir, run_files.LAST_WEIGHTS)
            assert filecmp.cmp(path, last, shallow=False)

    monkeypatch.setattr(resume, "save", counting_save)
    settings = dict(epochs_frozen=2, epochs_finetune=3, checkpoint_every_steps=0)
    config = _config(tmp_path / "few", demo_records, checkpoint_min_seconds=1e6, **settings)
    result = train_and_evaluate(config, verbose=False)
    assert saves == [("frozen", 2, 0, True), ("finetune", 5, 0, True)]
    assert result.steps == {"frozen": 2 * STEPS_PER_EPOCH, "finetune": 3 * STEPS_PER_EPOCH}
    for name in (run_files.BEST_WEIGHTS, run_files.LAST_WEIGHTS):
        path = os.path.join(config.train.model_dir, name)
        assert not _has_optimizer(path), f"{name} holds optimizer slots"

    saves.clear()
    config = _config(tmp_path / "all", demo_records, checkpoint_min_seconds=0, **settings)
    train_and_evaluate(config, verbose=False)
    assert [save[1] for save in saves] == [1, 2, 3, 4, 5]


@pytest.mark.parametrize("select", ["best", "last"])
def test_a_save_within_an_epoch_writes_the_unsaved_epoch_end_from_its_held_copy(
    tmp_path, demo_records, monkeypatch, select
):
    """An epoch end that did not save holds its weights: a save in the next epoch must
    write those as best/last.weights.h5, not the weights of the step it saves at."""
    config = _config(
        tmp_path, demo_records, checkpoint_min_seconds=1e6, select_epoch=select, lr_finetune=1e-2
    )
    model_dir = config.train.model_dir
    epoch_end: dict[int, list] = {}
    kill = _KillAt(STEPS_PER_EPOCH + 3)  # phase 2's second epoch (epoch 3), step 3
    state = _train_until_interrupted(
        config, monkeypatch, lambda model, fit_kwargs: [_EpochEndWeights(epoch_end), kill]
    )
    # Epoch 2's end did not save (the last save was phase 1's end, just before); the
    # step saves of epoch 3 (--checkpoint_every_steps=1) wrote its files.
    assert (state.phase, state.epoch, state.step) == ("finetune", 2, 3)
    assert _has_optimizer(resume.weights_path(model_dir, state))
    best_epoch = state.best["epoch"]
    assert best_epoch in (1, 2) and (select == "best" or best_epoch == 2)
    files = {
        name: run_files.load(model_dir, name).model.get_weights()
        for name in (run_files.LAST_WEIGHTS, run_files.BEST_WEIGHTS)
    }
    assert any(not np.array_equal(a, b) for a, b in zip(kill.weights, epoch_end[2], strict=True))
    for saved, expected in zip(files[run_files.LAST_WEIGHTS], epoch_end[2], strict=True):
        np.testing.assert_array_equal(saved, expected)
    for saved, expected in zip(files[run_files.BEST_WEIGHTS], epoch_end[best_epoch], strict=True):
        np.testing.assert_array_equal(saved, expected)
