"""Two-phase transfer learning, then evaluation and export: the main job of lmrec.

    python -m lmrec.train --flagfile=configs/demo.cfg

Phase 1 trains the head on a frozen backbone; phase 2 unfreezes the backbone
(all of it, or from --unfreeze_from) and fine-tunes at a lower learning rate.
Notebooks call train_and_evaluate(config) directly.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import keras
import tensorflow as tf

from lmrec import callbacks as callbacks_lib
from lmrec import (
    distribute,
    feature_cache,
    losses,
    optimizers,
    performance,
    plots,
    resume,
    run_files,
    run_lock,
)
from lmrec.config import ExperimentConfig
from lmrec.data import augment, pipeline, prepare, records
from lmrec.errors import UserError
from lmrec.models import backbones, classifier, freezing


@dataclass
class TrainResult:
    """Where everything went, and the headline numbers."""

    model_dir: str
    data_dir: str
    best_epoch: int | None = None
    best_metric: str = ""
    best_value: float | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    # Per phase: {"trainable", "non_trainable", "total"} parameter counts while it trained.
    parameters: dict[str, dict[str, int]] = field(default_factory=dict)
    # Phases that early stopping ended, with the last epoch they ran (1-based, as in history).
    stopped_early: dict[str, int] = field(default_factory=dict)
    # Optimizer steps each phase took (a resumed run counts the steps before its kill).
    steps: dict[str, int] = field(default_factory=dict)
    resumed: bool = False  # continued from a checkpoint in model_dir
    # Phase 1's feature cache: {"used": False, "reason": ...} or what it held and its seconds.
    feature_cache: dict[str, Any] = field(default_factory=dict)
    # Per phase this process trained, seconds from its setup (feature cache, compile) to the
    # end of its last epoch.
    phase_wall_seconds: dict[str, float] = field(default_factory=dict)
    metrics: dict[str, Any] | None = None
    export_path: str | None = None
    seconds: float = 0.0

    @property
    def phase_seconds(self) -> dict[str, float]:
        """Wall time of each training phase: the sum of its epochs, validation included, and
        for phase 1 on cached features the time the backbone took to compute them."""
        totals: dict[str, float] = {}
        for row in self.history:
            totals[row["phase"]] = totals.get(row["phase"], 0.0) + row["seconds"]
        if "frozen" in totals:
            totals["frozen"] += self.feature_cache.get("seconds", 0.0)
        return {phase: round(seconds, 1) for phase, seconds in totals.items()}


def _sample_predictions(
    config: ExperimentConfig, class_names: list[str], model_dir: str, classifier
) -> callbacks_lib.SamplePredictions:
    """The callback for the first --tensorboard_images photos of the (shuffled) val split."""
    # Not normalized (tf.identity), so they display as photos.
    dataset = pipeline.run_dataset(
        config, "val", tf.identity, batch_size=config.train.tensorboard_images
    )
    images, labels = next(iter(dataset))
    spec = backbones.get_spec(config.model.backbone)
    log_dir = os.path.join(model_dir, run_files.LOGS_DIR, "samples")
    return callbacks_lib.SamplePredictions(
        log_dir,
        images,
        labels,
        class_names,
        spec.preprocess,
        classifier,
        every_epochs=config.train.tensorboard_images_every,
    )


def ensure_data(config: ExperimentConfig, verbose: bool = True, may_prepare: bool = True) -> str:
    """Returns the prepared data folder, preparing it first when the config allows.

    may_prepare=False (multi-worker training, where every worker would prepare the
    same folder at once) ignores --prepare_if_missing.

    Raises:
      UserError: no shards and --prepare_if_missing is off; the message gives
        the exact prepare command.
    """
    data_dir = config.data.data_dir or os.path.join(
        config.prepare.output_dir, prepare.dataset_name(config.prepare)
    )
    if prepare.is_prepared(data_dir):
        return data_dir
    if config.train.prepare_if_missing and may_prepare:
        if verbose:
            print(f"No prepared data in {data_dir}: preparing it now.", file=sys.stderr)
        prepare_config = dataclasses.replace(
            config.prepare,
            name=os.path.basename(os.path.normpath(data_dir)),
            output_dir=os.path.dirname(os.path.normpath(data_dir)) or ".",
        )
        return prepare.prepare(prepare_config, verbose=verbose).data_dir
    source_hint = f"--source={config.prepare.source}" + (
        f" --input_dir={config.prepare.input_dir}"
        if config.prepare.input_dir
        else " --input_dir=/path/to/photos"
        if config.prepare.source == "folder"
        else ""
    )
    name = os.path.basename(os.path.normpath(data_dir))
    parent = os.path.dirname(os.path.normpath(data_dir)) or "."
    raise UserError(
        f"No prepared dataset in --data_dir={data_dir}. Prepare it first:\n"
        f"  python -m lmrec.prepare {source_hint} --name={name} --output_dir={parent}"
    )


def validate(config: ExperimentConfig) -> None:
    """Checks every registry name and number before any slow work, so typos fail at once.

    Raises:
      UserError: naming the offending flag.
    """
    from lmrec.models import heads

    backbones.resolve_image_size(config.model.backbone, config.data.image_size)
    backbones.normalize_weights(config.model.weights)
    heads.get_builder(config.model.head)
    losses.check(config)
    augment.get_policy(config.data.augment)
    augment.check_mixing(config.data.mixing)
    pipeline.check_balance(config.data.balance)
    distribute.get_factory(config.train.strategy)
    distribute.lr_scale(config.train.lr_scaling, 1)
    performance.dtype_policy_name(config.train.mixed_precision)
    performance.jit_compile(config.train.jit_compile)
    callbacks_lib.early_stopping_mode(config.train.early_stopping_metric)
    feature_cache.check(config)
    optimizers.check(config.train)
    if config.train.select_epoch not in callbacks_lib.SELECT_EPOCH:
        raise UserError(
            f"--select_epoch must be one of {', '.join(callbacks_lib.SELECT_EPOCH)}, "
            f"got {config.train.select_epoch!r}"
        )
    if not 0.0 <= config.train.ema_momentum < 1.0:
        raise UserError(f"--ema_momentum must be in [0, 1), got {config.train.ema_momentum}")
    if config.data.batch_size < 1:
        raise UserError("--batch_size must be >= 1")
    for flag in (
        "epochs_frozen",
        "epochs_finetune",
        "steps_per_epoch",
        "early_stopping_patience",
        "tensorboard_images",
        "checkpoint_every_steps",
        "checkpoint_every_seconds",
        "checkpoint_min_seconds",
    ):
        if getattr(config.train, flag) < 0:
            raise UserError(f"--{flag} must be >= 0")
    if config.train.tensorboard_images_every < 1:
        raise UserError(
            f"--tensorboard_images_every must be >= 1, got {config.train.tensorboard_images_every}"
        )
    if config.train.epochs_frozen + config.train.epochs_finetune == 0:
        raise UserError("Nothing to train: --epochs_frozen and --epochs_finetune are both 0")


def _check_model_dir(model_dir: str) -> None:
    if not model_dir:
        raise UserError("--model_dir is required (where checkpoints, logs and reports go)")
    try:
        os.makedirs(model_dir, exist_ok=True)
        probe = os.path.join(model_dir, ".write-test")
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as error:
        raise UserError(f"--model_dir={model_dir} is not writable: {error.strerror}") from None


def train_class_counts(stats: dict, num_classes: int) -> list[int]:
    """Training images per class (index = label) from a prepared dataset's stats.json."""
    counts = [0] * num_classes
    for entry in stats["classes"]:
        index = entry.get("index")
        if index is not None and 0 <= index < num_classes:
            counts[index] = int(entry.get("train", 0))
    return counts


def datasets(config: ExperimentConfig, stats: dict, num_classes: int):
    """Training (repeated, augmented, balanced) and validation datasets with one-hot labels.

    --balance=resample draws the training stream class-balanced; with
    --balance=class_weights each training batch also carries per-example loss
    weights (inverse class frequency, after mixing so mixed labels mix their
    weights), which Keras' fit applies as sample weights. Validation is never
    balanced or weighted.

    Returns:
      (train dataset, val dataset or None when there is no val split, steps per epoch).
    """
    preprocess = backbones.get_spec(config.model.backbone).preprocess

    def one_hot(images, labels):
        return images, tf.one_hot(labels, num_classes)

    counts = train_class_counts(stats, num_classes)
    train = pipeline.run_dataset(
        config, "train", preprocess, balance=config.data.balance, class_counts=counts
    ).map(one_hot)
    train = augment.mix_batches(train, config.data.mixing, config.data.seed)
    if config.data.balance == "class_weights":
        train = pipeline.with_class_weights(train, pipeline.class_weights(counts))
    val = None
    if stats["totals"]["val"] > 0:
        val = pipeline.run_dataset(
            config, "val", preprocess, num_examples=stats["totals"]["val"]
        ).map(one_hot)
    steps = config.train.steps_per_epoch or max(
        1, math.ceil(stats["totals"]["train"] / config.data.batch_size)
    )
    return train, val, steps


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
        metrics=[
            keras.metrics.CategoricalAccuracy(name="accuracy"),
            keras.metrics.TopKCategoricalAccuracy(k=min(5, num_classes), name="top5"),
        ],
        jit_compile=performance.jit_compile(config.train.jit_compile),
    )
    model.compile(**compile_args)
    if trained is not None:
        compile_args["metrics"] = [
            keras.metrics.CategoricalAccuracy(name="accuracy"),
            keras.metrics.TopKCategoricalAccuracy(k=min(5, num_classes), name="top5"),
        ]
        trained.compile(**{**compile_args, "optimizer": model.optimizer})
        model.optimizer.build(model.trainable_variables)


def _frozen_feature_cache(
    model, config: ExperimentConfig, stats: dict, steps_per_epoch: int, strategy, verbose: bool
) -> tuple[feature_cache.FeatureCache | None, dict[str, Any]]:
    """Phase 1's feature cache (lmrec.feature_cache), or None and why not, said in the log.

    Returns:
      (the cache or None, the facts TrainResult.feature_cache records).
    """
    if distribute.is_multi_worker(strategy):
        plan = feature_cache.Plan(
            reason="multi-worker training: each worker reads only its share of the images"
        )
    else:
        plan = feature_cache.plan(model, config, stats, steps_per_epoch, config.train.model_dir)
    if verbose:
        print(plan.describe(), file=sys.stderr)
    if not plan.use:
        return None, {"used": False, "reason": plan.reason}
    cache = feature_cache.extract(
        model, config, plan, strategy, verbose=fit_verbosity() if verbose else 0
    )
    if verbose:
        print(cache.describe(), file=sys.stderr)
    return cache, cache.info()


def _fit_phase(
    model,
    train_data,
    val_data,
    callbacks: list,
    config: ExperimentConfig,
    model_dir: str,
    state: resume.State,
    checkpoint: callbacks_lib.AtomicCheckpoint,
    stopping_metric: str,
    phase_end: int,
    start: tuple[int, int],
    steps_per_epoch: int,
    verbose: bool,
    continuing: bool = False,
    fitted: keras.Model | None = None,
) -> int:
    """Trains one phase from `start` (epoch, step) to epoch phase_end; returns the epoch reached.

    A phase resumed mid-epoch runs as two fits: the steps left in that epoch, then
    the remaining epochs (Keras' fit starts epochs, not steps). The callbacks that
    carry state across fits (early stopping, EMA swapping, the resume checkpoint) are
    made here, once per phase, from the saved state when `continuing` a phase that
    was under way.

    `fitted` is the model fit trains when not `model` (phase 1 on cached features:
    the head after its cached layers); the checkpoints hold the whole classifier.
    """
    fitted = fitted or model
    start_epoch, start_step = start
    phase_callbacks = list(callbacks)
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
        model_dir,
        state,
        collect,
        phase_end=phase_end,
        checkpoint=checkpoint,
        steps_per_epoch=steps_per_epoch,
        every_steps=config.train.checkpoint_every_steps,
        every_seconds=config.train.checkpoint_every_seconds,
        min_seconds=config.train.checkpoint_min_seconds,
        step_offset=start_step,
        classifier=model,
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
            verbose=fit_verbosity() if verbose else 0,
        )
        if fitted.stop_training:
            break
    return state.epoch


def _resume_message(model_dir: str, state: resume.State) -> str:
    where = os.path.join(model_dir, resume.STATE_FILE)
    if state.complete:
        return (
            f"Training in {model_dir} already finished ({where}); evaluating and exporting "
            f"only. Delete {os.path.join(model_dir, resume.RESUME_DIR)} to train it again."
        )
    position = f"epoch {state.epoch + 1}" + (f", step {state.step + 1}" if state.step else "")
    if state.phase_done:
        position = f"the end of phase {state.phase} (epoch {state.epoch})"
    return (
        f"Resuming the run in {model_dir} from its checkpoint at {position} "
        f"({state.global_step} steps done); the data is reshuffled from there."
    )


def fit_verbosity() -> int:
    """Keras fit verbosity: progress bars on a terminal, one line per epoch in logs."""
    return 1 if sys.stdout.isatty() else 2


def train_and_evaluate(
    config: ExperimentConfig, model_dir: str | None = None, verbose: bool = True
) -> TrainResult:
    """Prepares data if needed, trains both phases, evaluates and exports.

    Args:
      config: the whole experiment; config.train.model_dir is used unless
        model_dir is given.
      model_dir: overrides config.train.model_dir.
      verbose: progress bars and the final summary.

    Returns:
      A TrainResult saying where every output went.
    """
    started = time.time()
    model_dir = model_dir or config.train.model_dir
    validate(config)
    if not model_dir:
        raise UserError("--model_dir is required (where checkpoints, logs and reports go)")
    # First: a multi-worker strategy must be set up before TensorFlow runs anything.
    strategy = distribute.get_strategy(config.train.strategy)
    chief = distribute.is_chief(strategy)
    model_dir = distribute.worker_model_dir(model_dir, strategy)
    _check_model_dir(model_dir)
    # One run per model_dir; taking the lock also removes what a killed run left in it.
    with run_lock.folder(model_dir, verbose=verbose):
        return _train_holding_lock(config, model_dir, strategy, chief, started, verbose)


def _train_holding_lock(
    config: ExperimentConfig, model_dir: str, strategy, chief: bool, started: float, verbose: bool
) -> TrainResult:
    """train_and_evaluate()'s work, done while holding the model_dir's lock."""
    data_dir = ensure_data(config, verbose, may_prepare=not distribute.is_multi_worker(strategy))
    labels = records.read_labels(data_dir)
    stats = prepare.read_stats(data_dir)
    image_size = backbones.resolve_image_size(config.model.backbone, config.data.image_size)
    config = config.replace(
        data={"data_dir": data_dir, "image_size": image_size},
        train={"model_dir": model_dir},
    )
    state = resume.read(model_dir)
    if state is not None and state.complete and resume.differences(model_dir, config, labels):
        # A finished run is not mixed with anything: the new settings train anew over it.
        if verbose:
            print(
                f"{model_dir} holds a finished run with other classes or settings: training anew.",
                file=sys.stderr,
            )
        resume.discard(model_dir)
        state = None
    elif state is not None and not state.complete:
        resume.check_matches(model_dir, config, labels)
    run_files.write_run_files(model_dir, config, labels)
    num_classes = len(labels)

    replicas = strategy.num_replicas_in_sync
    data_config = config.replace(
        data={"batch_size": distribute.global_batch_size(config.data.batch_size, strategy)}
    )
    if state is not None and not state.complete:
        data_config = data_config.replace(
            data={"seed": resume.resumed_seed(config.data.seed, state)}
        )
    train_data, val_data, steps_per_epoch = datasets(data_config, stats, num_classes)
    if distribute.is_multi_worker(strategy):
        train_data, val_data = (
            data
            and distribute.shard_across_workers(
                data, len(tf.io.gfile.glob(records.shard_pattern(data_dir, split))), strategy
            )
            for data, split in ((train_data, "train"), (val_data, "val"))
        )
    train_count = stats["totals"]["train"]
    batch_size = config.data.batch_size

    keras.utils.set_random_seed(data_config.data.seed)
    policy = performance.dtype_policy_name(config.train.mixed_precision)
    for warning in performance.warnings_for(
        config.train.mixed_precision, config.train.jit_compile, config.model.backbone
    ):
        print(f"Warning: {warning}", file=sys.stderr)
    # Layers take the global dtype policy when built; compile() adds loss scaling for float16.
    with strategy.scope(), performance.dtype_policy(policy):
        model = classifier.build_classifier(config.model, num_classes, image_size)
        synced = distribute.sync_batchnorm(model, strategy) if config.train.sync_batchnorm else 0
    resume.check_free_space(model_dir, model)

    resuming = state is not None
    state = state or resume.State()
    history = state.history
    monitor = "val_accuracy" if val_data is not None else "accuracy"
    checkpoint = callbacks_lib.AtomicCheckpoint(
        model_dir, monitor, config.train.select_epoch, classifier=model
    )
    if state.best:
        checkpoint.best = state.best["value"]
        checkpoint.best_loss = state.best["loss"]
        checkpoint.best_epoch = state.best["epoch"]
    history_writer = callbacks_lib.HistoryWriter(
        os.path.join(model_dir, run_files.HISTORY_CSV), history
    )
    callbacks = [
        history_writer,
        checkpoint,
        # Logs every metric and the learning rate per epoch (logs/train, logs/validation).
        callbacks_lib.EpochTensorBoard(log_dir=os.path.join(model_dir, run_files.LOGS_DIR)),
    ]
    samples = None
    if val_data is not None and config.train.tensorboard_images:
        samples = _sample_predictions(config, records.label_names(labels), model_dir, model)
        callbacks.append(samples)
    stopping_metric = config.train.early_stopping_metric
    if val_data is None:
        stopping_metric = stopping_metric.removeprefix("val_")

    lr_scale = distribute.lr_scale(config.train.lr_scaling, replicas)
    if verbose:
        task_type, task_index = distribute.task(strategy)
        print(
            f"Training {config.model.backbone} + {config.model.head} with loss "
            f"{config.model.loss} on {data_dir}: "
            f"{num_classes} classes, {train_count} training images, {image_size} px, "
            f"batch {batch_size} per replica x {replicas} replica(s), "
            f"{steps_per_epoch} steps per epoch, {policy} dtype policy.",
            file=sys.stderr,
        )
        if distribute.is_multi_worker(strategy):
            print(
                f"This is {task_type} {task_index}"
                + (
                    " (the chief: it writes the model_dir)." if chief else f", writing {model_dir}."
                ),
                file=sys.stderr,
            )
        if synced:
            print(
                f"{synced} BatchNorm layers compute their statistics over all {replicas} "
                "replicas (--sync_batchnorm).",
                file=sys.stderr,
            )
        if lr_scale != 1:
            print(
                f"Learning rates x {lr_scale:g} for {replicas} replicas "
                f"(--lr_scaling={config.train.lr_scaling}).",
                file=sys.stderr,
            )
        if resuming:
            print(_resume_message(model_dir, state), file=sys.stderr)
        if config.train.early_stopping_patience:
            print(
                f"Early stopping: a phase ends after {config.train.early_stopping_patience} "
                f"epoch(s) without a better {stopping_metric}.",
                file=sys.stderr,
            )
        if config.data.balance != "none":
            counts = train_class_counts(stats, num_classes)
            print(
                f"Balance: {config.data.balance} (training images per class: "
                f"{min(counts)} to {max(counts)}; validation is not balanced).",
                file=sys.stderr,
            )
    phases = [
        ("frozen", config.train.epochs_frozen, config.train.lr_frozen * lr_scale),
        ("finetune", config.train.epochs_finetune, config.train.lr_finetune * lr_scale),
    ]
    epoch = 0
    cache_info: dict[str, Any] = {}
    phase_wall_seconds: dict[str, float] = {}
    # A fresh run has nothing to restore; a resumed one loads its checkpoint once.
    restored = not state.weights_file or state.complete
    for phase, epochs, learning_rate in phases:
        if epochs <= 0 or state.complete:
            continue
        if phase in state.phase_end_epochs:  # Finished before the run was resumed.
            epoch = state.phase_end_epochs[phase]
            continue
        continuing = state.phase == phase and not state.phase_done and bool(state.weights_file)
        phase_started = time.time()
        cache = None
        fitted, fit_train, fit_val = model, train_data, val_data
        if phase == "frozen":
            cache, cache_info = _frozen_feature_cache(
                model, data_config, stats, steps_per_epoch, strategy, verbose
            )
            if cache is not None:
                fitted = cache.head
                fit_train = cache.training_dataset(
                    data_config, num_classes, train_class_counts(stats, num_classes)
                )
                fit_val = cache.validation_dataset(data_config.data.batch_size, num_classes)
                if samples is not None:
                    samples.predict = cache.predict
        with strategy.scope():
            prepare_phase(
                model,
                phase,
                learning_rate,
                epochs,
                steps_per_epoch,
                config,
                trained=None if cache is None else fitted,
            )
            if not restored:
                resume.restore(model, model_dir, state, with_optimizer=continuing)
                restored = True
        count = freezing.count_parameters(model)
        state.parameters[phase] = {
            "trainable": count.trainable,
            "non_trainable": count.non_trainable,
            "total": count.total,
        }
        if verbose:
            print(
                f"Phase {phase}: {epochs} epoch(s), learning rate {learning_rate:g} "
                f"({config.train.lr_schedule}); {count}.",
                file=sys.stderr,
            )
        start_epoch, start_step = (state.epoch, state.step) if continuing else (epoch, 0)
        state.phase, state.phase_done = phase, False
        history_writer.phase = phase
        phase_start = epoch
        try:
            epoch = _fit_phase(
                model,
                fit_train,
                fit_val,
                callbacks,
                config,
                model_dir,
                state,
                checkpoint,
                stopping_metric,
                phase_end=epoch + epochs,
                start=(start_epoch, start_step),
                steps_per_epoch=steps_per_epoch,
                verbose=verbose,
                continuing=continuing,
                fitted=fitted,
            )
        finally:
            if cache is not None:
                cache.close()
                if samples is not None:
                    samples.predict = None
        phase_wall_seconds[phase] = round(time.time() - phase_started, 1)
        if phase in state.stopped_early and verbose:
            print(
                f"Early stopping: phase {phase} ended after epoch {epoch}, "
                f"{epoch - phase_start} of {epochs}.",
                file=sys.stderr,
            )
    if not state.complete:
        resume.mark_complete(model_dir, state)
    plots.training_curves_png(history, os.path.join(model_dir, run_files.CURVES_PNG))

    result = TrainResult(
        model_dir=model_dir,
        data_dir=data_dir,
        best_epoch=checkpoint.best_epoch,
        best_metric=monitor,
        best_value=checkpoint.best,
        history=history,
        parameters=state.parameters,
        stopped_early=state.stopped_early,
        steps=dict(state.steps),
        resumed=resuming,
        feature_cache=cache_info,
        phase_wall_seconds=phase_wall_seconds,
    )
    if not chief:
        pass  # Workers other than the chief hold the same weights: one report, one export.
    elif config.train.evaluate_after and val_data is None and not config.evaluate.data:
        print(
            f"No validation split in {data_dir}, so no evaluation; run python -m lmrec.evaluate "
            f"--model_dir={model_dir} --data=<held-out photos>.",
            file=sys.stderr,
        )
    elif config.train.evaluate_after:
        from lmrec import evaluate

        result.metrics = evaluate.evaluate(
            model_dir,
            config.evaluate.data,
            config.data.batch_size,
            verbose=verbose,
            distractors=config.evaluate.distractors,
        ).metrics
    if config.train.export_after and chief:
        from lmrec import export

        result.export_path = export.export_saved_model(model_dir, config.export, verbose=verbose)
    result.seconds = round(time.time() - started, 1)
    if verbose:
        print(summary(result), file=sys.stderr)
    return result


def summary(result: TrainResult) -> str:
    """The closing lines of a run: where each result went."""
    d = result.model_dir
    lines = [
        "",
        f"Done in {result.seconds:.0f} s. Results:",
        f"  data           {result.data_dir}",
        f"  run flags      {os.path.join(d, run_files.FLAGS_FILE)}  (re-run with --flagfile)",
        f"  best weights   {os.path.join(d, run_files.BEST_WEIGHTS)}  "
        f"(epoch {result.best_epoch}, {result.best_metric} {result.best_value:.3f})"
        if result.best_value is not None
        else f"  last weights   {os.path.join(d, run_files.LAST_WEIGHTS)}",
        f"  history        {os.path.join(d, run_files.HISTORY_CSV)}, "
        f"{os.path.join(d, run_files.CURVES_PNG)}",
        f"  tensorboard    tensorboard --logdir {os.path.join(d, run_files.LOGS_DIR)}",
    ]
    for phase, epoch in result.stopped_early.items():
        lines.append(f"  early stop     phase {phase} ended after epoch {epoch}")
    if result.metrics:
        m = result.metrics
        lines.append(
            f"  evaluation     {os.path.join(d, run_files.REPORT_DIR)}/  "
            f"accuracy {m['accuracy']:.3f}, top-5 {m['top5_accuracy']:.3f}, "
            f"macro-F1 {m['macro_f1']:.3f}, GAP {m['gap']:.3f} on {m['num_images']} images"
        )
    if result.export_path:
        lines.append(f"  SavedModel     {result.export_path}  (TF Serving: serving_default)")
        lines.append(
            f"  tag photos     python -m lmrec.predict --model={result.export_path} PHOTOS..."
        )
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    from absl import flags

    from lmrec import config as config_lib

    train_and_evaluate(config_lib.experiment_from_flags(flags.FLAGS))
    return 0


def run() -> None:
    from lmrec import cli, flags  # noqa: F401 - defines the flags.

    cli.run_stage(main, positional=False)


if __name__ == "__main__":
    run()
