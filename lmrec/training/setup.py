"""The checks and setup before a run's slow work: settings, model_dir, model and precision."""

from __future__ import annotations

import os

import keras

from lmrec import (
    callbacks,
    console,
    distribute,
    feature_cache,
    losses,
    optimizers,
    performance,
)
from lmrec.config import ExperimentConfig
from lmrec.data import augment, pipeline
from lmrec.errors import UserError
from lmrec.models import backbones, classifier, heads

# Training settings that count something and so may not be negative.
_COUNTS = (
    "epochs_frozen",
    "epochs_finetune",
    "steps_per_epoch",
    "early_stopping_patience",
    "tensorboard_images",
    "checkpoint_every_steps",
    "checkpoint_every_seconds",
    "checkpoint_min_seconds",
)


def validate(config: ExperimentConfig) -> None:
    """Checks every registry name and number before any slow work, so typos fail at once.

    Raises:
      UserError: naming the offending flag.
    """
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
    callbacks.early_stopping_mode(config.train.early_stopping_metric)
    feature_cache.check(config)
    optimizers.check(config.train)
    train = config.train
    callbacks.SELECT_EPOCH.get(train.select_epoch)
    if not 0.0 <= train.ema_momentum < 1.0:
        raise UserError(f"--ema_momentum must be in [0, 1), got {train.ema_momentum}")
    if config.data.batch_size < 1:
        raise UserError("--batch_size must be >= 1")
    for flag in _COUNTS:
        if getattr(train, flag) < 0:
            raise UserError(f"--{flag} must be >= 0")
    if train.tensorboard_images_every < 1:
        raise UserError(
            f"--tensorboard_images_every must be >= 1, got {train.tensorboard_images_every}"
        )
    if train.epochs_frozen + train.epochs_finetune == 0:
        raise UserError("Nothing to train: --epochs_frozen and --epochs_finetune are both 0")


def require_model_dir(model_dir: str | None) -> str:
    """The model_dir, checked to be given (before a strategy starts, which may wait on peers).

    Raises:
      UserError: no model_dir.
    """
    if not model_dir:
        raise UserError("--model_dir is required (where checkpoints, logs and reports go)")
    return model_dir


def writable_model_dir(model_dir: str, strategy) -> str:
    """The folder this worker writes (model_dir itself on the chief), created and probed.

    Raises:
      UserError: the folder cannot be created or written.
    """
    model_dir = distribute.worker_model_dir(require_model_dir(model_dir), strategy)
    try:
        os.makedirs(model_dir, exist_ok=True)
        probe = os.path.join(model_dir, ".write-test")
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as error:
        raise UserError(f"--model_dir={model_dir} is not writable: {error.strerror}") from None
    return model_dir


def build_model(config: ExperimentConfig, num_classes: int, strategy, seed: int):
    """The classifier to train, built under the strategy and the --mixed_precision policy.

    Seeds Keras first, so the head's initial weights follow --seed. Warns about
    precision settings that are slow on this machine.

    Returns:
      (the classifier, the number of BatchNorm layers made to sync across replicas).
    """
    keras.utils.set_random_seed(seed)
    policy = performance.dtype_policy_name(config.train.mixed_precision)
    for warning in performance.warnings_for(
        config.train.mixed_precision, config.train.jit_compile, config.model.backbone
    ):
        console.warn(warning)
    # Layers take the global dtype policy when built; compile() adds loss scaling for float16.
    with strategy.scope(), performance.dtype_policy(policy):
        model = classifier.build_classifier(config.model, num_classes, config.data.image_size)
        synced = distribute.sync_batchnorm(model, strategy) if config.train.sync_batchnorm else 0
    return model, synced
