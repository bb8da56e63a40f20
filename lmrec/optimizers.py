"""OPTIMIZERS and LR_SCHEDULES: what updates the weights in each training phase, by name.

Each phase compiles a fresh optimizer built here from the phase's learning rate
and length, so phase 2 never inherits phase 1's moment estimates.
"""

from __future__ import annotations

from collections.abc import Callable

import keras

from lmrec.errors import UserError


def _adam(learning_rate, weight_decay: float, **ema):
    return keras.optimizers.Adam(learning_rate, **ema)


def _adamw(learning_rate, weight_decay: float, **ema):
    return keras.optimizers.AdamW(learning_rate, weight_decay=weight_decay, **ema)


def _sgd(learning_rate, weight_decay: float, **ema):
    # Nesterov momentum 0.9: the classic fine-tuning optimizer of the ResNet/EfficientNet papers.
    return keras.optimizers.SGD(
        learning_rate, momentum=0.9, nesterov=True, weight_decay=weight_decay or None, **ema
    )


OPTIMIZERS: dict[str, Callable[..., keras.optimizers.Optimizer]] = {
    "adam": _adam,
    "adamw": _adamw,
    "sgd": _sgd,
}


def _cosine(learning_rate: float, total_steps: int):
    return keras.optimizers.schedules.CosineDecay(learning_rate, decay_steps=max(1, total_steps))


LR_SCHEDULES: dict[str, Callable[[float, int], object]] = {
    "constant": lambda learning_rate, total_steps: learning_rate,
    "cosine": _cosine,  # decays to 0 by the phase's last step
}


def _lookup(table: dict, name: str, flag: str):
    try:
        return table[name]
    except KeyError:
        raise UserError(f"Unknown --{flag}={name!r}; valid: {', '.join(sorted(table))}") from None


def check_names(optimizer: str, schedule: str) -> None:
    """Raises UserError for an unknown --optimizer or --lr_schedule."""
    _lookup(OPTIMIZERS, optimizer, "optimizer")
    _lookup(LR_SCHEDULES, schedule, "lr_schedule")


def build(
    name: str,
    learning_rate: float,
    total_steps: int,
    schedule: str = "cosine",
    weight_decay: float = 0.0,
    ema_momentum: float = 0.0,
) -> keras.optimizers.Optimizer:
    """An optimizer for one phase of total_steps steps.

    Args:
      name: key of OPTIMIZERS.
      learning_rate: the phase's peak learning rate.
      total_steps: steps in the phase (the schedule's length).
      schedule: key of LR_SCHEDULES.
      weight_decay: decoupled weight decay (adamw, sgd); 0 for none.
      ema_momentum: > 0 keeps an exponential moving average of the weights.
    """
    rate = _lookup(LR_SCHEDULES, schedule, "lr_schedule")(learning_rate, total_steps)
    ema = {"use_ema": ema_momentum > 0, "ema_momentum": ema_momentum or 0.99}
    return _lookup(OPTIMIZERS, name, "optimizer")(rate, weight_decay, **ema)
