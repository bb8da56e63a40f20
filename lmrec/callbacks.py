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

from lmrec import atomic, plots, resume, run_files
from lmrec.registry import Registry


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


# --select_epoch: which epoch's weights are evaluated and exported.
SELECT_EPOCH: Registry[str] = Registry(
    "epoch selection",
    {
        "best": "the epoch with the best validation accuracy",
        "last": "the last epoch trained",
    },
    flag="select_epoch",
)


class EpochTensorBoard(keras.callbacks.TensorBoard):
    """Keras' TensorBoard logging per epoch, without its per-step summary calls.

    Keras 3.15 calls tf.summary.scalar for every metric after every training step,
    even with update_freq="epoch", where no writer is active and nothing gets
    written: Python overhead on every step, which matters most for short steps.
    The epoch scalars, the learning rate and the graph are unchanged; per-step
    scalars (another update_freq) are refused here, not silently dropped.
    """

    def __init__(self, log_dir: str, **kwargs):
        if kwargs.get("update_freq", "epoch") != "epoch":
            raise ValueError("EpochTensorBoard logs per epoch: use keras.callbacks.TensorBoard")
        super().__init__(log_dir=log_dir, **kwargs)

    def on_train_batch_end(self, batch, logs=None):
        super().on_train_batch_end(batch, logs=None)  # no logs: no batch_* scalar calls


class AtomicCheckpoint(keras.callbacks.Callback):
    """Keeps best.weights.h5 and last.weights.h5, never half-written, never stale.

    best.weights.h5 is the selected model that evaluate and export load. Improvement
    is a higher accuracy, or the same accuracy at a lower loss: on small validation
    sets accuracy ties often, and the later, lower-loss epoch is the better model.
    With select="last" every epoch counts as an improvement.

    An epoch end only notes which files are due; flush() writes them. The resume
    checkpoint flushes before each of its saves, so the files on disk are always
    those of the epoch its state names, and the end of each fit (on_train_end)
    flushes. Writing a whole backbone after every short epoch cost more than the
    epoch's training (benchmarks/training_throughput.py), and the resume checkpoint
    already covers a crash. When training goes on past an epoch whose files are due,
    hold() keeps a copy of its weights in memory (the resume checkpoint calls it when
    it may save, and so flush, within the next epoch). The files hold the model's
    variables only, not the optimizer's slots (three times the size with Adam):
    evaluation and export do not need them, and the resume checkpoint keeps them.

    `classifier` is the model saved, whichever model fit trains (phase 1 on cached
    features fits only the part of the head after its cached layers); None saves
    the model being fit.
    """

    def __init__(self, model_dir: str, monitor: str, select: str = "best", classifier=None):
        super().__init__()
        self.model_dir = model_dir
        self.monitor = monitor
        self.select_last = select == "last"
        self.tie_breaker = monitor.replace("accuracy", "loss")
        self.classifier = classifier
        self.best: float | None = None
        self.best_loss = float("inf")
        self.best_epoch: int | None = None
        # Due files, each with the weights to write: None for "the model's current
        # weights" (training has not moved on since the epoch), else a held copy.
        self._due: dict[str, list | None] = {}
        # Set by flush(): a file it wrote from the model's current weights, which the
        # resume checkpoint of a finished phase copies rather than writes again.
        self.current_file: str | None = None

    def on_epoch_end(self, epoch, logs=None):
        self._due[run_files.LAST_WEIGHTS] = None
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
            self._due[run_files.BEST_WEIGHTS] = None

    def on_train_end(self, logs=None):
        self.flush()

    @property
    def unheld(self) -> bool:
        """Some due file's weights are only in the model, which the next step changes."""
        return any(weights is None for weights in self._due.values())

    def hold(self) -> None:
        """Copies the current weights for the due files that have no copy yet (at an epoch
        end, before training goes on)."""
        if self.unheld:
            weights = self.model.get_weights()
            self._due = {name: held or weights for name, held in self._due.items()}

    def flush(self) -> None:
        """Writes the due files: each either from the model or from its held copy."""
        written: dict[int, str] = {}  # id of the weights -> the file already holding them
        self.current_file = None
        for relative, held in sorted(
            self._due.items(), key=lambda item: item[0] != run_files.LAST_WEIGHTS
        ):
            key = id(held)
            if key in written:
                self._copy(written[key], relative)
            elif held is None:
                self._save(relative)
                self.current_file = os.path.join(self.model_dir, relative)
            else:
                current = self.model.get_weights()
                self.model.set_weights(held)
                try:
                    self._save(relative)
                finally:
                    self.model.set_weights(current)
            written[key] = relative
        self._due = {}

    def _save(self, relative: str) -> None:
        model = self.classifier or self.model
        with atomic.replacing(os.path.join(self.model_dir, relative)) as tmp:
            run_files.save_variables(model, tmp)

    def _copy(self, source: str, target: str) -> None:
        atomic.link_or_copy(
            os.path.join(self.model_dir, source), os.path.join(self.model_dir, target)
        )


# --early_stopping_metric: what fit logs, and which way is better.
EARLY_STOPPING_METRICS = Registry(
    "early stopping metric",
    {
        "loss": "min",
        "accuracy": "max",
        "top5": "max",
        "val_loss": "min",
        "val_accuracy": "max",
        "val_top5": "max",
    },
    flag="early_stopping_metric",
)


def early_stopping_mode(metric: str) -> str:
    """The better direction, max or min, of --early_stopping_metric; checked before training.

    Raises:
      UserError: not a metric that training logs.
    """
    return EARLY_STOPPING_METRICS.get(metric)


class SamplePredictions(keras.callbacks.Callback):
    """Draws a few validation photos with their predictions into TensorBoard.

    Every `every_epochs` epochs and at the end of each fit (a phase's last epoch):
    drawing takes about half a second (matplotlib), too much after every short epoch.

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
        self,
        log_dir: str,
        images,
        labels,
        class_names: list[str],
        preprocess,
        classifier,
        every_epochs: int = 1,
    ):
        super().__init__()
        self.every_epochs = every_epochs
        self._undrawn_epoch: int | None = None
        self.classifier = classifier
        self.predict: Any = None  # normalized images -> probabilities; None: the classifier's
        self._classifier_predict = None
        self.writer = tf.summary.create_file_writer(log_dir)
        self.images = images
        self.labels = labels.numpy()
        self.class_names = class_names
        self.preprocess = preprocess

    def on_epoch_end(self, epoch, logs=None):
        if (epoch + 1) % self.every_epochs == 0:
            self.draw(epoch)
        else:
            self._undrawn_epoch = epoch

    def on_train_end(self, logs=None):
        if self._undrawn_epoch is not None:
            self.draw(self._undrawn_epoch)

    def draw(self, epoch: int) -> None:
        """Predicts the photos with the current weights and logs the grid at step `epoch`."""
        self._undrawn_epoch = None
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
    """Saves the resume state (lmrec.resume) at epoch ends and within epochs.

    An epoch end saves unless the last save is less than `min_seconds` old (the
    phase's last epoch always saves): short epochs, like phase 1's on cached
    features, would otherwise spend more time saving than training, and a kill
    then loses at most that much. Within an epoch it saves every `every_steps`
    steps and at least every `every_seconds` seconds (0 turns either off), so a
    long GLDv2 epoch killed near its end does not start over. Goes last in the
    callback list, so the history row, best checkpoint and early-stopping decision
    of the epoch are in the state it saves.

    Args:
      model_dir: the run folder.
      state: the lmrec.resume.State to update and save; the train loop sets its
        phase and fills its other fields through `collect`.
      collect: called before each save to copy the other callbacks' state in.
      phase_end: the epoch at which the current phase ends.
      checkpoint: the run's AtomicCheckpoint; flushed by `collect` before a save,
        and told to hold its due weights when an epoch end does not save but a save
        may come within the next epoch.
      steps_per_epoch: for that forecast.
      step_offset: steps already done in the first epoch of this fit (resuming mid-epoch).
      classifier: the model whose variables are saved, when fit trains another (the
        part of the head on cached features, which shares its variables and optimizer).
    """

    def __init__(
        self,
        model_dir: str,
        state,
        collect,
        phase_end: int,
        checkpoint: AtomicCheckpoint,
        steps_per_epoch: int,
        every_steps: int = 0,
        every_seconds: float = 0.0,
        min_seconds: float = 0.0,
        step_offset: int = 0,
        classifier=None,
    ):
        super().__init__()
        self.model_dir = model_dir
        self.classifier = classifier
        self.state = state
        self.collect = collect
        self.phase_end = phase_end
        self.checkpoint = checkpoint
        self.steps_per_epoch = steps_per_epoch
        self.every_steps = every_steps
        self.every_seconds = every_seconds
        self.min_seconds = min_seconds
        self.step_offset = step_offset
        self._epoch = 0
        self._epoch_started = self._last_save = time.monotonic()
        self._overdue = False

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch
        self._epoch_started = time.monotonic()

    def on_train_batch_end(self, batch, logs=None):
        step = self.step_offset + batch + 1
        due_steps = self.every_steps and step % self.every_steps == 0
        due_time = self.every_seconds and time.monotonic() - self._last_save >= self.every_seconds
        if not (due_steps or due_time):
            return
        if self.checkpoint.unheld:
            # The last epoch's files were neither written nor held (this epoch was
            # forecast to end first): saving now would write this step's weights as
            # that epoch's. The epoch end saves instead.
            self._overdue = True
            return
        self._save(self._epoch, step, phase_done=False)

    def on_epoch_end(self, epoch, logs=None):
        self.step_offset = 0
        now = time.monotonic()
        done = epoch + 1 >= self.phase_end or bool(self.model.stop_training)
        if done or self._overdue or now - self._last_save >= self.min_seconds:
            self._save(epoch + 1, 0, phase_done=done)
        elif self._may_save_within_next_epoch(now):
            self.checkpoint.hold()

    def _may_save_within_next_epoch(self, now: float) -> bool:
        by_steps = self.every_steps and self.every_steps <= self.steps_per_epoch
        # Twice the last epoch's length: a margin for epochs that vary.
        epoch_seconds = now - self._epoch_started
        by_time = (
            self.every_seconds and now - self._last_save + 2 * epoch_seconds >= self.every_seconds
        )
        return bool(by_steps or by_time)

    def _save(self, epoch: int, step: int, phase_done: bool) -> None:
        self.state.epoch, self.state.step, self.state.phase_done = epoch, step, phase_done
        self.state.steps[self.state.phase] = int(self.model.optimizer.iterations.numpy())
        self.collect(self.state)  # flushes the checkpoint
        # A finished phase saves no optimizer slots: the model's variables, which the
        # flush has just written to last.weights.h5.
        same_as = self.checkpoint.current_file if phase_done else None
        resume.save(self.model_dir, self.classifier or self.model, self.state, same_as)
        self._last_save = time.monotonic()
        self._overdue = False
