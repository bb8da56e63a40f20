"""The two training phases: what trains in each, its callbacks, and fitting it (resumably).

Phase 1 ("frozen") trains the head on a frozen backbone, on cached backbone
features when lmrec.feature_cache finds that exact and worth it; phase 2
("finetune") unfreezes the backbone (all of it, or from --unfreeze_from) and
fine-tunes at a lower learning rate. Each phase compiles a fresh optimizer.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from typing import Any

import keras
import tensorflow as tf

from lmrec import callbacks as callbacks_lib
from lmrec import (
    console,
    distribute,
    feature_cache,
    losses,
    optimizers,
    performance,
    resume,
    run_files,
)
from lmrec.config import ExperimentConfig
from lmrec.data import pipeline, records
from lmrec.models import backbones, freezing
from lmrec.training.data import RunData


def fit_verbosity() -> int:
    """Keras fit verbosity: progress bars on a terminal, one line per epoch in logs, none
    when lmrec.console is quiet."""
    if console.is_quiet():
        return 0
    return 1 if sys.stdout.isatty() else 2


@dataclasses.dataclass(frozen=True)
class Phase:
    """One training phase: its name ("frozen" or "finetune"), epochs and learning rate."""

    name: str
    epochs: int
    learning_rate: float


def phase_plan(config: ExperimentConfig, lr_scale: float = 1.0) -> list[Phase]:
    """Both phases in order, their rates times `lr_scale` (distribute.lr_scale)."""
    train = config.train
    return [
        Phase("frozen", train.epochs_frozen, train.lr_frozen * lr_scale),
        Phase("finetune", train.epochs_finetune, train.lr_finetune * lr_scale),
    ]


def prepare_phase(
    model,
    phase: str,
    learning_rate: float,
    epochs: int,
    steps_per_epoch: int,
    config,
    trained: keras.Model | None = None,
) -> None:
    """Sets what trains in this phase and compiles a fresh optimizer for it.

    --warmup_epochs applies to phase 2 only: phase 1 trains a new head on a frozen
    backbone, with nothing pretrained for large first steps to damage, while phase 2's
    fresh optimizer meets pretrained weights (or, from scratch, is the whole run).

    Args:
      trained: the model fit will train, when not the classifier: in phase 1 on
        cached features, the part of the head after its cached layers. It is
        compiled with the classifier's optimizer (one set of slots, built in the
        classifier's variable order, so the resume checkpoint of the classifier
        holds them and restores them either way), loss and metrics.
    """
    if phase == "frozen":
        freezing.freeze_backbone(model)
    else:
        freezing.unfreeze_backbone(
            model,
            config.train.unfreeze_from,
            keep_batchnorm_frozen=backbones.uses_pretrained_weights(config.model.weights),
            freeze_layers=config.train.freeze_layers,
        )
    num_classes = model.output.shape[-1]
    finetune = phase == "finetune"
    lr_factors = None
    if finetune and config.train.layer_lr_ratio < 1.0:
        lr_factors = optimizers.layer_rate_factors(model.backbone, config.train.layer_lr_ratio)

    def metrics():
        return [
            keras.metrics.CategoricalAccuracy(name="accuracy"),
            keras.metrics.TopKCategoricalAccuracy(k=min(5, num_classes), name="top5"),
        ]

    compile_args = dict(
        optimizer=optimizers.build(
            config.train,
            learning_rate,
            epochs * steps_per_epoch,
            steps_per_epoch,
            warmup_epochs=config.train.warmup_epochs if finetune else 0.0,
            lr_factors=lr_factors,
        ),
        loss=losses.build(config),
        metrics=metrics(),
        jit_compile=performance.jit_compile(config.train.jit_compile),
    )
    model.compile(**compile_args)
    if trained is not None:
        trained.compile(**{**compile_args, "metrics": metrics(), "optimizer": model.optimizer})
        model.optimizer.build(model.trainable_variables)


@dataclasses.dataclass
class RunCallbacks:
    """The callbacks every phase of a run shares, and the metrics they watch.

    Attributes:
      history: writes history.csv; its phase tags the rows.
      checkpoint: best/last.weights.h5 of the whole classifier.
      tensorboard: every metric and the learning rate per epoch (logs/train, logs/validation).
      samples: validation photos with predictions in TensorBoard, or None.
      monitor: what selects the best epoch (val_accuracy, or accuracy without a val split).
      stopping_metric: what early stopping watches (without "val_" when there is no val split).
    """

    history: callbacks_lib.HistoryWriter
    checkpoint: callbacks_lib.AtomicCheckpoint
    tensorboard: keras.callbacks.Callback
    samples: callbacks_lib.SamplePredictions | None
    monitor: str
    stopping_metric: str

    def as_list(self) -> list[keras.callbacks.Callback]:
        """The callbacks in the order fit gets them."""
        shared = [self.history, self.checkpoint, self.tensorboard]
        return shared + ([self.samples] if self.samples is not None else [])


def _sample_predictions(
    config: ExperimentConfig, labels: list[dict], model_dir: str, classifier
) -> callbacks_lib.SamplePredictions:
    """The callback for the first --tensorboard_images photos of the (shuffled) val split."""
    # Not normalized (tf.identity), so they display as photos.
    dataset = pipeline.run_dataset(
        config, "val", tf.identity, batch_size=config.train.tensorboard_images
    )
    images, label_ids = next(iter(dataset))
    return callbacks_lib.SamplePredictions(
        os.path.join(model_dir, run_files.LOGS_DIR, "samples"),
        images,
        label_ids,
        records.label_names(labels),
        backbones.get_spec(config.model.backbone).preprocess,
        classifier,
        every_epochs=config.train.tensorboard_images_every,
    )


def run_callbacks(
    config: ExperimentConfig,
    model_dir: str,
    model,
    state: resume.State,
    labels: list[dict],
    has_validation: bool,
) -> RunCallbacks:
    """The run's history, checkpoint, TensorBoard and sample callbacks, carrying on `state`."""
    monitor = "val_accuracy" if has_validation else "accuracy"
    checkpoint = callbacks_lib.AtomicCheckpoint(
        model_dir, monitor, config.train.select_epoch, classifier=model
    )
    if state.best:
        checkpoint.best = state.best["value"]
        checkpoint.best_loss = state.best["loss"]
        checkpoint.best_epoch = state.best["epoch"]
    samples = None
    if has_validation and config.train.tensorboard_images:
        samples = _sample_predictions(config, labels, model_dir, model)
    stopping_metric = config.train.early_stopping_metric
    return RunCallbacks(
        history=callbacks_lib.HistoryWriter(
            os.path.join(model_dir, run_files.HISTORY_CSV), state.history
        ),
        checkpoint=checkpoint,
        tensorboard=callbacks_lib.EpochTensorBoard(
            log_dir=os.path.join(model_dir, run_files.LOGS_DIR)
        ),
        samples=samples,
        monitor=monitor,
        stopping_metric=stopping_metric if has_validation else stopping_metric.removeprefix("val_"),
    )


@dataclasses.dataclass
class TrainingRun:
    """What every phase of a run shares: settings, folder, model, data, callbacks, state."""

    config: ExperimentConfig
    model_dir: str
    model: keras.Model
    data: RunData
    callbacks: RunCallbacks
    state: resume.State
    strategy: Any


def frozen_feature_cache(
    model, data: RunData, strategy, model_dir: str
) -> tuple[feature_cache.FeatureCache | None, dict[str, Any]]:
    """Phase 1's feature cache (lmrec.feature_cache), or None and why not, said on the console.

    Returns:
      (the cache or None, the facts TrainResult.feature_cache records).
    """
    if distribute.is_multi_worker(strategy):
        plan = feature_cache.Plan(
            reason="multi-worker training: each worker reads only its share of the images"
        )
    else:
        plan = feature_cache.plan(model, data.config, data.stats, data.steps_per_epoch, model_dir)
    console.say(plan.describe())
    if not plan.use:
        return None, {"used": False, "reason": plan.reason}
    cache = feature_cache.extract(model, data.config, plan, strategy, verbose=fit_verbosity())
    console.say(cache.describe())
    return cache, cache.info()


def fit_phase(
    run: TrainingRun,
    train_data,
    val_data,
    phase_end: int,
    start: tuple[int, int],
    continuing: bool = False,
    fitted: keras.Model | None = None,
) -> int:
    """Trains one phase from `start` (epoch, step) to epoch phase_end; returns the epoch reached.

    A phase resumed mid-epoch runs as two fits: the steps left in that epoch, then
    the remaining epochs (Keras' fit starts epochs, not steps). The callbacks that
    carry state across fits (early stopping, EMA swapping, the resume checkpoint) are
    made here, once per phase, from the saved state when `continuing` a phase that
    was under way.

    `fitted` is the model fit trains when not the classifier (phase 1 on cached
    features: the head after its cached layers); the checkpoints hold the whole
    classifier.
    """
    config, state, checkpoint = run.config, run.state, run.callbacks.checkpoint
    steps_per_epoch = run.data.steps_per_epoch
    fitted = fitted or run.model
    start_epoch, start_step = start
    phase_callbacks = run.callbacks.as_list()
    swap = None
    if config.train.ema_momentum > 0:
        # First, so the checkpoint and the validation see the averaged weights.
        swap = keras.callbacks.SwapEMAWeights(swap_on_epoch=True)
        # Saved at an epoch end with the average swapped in: swap back before training on.
        swap._ema_weights_in_model = state.ema_in_model and start_step == 0 and continuing
        phase_callbacks.insert(0, swap)
    stopper = None
    if config.train.early_stopping_patience:
        # Only ends the phase: the checkpoint, per --select_epoch, keeps the weights.
        stopping_metric = run.callbacks.stopping_metric
        stopper = callbacks_lib.ResumableEarlyStopping(
            monitor=stopping_metric,
            mode=callbacks_lib.early_stopping_mode(stopping_metric),
            patience=config.train.early_stopping_patience,
            initial=state.early_stopping if continuing else None,
        )
        phase_callbacks.append(stopper)

    def collect(saved: resume.State) -> None:
        checkpoint.flush()  # best.weights.h5 on disk is the epoch the state names
        saved.best = {
            "value": checkpoint.best,
            "loss": checkpoint.best_loss,
            "epoch": checkpoint.best_epoch,
        }
        saved.early_stopping = stopper.state() if stopper else {}
        saved.ema_in_model = bool(swap and swap._ema_weights_in_model)
        if saved.phase_done:
            saved.phase_end_epochs[saved.phase] = saved.epoch
            if saved.epoch < phase_end:
                saved.stopped_early[saved.phase] = saved.epoch

    saver = callbacks_lib.ResumeCheckpoint(
        run.model_dir,
        state,
        collect,
        phase_end=phase_end,
        checkpoint=checkpoint,
        steps_per_epoch=steps_per_epoch,
        every_steps=config.train.checkpoint_every_steps,
        every_seconds=config.train.checkpoint_every_seconds,
        min_seconds=config.train.checkpoint_min_seconds,
        step_offset=start_step,
        classifier=run.model,
    )
    phase_callbacks.append(saver)  # Last: it saves what the others decided.
    fits = [(start_epoch, start_epoch + 1, steps_per_epoch - start_step)] if start_step else []
    first_full = start_epoch + 1 if start_step else start_epoch
    if first_full < phase_end:
        fits.append((first_full, phase_end, steps_per_epoch))
    for initial_epoch, end_epoch, steps in fits:
        fitted.fit(
            train_data,
            validation_data=val_data,
            initial_epoch=initial_epoch,
            epochs=end_epoch,
            steps_per_epoch=steps,
            callbacks=phase_callbacks,
            shuffle=False,  # The pipeline shuffles; Keras cannot shuffle a tf.data.Dataset.
            verbose=fit_verbosity(),
        )
        if fitted.stop_training:
            break
    return state.epoch


def train_phase(
    run: TrainingRun, phase: Phase, epoch: int, restore: bool
) -> tuple[int, dict[str, Any]]:
    """Trains one phase from epoch `epoch` (or from the saved state when it was under way).

    Args:
      restore: load the resume checkpoint once the phase is compiled (the first phase
        a resumed run trains).

    Returns:
      (the epoch reached, phase 1's feature cache facts; {} for phase 2).
    """
    model, state, data = run.model, run.state, run.data
    continuing = state.phase == phase.name and not state.phase_done and bool(state.weights_file)
    cache, cache_info = None, {}
    fitted, fit_train, fit_val = model, data.train, data.val
    if phase.name == "frozen":
        cache, cache_info = frozen_feature_cache(model, data, run.strategy, run.model_dir)
    if cache is not None:
        fitted = cache.head
        fit_train = cache.training_dataset(data.config, data.num_classes, data.class_counts)
        fit_val = cache.validation_dataset(data.config.data.batch_size, data.num_classes)
        if run.callbacks.samples is not None:
            run.callbacks.samples.predict = cache.predict
    with run.strategy.scope():
        prepare_phase(
            model,
            phase.name,
            phase.learning_rate,
            phase.epochs,
            data.steps_per_epoch,
            run.config,
            trained=None if cache is None else fitted,
        )
        if restore:
            resume.restore(model, run.model_dir, state, with_optimizer=continuing)
    count = freezing.count_parameters(model)
    state.parameters[phase.name] = {
        "trainable": count.trainable,
        "non_trainable": count.non_trainable,
        "total": count.total,
    }
    console.say(
        f"Phase {phase.name}: {phase.epochs} epoch(s), learning rate {phase.learning_rate:g} "
        f"({run.config.train.lr_schedule}); {count}."
    )
    start = (state.epoch, state.step) if continuing else (epoch, 0)
    state.phase, state.phase_done = phase.name, False
    run.callbacks.history.phase = phase.name
    try:
        reached = fit_phase(
            run, fit_train, fit_val, epoch + phase.epochs, start, continuing, fitted
        )
    finally:
        if cache is not None:
            cache.close()
            if run.callbacks.samples is not None:
                run.callbacks.samples.predict = None
    if phase.name in state.stopped_early:
        console.say(
            f"Early stopping: phase {phase.name} ended after epoch {reached}, "
            f"{reached - epoch} of {phase.epochs}."
        )
    return reached, cache_info


def train_phases(run: TrainingRun, phases: list[Phase]) -> tuple[dict[str, Any], dict[str, float]]:
    """Trains the phases a run has left, then marks its resume state complete.

    Phases with no epochs, and phases a resumed run had finished, are skipped; a
    resumed run loads its checkpoint once, in the first phase it trains.

    Returns:
      (phase 1's feature cache facts, seconds per phase trained from its setup to the
      end of its last epoch).
    """
    state = run.state
    epoch = 0
    cache_info: dict[str, Any] = {}
    wall_seconds: dict[str, float] = {}
    restored = not state.weights_file or state.complete
    for phase in phases:
        if phase.epochs <= 0 or state.complete:
            continue
        if phase.name in state.phase_end_epochs:  # Finished before the run was resumed.
            epoch = state.phase_end_epochs[phase.name]
            continue
        started = time.time()
        epoch, info = train_phase(run, phase, epoch, restore=not restored)
        restored = True
        if phase.name == "frozen":
            cache_info = info
        wall_seconds[phase.name] = round(time.time() - started, 1)
    if not state.complete:
        resume.mark_complete(run.model_dir, state)
    return cache_info, wall_seconds
