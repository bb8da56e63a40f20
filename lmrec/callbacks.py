"""The Keras callbacks of a training run: history, checkpoints, early stopping, samples.

Every file they write is replaced atomically, so a run killed at any moment leaves
either the previous complete file or the new one (lmrec.atomic).
"""

from __future__ import annotations

import csv
import io
import os
import time
from typing import Any

import keras
import tensorflow as tf

from lmrec import atomic, plots
from lmrec import model_dir as run_files
from lmrec.errors import UserError


class HistoryWriter(keras.callbacks.Callback):
    """Rewrites history.csv atomically after every epoch, tagging each row with its phase."""

    def __init__(self, path: str, rows: list[dict[str, Any]]):
        super().__init__()
        self.path = path
        self.rows = rows
        self.phase = ""
        self._epoch_started = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_started = time.time()

    def on_epoch_end(self, epoch, logs=None):
        row = {"epoch": epoch + 1, "phase": self.phase}
        row.update({k: float(v) for k, v in (logs or {}).items()})
        row["learning_rate"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        row["seconds"] = round(time.time() - self._epoch_started, 2)
        self.rows.append(row)
        columns: list[str] = []
        for r in self.rows:
            columns.extend(k for k in r if k not in columns)
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns)
        writer.writeheader()
        writer.writerows(self.rows)
        atomic.write_text(self.path, buffer.getvalue())


SELECT_EPOCH = ("best", "last")


class AtomicCheckpoint(keras.callbacks.Callback):
    """Saves last.weights.h5 every epoch and best.weights.h5 on improvement, never half-written.

    best.weights.h5 is the selected model that evaluate and export load. Improvement
    is a higher accuracy, or the same accuracy at a lower loss: on small validation
    sets accuracy ties often, and the later, lower-loss epoch is the better model.
    With select="last" every epoch counts as an improvement.
    """

    def __init__(self, model_dir: str, monitor: str, select: str = "best"):
        super().__init__()
        self.model_dir = model_dir
        self.monitor = monitor
        self.select_last = select == "last"
        self.tie_breaker = monitor.replace("accuracy", "loss")
        self.best: float | None = None
        self.best_loss = float("inf")
        self.best_epoch: int | None = None

    def on_epoch_end(self, epoch, logs=None):
        self._save(run_files.LAST_WEIGHTS)
        logs = logs or {}
        value = logs.get(self.monitor)
        if value is None:
            return
        loss = float(logs.get(self.tie_breaker, float("inf")))
        improved = (
            self.best is None or value > self.best or (value == self.best and loss < self.best_loss)
        )
        if improved or self.select_last:
            self.best, self.best_loss, self.best_epoch = float(value), loss, epoch + 1
            self._save(run_files.BEST_WEIGHTS)

    def _save(self, relative: str) -> None:
        path = os.path.join(self.model_dir, relative)
        with atomic.replacing(path) as tmp:
            self.model.save_weights(tmp)


# --early_stopping_metric: what fit logs (each also with "val_"), and which way is better.
EARLY_STOPPING_MODES = {"loss": "min", "accuracy": "max", "top5": "max"}


def early_stopping_mode(metric: str) -> str:
    """The better direction, max or min, of --early_stopping_metric; checked before training.

    Raises:
      UserError: not a metric that training logs.
    """
    mode = EARLY_STOPPING_MODES.get(metric.removeprefix("val_"))
    if mode is None:
        valid = [*EARLY_STOPPING_MODES, *(f"val_{name}" for name in EARLY_STOPPING_MODES)]
        raise UserError(f"Unknown --early_stopping_metric={metric!r}; valid: {', '.join(valid)}")
    return mode


class SamplePredictions(keras.callbacks.Callback):
    """After each epoch, draws a few validation photos with their predictions into TensorBoard.

    The photos are read once through the evaluation pipeline (same decode and
    resize) but without the backbone's normalization, so they display as photos;
    the model gets them normalized. They go to their own run, logs/samples:
    TensorBoard expects one writer per folder, and Keras' writers own logs/train
    and logs/validation.
    """

    def __init__(self, log_dir: str, images, labels, class_names: list[str], preprocess):
        super().__init__()
        self.writer = tf.summary.create_file_writer(log_dir)
        self.images = images
        self.labels = labels.numpy()
        self.class_names = class_names
        self.preprocess = preprocess

    def on_epoch_end(self, epoch, logs=None):
        probabilities = keras.ops.convert_to_numpy(
            self.model(self.preprocess(self.images), training=False)
        )
        predicted = probabilities.argmax(axis=-1)
        png = plots.prediction_grid_png(
            tf.cast(self.images, tf.uint8).numpy(),
            [self.class_names[i] for i in self.labels],
            [self.class_names[i] for i in predicted],
            probabilities.max(axis=-1).tolist(),
        )
        with self.writer.as_default():
            tf.summary.image("sample_predictions", tf.image.decode_png(png, 3)[None], step=epoch)
        self.writer.flush()


class ResumableEarlyStopping(keras.callbacks.EarlyStopping):
    """EarlyStopping whose patience count spans a phase's fit calls and survives a resume.

    Keras' resets its count at every fit(); a resumed phase runs as one or two fits
    (the rest of a half-done epoch, then the remaining epochs) and must stop where
    an uninterrupted run would.
    """

    def __init__(self, *args, initial: dict[str, Any] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.initial = initial or {}
        self._started = False

    def on_train_begin(self, logs=None):
        if self._started:
            return
        super().on_train_begin(logs)
        self._started = True
        if self.initial:
            self.wait = int(self.initial["wait"])
            self.best = self.initial["best"]
            self.best_epoch = int(self.initial["best_epoch"])

    def state(self) -> dict[str, Any]:
        best = None if self.best is None else float(self.best)
        return {"wait": int(self.wait), "best": best, "best_epoch": int(self.best_epoch)}


class ResumeCheckpoint(keras.callbacks.Callback):
    """Saves the resume state (lmrec.resume) at every epoch end and within epochs.

    Within an epoch it saves every `every_steps` steps and at least every
    `every_seconds` seconds (0 turns either off), so a long GLDv2 epoch killed near
    its end does not start over. Goes last in the callback list, so the history row,
    best checkpoint and early-stopping decision of the epoch are in the state it saves.

    Args:
      model_dir: the run folder.
      state: the lmrec.resume.State to update and save; the train loop sets its
        phase and fills its other fields through `collect`.
      collect: called before each save to copy the other callbacks' state in.
      phase_end: the epoch at which the current phase ends.
      step_offset: steps already done in the first epoch of this fit (resuming mid-epoch).
    """

    def __init__(
        self,
        model_dir: str,
        state,
        collect,
        phase_end: int,
        every_steps: int = 0,
        every_seconds: float = 0.0,
        step_offset: int = 0,
    ):
        super().__init__()
        self.model_dir = model_dir
        self.state = state
        self.collect = collect
        self.phase_end = phase_end
        self.every_steps = every_steps
        self.every_seconds = every_seconds
        self.step_offset = step_offset
        self._epoch = 0
        self._last_save = time.monotonic()

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        step = self.step_offset + batch + 1
        due_steps = self.every_steps and step % self.every_steps == 0
        due_time = self.every_seconds and time.monotonic() - self._last_save >= self.every_seconds
        if due_steps or due_time:
            self._save(self._epoch, step, phase_done=False)

    def on_epoch_end(self, epoch, logs=None):
        self.step_offset = 0
        done = epoch + 1 >= self.phase_end or bool(self.model.stop_training)
        self._save(epoch + 1, 0, phase_done=done)

    def _save(self, epoch: int, step: int, phase_done: bool) -> None:
        from lmrec import resume

        self.state.epoch, self.state.step, self.state.phase_done = epoch, step, phase_done
        self.state.steps[self.state.phase] = int(self.model.optimizer.iterations.numpy())
        self.collect(self.state)
        resume.save(self.model_dir, self.model, self.state)
        self._last_save = time.monotonic()
