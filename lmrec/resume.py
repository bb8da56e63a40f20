"""Picking a killed training run up where its last checkpoint left it.

A run checkpoints its whole training state into <model_dir>/resume/: the model's
and the optimizer's variables (so Adam's moments and the step counter that drives
the learning-rate schedule carry on) in a weights file, and beside it state.json:
the phase, epochs and steps done, history rows, the best epoch so far and early
stopping's count. Both are replaced atomically, and state.json names the weights
file it belongs to, so a kill at any instant leaves a matching pair.

Starting the same command again finds state.json and continues from that step. The
data stream does not replay the killed run's sample order (tf.data iterators with
shuffle buffers are costly to checkpoint); it restarts with a seed derived from the
resumed position, so the resumed run sees freshly shuffled data and trains exactly
the steps that were left.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import shutil
from typing import Any

from lmrec import atomic, console, run_files
from lmrec.config import ExperimentConfig, load_experiment
from lmrec.data import records
from lmrec.errors import UserError

RESUME_DIR = "resume"
STATE_FILE = os.path.join(RESUME_DIR, "state.json")
_WEIGHTS_PATTERN = "ckpt-{:06d}.weights.h5"

# Settings a resumed run may change: they decide what happens after training, or how
# often it checkpoints, not what is trained.
_MAY_DIFFER = {
    "train.evaluate_after",
    "train.export_after",
    "train.prepare_if_missing",
    "train.checkpoint_every_steps",
    "train.checkpoint_every_seconds",
    "train.checkpoint_min_seconds",
    "train.tensorboard_images",
    "train.tensorboard_images_every",
    # Only the locations in labels.json depend on these, never the classes or the pixels.
    "prepare.min_located_photos",
    "prepare.landmark_locations",
}
_MAY_DIFFER_SECTIONS = ("evaluate.", "export.")


@dataclasses.dataclass
class State:
    """Where a run stands, as saved in state.json.

    epoch counts epochs completed over both phases (as history.csv does); step
    counts the steps done in the epoch after it (0 at an epoch boundary). phase is
    the phase that was training; phase_done says it had finished (all its epochs,
    or early stopping), so the weights file's optimizer is not to be restored.
    """

    phase: str = ""
    epoch: int = 0
    step: int = 0
    phase_done: bool = False
    complete: bool = False
    weights_file: str = ""
    # Epoch at which each finished phase ended, e.g. {"frozen": 3}.
    phase_end_epochs: dict[str, int] = dataclasses.field(default_factory=dict)
    # Optimizer steps each phase has taken.
    steps: dict[str, int] = dataclasses.field(default_factory=dict)
    history: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    best: dict[str, Any] = dataclasses.field(default_factory=dict)
    early_stopping: dict[str, Any] = dataclasses.field(default_factory=dict)
    stopped_early: dict[str, int] = dataclasses.field(default_factory=dict)
    parameters: dict[str, dict[str, int]] = dataclasses.field(default_factory=dict)
    # The SwapEMAWeights callback had the averaged weights in the model when saved.
    ema_in_model: bool = False

    @property
    def global_step(self) -> int:
        return sum(self.steps.values())


def read(model_dir: str) -> State | None:
    """The saved state of an unfinished or finished run in model_dir, or None.

    Raises:
      UserError: state.json exists but cannot be read, or names a missing file.
    """
    path = os.path.join(model_dir, STATE_FILE)
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            state = State(**json.load(f))
    except (OSError, ValueError, TypeError) as error:
        raise UserError(
            f"Cannot read the resume state {path} ({error}); delete "
            f"{os.path.join(model_dir, RESUME_DIR)} to train from the start."
        ) from None
    if not state.complete and not os.path.isfile(weights_path(model_dir, state)):
        raise UserError(
            f"{path} names {state.weights_file}, which is missing; delete "
            f"{os.path.join(model_dir, RESUME_DIR)} to train from the start."
        )
    return state


def weights_path(model_dir: str, state: State) -> str:
    return os.path.join(model_dir, RESUME_DIR, state.weights_file)


def save(model_dir: str, model, state: State, same_as: str | None = None) -> None:
    """Writes the model's and (within a phase) optimizer's variables, then state.json naming them.

    Each save goes to a new numbered weights file; the previous one is deleted only
    after state.json points at the new one. At a phase's end (state.phase_done) the
    optimizer is left out, since the next phase starts a fresh one (restore() skips
    it), and `same_as`, a file just written with the model's current variables, is
    linked (or copied) instead of writing them again.
    """
    folder = os.path.join(model_dir, RESUME_DIR)
    os.makedirs(folder, exist_ok=True)
    previous = state.weights_file
    number = int(previous[5:11]) + 1 if previous else 1
    state.weights_file = _WEIGHTS_PATTERN.format(number)
    path = os.path.join(folder, state.weights_file)
    if state.phase_done and same_as:
        atomic.link_or_copy(same_as, path)
    else:
        with atomic.replacing(path) as tmp:
            if state.phase_done:
                run_files.save_variables(model, tmp)
            else:
                model.save_weights(tmp)
    write_state(model_dir, state)
    for stale in glob.glob(os.path.join(folder, "ckpt-*.weights.h5")):
        if os.path.basename(stale) != state.weights_file:
            os.remove(stale)


def write_state(model_dir: str, state: State) -> None:
    atomic.write_json(os.path.join(model_dir, STATE_FILE), dataclasses.asdict(state))


def mark_complete(model_dir: str, state: State) -> None:
    """Training finished: keeps state.json (so a re-run goes straight to evaluation and
    export) and deletes the weights file, which best/last.weights.h5 supersede."""
    state.complete = True
    write_state(model_dir, state)
    for stale in glob.glob(os.path.join(model_dir, RESUME_DIR, "ckpt-*.weights.h5")):
        os.remove(stale)


def restore(model, model_dir: str, state: State, with_optimizer: bool) -> None:
    """Loads the checkpoint into a model compiled for the phase being resumed.

    with_optimizer=False (the checkpointed phase had finished, and the next phase
    starts with a fresh optimizer) loads the model's variables only.
    """
    path = weights_path(model_dir, state)
    if with_optimizer:
        # Keras creates optimizer variables lazily; they must exist to be loaded into.
        model.optimizer.build(model.trainable_variables)
        model.load_weights(path)
    else:
        model.load_weights(path, objects_to_skip=[model.optimizer])


def resumed_seed(seed: int, state: State) -> int:
    """The data seed after a resume: differs per resume position, same for the same one."""
    return (seed + 1_000_003 * state.global_step) % (2**31 - 1)


def differences(model_dir: str, config: ExperimentConfig, labels: list[dict]) -> list[str]:
    """What the run in model_dir was trained with that differs now: classes, then settings."""
    found = []
    ours, theirs = records.label_names(labels), records.label_names(records.read_labels(model_dir))
    if ours != theirs:
        missing = sorted(set(theirs) - set(ours))[:5]
        extra = sorted(set(ours) - set(theirs))[:5]
        found.append(
            f"classes: the data in {config.data.data_dir} has {len(ours)}, the run was "
            f"trained on the {len(theirs)} in {os.path.join(model_dir, records.LABELS_FILE)}"
            + (f"; missing here: {', '.join(missing)}" if missing else "")
            + (f"; new here: {', '.join(extra)}" if extra else "")
            + (" (same names, another order)" if not missing and not extra else "")
        )
    saved = _flatten(json.loads(load_experiment_json(model_dir)))
    current = _flatten(json.loads(config.to_json()))
    found += [
        f"--{key.split('.', 1)[1]}: {saved.get(key)!r} then, {current.get(key)!r} now"
        for key in sorted(set(saved) | set(current))
        if saved.get(key) != current.get(key)
        and key not in _MAY_DIFFER
        and not key.startswith(_MAY_DIFFER_SECTIONS)
    ]
    return found


def check_matches(model_dir: str, config: ExperimentConfig, labels: list[dict]) -> None:
    """An unfinished run must go on training the same model on the same classes.

    Raises:
      UserError: the data's classes differ from model_dir's labels.json, or a
        training setting differs from model_dir's config.json; the message lists
        what differs and how to start over.
    """
    found = differences(model_dir, config, labels)
    if found:
        raise UserError(
            f"{model_dir} holds an unfinished run trained with other classes or settings; "
            "resuming it would mix two experiments:\n  "
            + "\n  ".join(found)
            + f"\nUse a new --model_dir, or delete {os.path.join(model_dir, RESUME_DIR)} to "
            "train this model_dir from the start."
        )


def discard(model_dir: str) -> None:
    """Forgets a finished run's state, so the model_dir trains anew."""
    shutil.rmtree(os.path.join(model_dir, RESUME_DIR), ignore_errors=True)


def load_experiment_json(model_dir: str) -> str:
    path = os.path.join(model_dir, run_files.CONFIG_FILE)
    try:
        # Round-trips through ExperimentConfig so fields added since are compared at defaults.
        return load_experiment(path).to_json()
    except (OSError, ValueError, TypeError) as error:
        raise UserError(f"Cannot read {path} of the run being resumed: {error}") from None


def _flatten(config: dict) -> dict[str, Any]:
    return {
        f"{section}.{key}": value
        for section, values in config.items()
        if isinstance(values, dict)
        for key, value in values.items()
    }


def free_bytes_needed(model) -> int:
    """Disk a run needs at least: best, last and resume weights with optimizer slots,
    twice over while a new file replaces an old one, plus 64 MB of logs and reports."""
    weights = sum(int(w.numpy().nbytes) for w in model.weights)
    return 4 * 3 * weights + 64 * 2**20


def check_free_space(model_dir: str, model) -> None:
    """Fails at once on a disk too full for the run's checkpoints, not hours later.

    Raises:
      UserError: naming model_dir, what is free and what is needed.
    """
    free = shutil.disk_usage(model_dir).free
    needed = free_bytes_needed(model)
    if free < needed:
        raise UserError(
            f"Not enough free disk for --model_dir={model_dir}: {free / 2**20:.0f} MB free, "
            f"checkpoints of this model need about {needed / 2**20:.0f} MB. Free some space "
            "or choose a model_dir on another disk."
        )


def read_for_run(model_dir: str, config: ExperimentConfig, labels: list[dict]) -> State | None:
    """The state a run in model_dir continues from, or None to train from the start.

    A finished run with other classes or settings is discarded, not mixed with the
    new one: the new settings train anew over it.

    Raises:
      UserError: an unfinished run with other classes or settings (check_matches),
        or a state that cannot be read (read).
    """
    state = read(model_dir)
    if state is not None and state.complete and differences(model_dir, config, labels):
        console.say(
            f"{model_dir} holds a finished run with other classes or settings: training anew."
        )
        discard(model_dir)
        return None
    if state is not None and not state.complete:
        check_matches(model_dir, config, labels)
    return state


def describe(model_dir: str, state: State) -> str:
    """One line on where a resumed run picks up, or that it had finished training."""
    where = os.path.join(model_dir, STATE_FILE)
    if state.complete:
        return (
            f"Training in {model_dir} already finished ({where}); evaluating and exporting "
            f"only. Delete {os.path.join(model_dir, RESUME_DIR)} to train it again."
        )
    position = f"epoch {state.epoch + 1}" + (f", step {state.step + 1}" if state.step else "")
    if state.phase_done:
        position = f"the end of phase {state.phase} (epoch {state.epoch})"
    return (
        f"Resuming the run in {model_dir} from its checkpoint at {position} "
        f"({state.global_step} steps done); the data is reshuffled from there."
    )
