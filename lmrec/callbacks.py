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

    `classifier` is the model saved, whichever model fit trains (phase 1 on cached
    features fits only the part of the head after its cached layers); None saves the
    model being fit. With `deferred` set (that phase: its epochs take milliseconds,
    while saving a whole backbone takes about half a second), an epoch end only
    keeps the trained model's weights in memory when it is the selected one, and
    flush() writes both files: the resume checkpoint calls it before each save
    and the phase's end (on_train_end) does.
    """

    def __init__(self, model_dir: str, monitor: str, select: str = "best", classifier=None):
        super().__init__()
        self.model_dir = model_dir
        self.monitor = monitor
        self.select_last = select == "last"
        self.tie_breaker = monitor.replace("accuracy", "loss")
        self.classifier = classifier
        self.deferred = False
        self.best: float | None = None
        self.best_loss = float("inf")
        self.best_epoch: int | None = None
        self._last_pending = False
        self._best_pending: list | None = None  # the trained model's weights at the best epoch

    def on_epoch_end(self, epoch, logs=None):
        if not self.deferred:
            self._save(run_files.LAST_WEIGHTS)
        self._last_pending = self.deferred
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
            if self.deferred:
                self._best_pending = self.model.get_weights()
            else:
                self._save(run_files.BEST_WEIGHTS)

    def on_train_end(self, logs=None):
        self.flush()

    def flush(self) -> None:
        """Writes what deferred epoch ends held back (nothing otherwise)."""
        if self._last_pending:
            self._save(run_files.LAST_WEIGHTS)
            self._last_pending = False
        if self._best_pending is not None:
            current = self.model.get_weights()
            self.model.set_weights(self._best_pending)
            try:
                self._save(run_files.BEST_WEIGHTS)
            finally:
                self.model.set_weights(current)
            self._best_pending = None

    def _save(self, relative: str) -> None:
        path = os.path.join(self.model_dir, relative)
        with atomic.replacing(path) as tmp:
            (self.classifier or self.model).save_weights(tmp)


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
    the classifier gets them normalized (the whole classifier, also while fit
    trains only part of its head on cached features). They go to their own run,
    logs/samples: TensorBoard expects one writer per folder, and Keras' writers
    own logs/train and logs/validation.

    The classifier runs as one tf.function, traced at its first use: an eager call
    of a deep backbone takes about a second. While phase 1 trains on cached
    features, `predict` is set to the cache's own (already traced) extraction and
    head, the same function of the images, so that phase traces no second copy.
    """

    def __init__(
        self, log_dir: str, images, labels, class_names: list[str], preprocess, classifier
    ):
        super().__init__()
        self.classifier = classifier
        self.predict: Any = None  # normalized images -> probabilities; None: the classifier's
        self._classifier_predict = None
        self.writer = tf.summary.create_file_writer(log_dir)
        self.images = images
        self.labels = labels.numpy()
        self.class_names = class_names
        self.preprocess = preprocess

    def on_epoch_end(self, epoch, logs=None):
        predict = self.predict
        if predict is None:
            if self._classifier_predict is None:
                classifier = self.classifier
                self._classifier_predict = tf.function(lambda x: classifier(x, training=False))
            predict = self._classifier_predict
        probabilities = keras.ops.convert_to_numpy(predict(self.preprocess(self.images)))
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
      classifier: the model whose variables are saved, when fit trains another (the
        part of the head on cached features, which shares its variables and optimizer).
      throttle_epochs: epoch ends that do not end the phase save only when
        every_seconds have passed (phase 1 on cached features, whose epochs are far
        shorter than a save).
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
        classifier=None,
        throttle_epochs: bool = False,
    ):
        super().__init__()
        self.model_dir = model_dir
        self.classifier = classifier
        self.throttle_epochs = throttle_epochs
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
        recent = time.monotonic() - self._last_save < self.every_seconds
        if done or not (self.throttle_epochs and recent):
            self._save(epoch + 1, 0, phase_done=done)

    def _save(self, epoch: int, step: int, phase_done: bool) -> None:
        from lmrec import resume

        self.state.epoch, self.state.step, self.state.phase_done = epoch, step, phase_done
        self.state.steps[self.state.phase] = int(self.model.optimizer.iterations.numpy())
        self.collect(self.state)
        resume.save(self.model_dir, self.classifier or self.model, self.state)
        self._last_save = time.monotonic()
