"""A whole training run: data, both phases, then evaluation and export, and its summary."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any

from lmrec import (
    console,
    distribute,
    evaluate,
    export,
    performance,
    plots,
    resume,
    run_files,
    run_lock,
)
from lmrec.config import ExperimentConfig
from lmrec.training.data import resolve_data, run_data
from lmrec.training.phases import TrainingRun, phase_plan, run_callbacks, train_phases
from lmrec.training.setup import build_model, require_model_dir, validate, writable_model_dir


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


def train_and_evaluate(
    config: ExperimentConfig, model_dir: str | None = None, verbose: bool = True
) -> TrainResult:
    """Prepares data if needed, trains both phases, evaluates and exports.

    Args:
      config: the whole experiment; config.train.model_dir is used unless
        model_dir is given.
      model_dir: overrides config.train.model_dir.
      verbose: progress messages and bars, and the final summary; False is
        lmrec.console's quiet mode for this call.

    Returns:
      A TrainResult saying where every output went.
    """
    started = time.time()
    with console.quiet(console.is_quiet() or not verbose):
        validate(config)
        model_dir = require_model_dir(model_dir or config.train.model_dir)
        # First: a multi-worker strategy must be set up before TensorFlow runs anything.
        strategy = distribute.get_strategy(config.train.strategy)
        model_dir = writable_model_dir(model_dir, strategy)
        # One run per model_dir; taking the lock also removes what a killed run left in it.
        with run_lock.folder(model_dir, verbose=not console.is_quiet()):
            may_prepare = not distribute.is_multi_worker(strategy)
            config, labels, stats = resolve_data(config, may_prepare)
            config = config.replace(train={"model_dir": model_dir})
            saved_state = resume.read_for_run(model_dir, config, labels)
            run_files.write_run_files(model_dir, config, labels)
            data = run_data(config, stats, len(labels), saved_state, strategy)
            model, synced = build_model(config, len(labels), strategy, data.config.data.seed)
            resume.check_free_space(model_dir, model)
            state = saved_state or resume.State()
            callbacks = run_callbacks(config, model_dir, model, state, labels, data.val is not None)
            run = TrainingRun(config, model_dir, model, data, callbacks, state, strategy)
            lr_scale = distribute.lr_scale(config.train.lr_scaling, strategy.num_replicas_in_sync)
            console.say(describe_run(run, synced, lr_scale, resumed=saved_state is not None))
            feature_cache, phase_wall_seconds = train_phases(run, phase_plan(config, lr_scale))
            plots.training_curves_png(state.history, os.path.join(model_dir, run_files.CURVES_PNG))
            result = TrainResult(
                model_dir=model_dir,
                data_dir=config.data.data_dir,
                best_epoch=callbacks.checkpoint.best_epoch,
                best_metric=callbacks.monitor,
                best_value=callbacks.checkpoint.best,
                history=state.history,
                parameters=state.parameters,
                stopped_early=state.stopped_early,
                steps=dict(state.steps),
                resumed=saved_state is not None,
                feature_cache=feature_cache,
                phase_wall_seconds=phase_wall_seconds,
            )
            # Workers other than the chief hold the same weights: one report, one export.
            if distribute.is_chief(strategy):
                evaluate_and_export(result, config, has_validation=data.val is not None)
        result.seconds = round(time.time() - started, 1)
        console.say(summary(result))
    return result


def evaluate_and_export(result: TrainResult, config: ExperimentConfig, has_validation: bool):
    """Evaluates and exports the trained run as --evaluate_after and --export_after say,
    filling in result.metrics and result.export_path."""
    model_dir, verbose = result.model_dir, not console.is_quiet()
    if config.train.evaluate_after and not has_validation and not config.evaluate.data:
        console.warn(
            f"No validation split in {result.data_dir}, so no evaluation; run python -m "
            f"lmrec.evaluate --model_dir={model_dir} --data=<held-out photos>."
        )
    elif config.train.evaluate_after:
        result.metrics = evaluate.evaluate(
            model_dir,
            config.evaluate.data,
            config.data.batch_size,
            verbose=verbose,
            distractors=config.evaluate.distractors,
        ).metrics
    if config.train.export_after:
        result.export_path = export.export_saved_model(model_dir, config.export, verbose=verbose)


def describe_run(run: TrainingRun, synced_batchnorm: int, lr_scale: float, resumed: bool) -> str:
    """The lines that open a run: model, data, batch, and each setting that changes training."""
    config, data, strategy = run.config, run.data, run.strategy
    replicas = strategy.num_replicas_in_sync
    policy = performance.dtype_policy_name(config.train.mixed_precision)
    lines = [
        f"Training {config.model.backbone} + {config.model.head} with loss "
        f"{config.model.loss} on {config.data.data_dir}: "
        f"{data.num_classes} classes, {data.train_images} training images, "
        f"{config.data.image_size} px, batch {config.data.batch_size} per replica x "
        f"{replicas} replica(s), {data.steps_per_epoch} steps per epoch, "
        f"{policy} dtype policy."
    ]
    if distribute.is_multi_worker(strategy):
        task_type, task_index = distribute.task(strategy)
        role = (
            " (the chief: it writes the model_dir)."
            if distribute.is_chief(strategy)
            else f", writing {run.model_dir}."
        )
        lines.append(f"This is {task_type} {task_index}{role}")
    if synced_batchnorm:
        lines.append(
            f"{synced_batchnorm} BatchNorm layers compute their statistics over all "
            f"{replicas} replicas (--sync_batchnorm)."
        )
    if lr_scale != 1:
        lines.append(
            f"Learning rates x {lr_scale:g} for {replicas} replicas "
            f"(--lr_scaling={config.train.lr_scaling})."
        )
    if resumed:
        lines.append(resume.describe(run.model_dir, run.state))
    if config.train.early_stopping_patience:
        lines.append(
            f"Early stopping: a phase ends after {config.train.early_stopping_patience} "
            f"epoch(s) without a better {run.callbacks.stopping_metric}."
        )
    if config.data.balance != "none":
        counts = data.class_counts
        lines.append(
            f"Balance: {config.data.balance} (training images per class: "
            f"{min(counts)} to {max(counts)}; validation is not balanced)."
        )
    return "\n".join(lines)


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
