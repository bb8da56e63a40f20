"""The learning-rate range test (Smith 2015): loss against an exponentially rising rate.

    python -m lmrec.lr_find --flagfile=configs/demo.cfg [--lr_find_phase=frozen|finetune]
        [--lr_find_min=1e-7 --lr_find_max=1 --lr_find_steps=100]

Builds the classifier and the training pipeline exactly as lmrec.train does,
then trains one phase for --lr_find_steps steps, each at a rate a constant
factor above the last, from --lr_find_min to --lr_find_max, and records the
training loss. It stops early once the smoothed loss exceeds 4x its best (the
rate is too high from there on). The suggestion is the rate where the smoothed
loss falls fastest; the rate of the lowest loss, divided by 10, is the other
common rule and is reported too. --lr_find_phase=finetune first trains phase 1
as lmrec.train would (--epochs_frozen=0 skips it), because phase 2 starts from
a trained head. Writes lr_find.png and lr_find.json into --lr_find_dir
(default --model_dir) and prints the flag to use, e.g. --lr_finetune=0.0003.
The model is thrown away: nothing of it is saved.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import keras
import numpy as np
from absl import flags

from lmrec import atomic, cli, console, distribute, plots, run_lock, training
from lmrec import config as config_lib
from lmrec.config import ExperimentConfig, LrFindConfig
from lmrec.errors import UserError
from lmrec.registry import Registry

PNG_FILE = "lr_find.png"
JSON_FILE = "lr_find.json"
SMOOTHING = 0.98  # the exponential moving average of the loss, as in fastai's finder
DIVERGENCE = 4.0  # stop once the smoothed loss exceeds this many times its best
# --lr_find_phase: the phase tested -> the flag whose rate it suggests.
PHASES = Registry(
    "lr_find phase", {"frozen": "lr_frozen", "finetune": "lr_finetune"}, flag="lr_find_phase"
)


@dataclass
class LrFindResult:
    """What the range test tried, saw and suggests."""

    phase: str
    learning_rates: list[float]
    losses: list[float]
    smoothed_losses: list[float]
    suggestion: float
    min_loss_rate: float
    stopped_early: bool
    png: str
    json: str

    @property
    def flag(self) -> str:
        """The suggestion as the flag to pass to lmrec.train, e.g. --lr_finetune=0.0003."""
        return f"--{PHASES.get(self.phase)}={self.suggestion:.2g}"


def check(settings: LrFindConfig) -> None:
    """Raises UserError naming the first bad --lr_find_* flag."""
    PHASES.get(settings.lr_find_phase)
    if settings.lr_find_min <= 0:
        raise UserError(f"--lr_find_min must be > 0, got {settings.lr_find_min}")
    if settings.lr_find_max <= settings.lr_find_min:
        raise UserError(
            f"--lr_find_max={settings.lr_find_max} must be above "
            f"--lr_find_min={settings.lr_find_min}"
        )
    if settings.lr_find_steps < 2:
        raise UserError(f"--lr_find_steps must be >= 2, got {settings.lr_find_steps}")


def learning_rates(settings: LrFindConfig) -> np.ndarray:
    """The rates tried: --lr_find_steps of them, geometric from --lr_find_min to --lr_find_max."""
    return np.geomspace(settings.lr_find_min, settings.lr_find_max, settings.lr_find_steps)


def suggest(rates, smoothed) -> float:
    """The rate where the smoothed loss falls fastest, before its minimum (beyond it, divergence).

    The fall at step i is smoothed[i + w] - smoothed[i - w] with w a twentieth of the
    steps: the rates are geometric, so that is the slope against log rate over a
    tenth of the range, steadier than neighbouring steps. The first tenth of the
    steps is skipped, as in fastai: the average there rests on a few losses. If the
    loss never fell, the first rate.
    """
    rates = np.asarray(rates, dtype=float)
    smoothed = np.asarray(smoothed, dtype=float)
    finite = np.isfinite(smoothed)
    count = len(smoothed) if finite.all() else int(np.argmin(finite))
    if count < 2:
        return float(rates[0])
    lowest = int(np.argmin(smoothed[:count]))
    half = max(1, count // 20)
    first = max(half, count // 10)
    if lowest - half < first:  # a descent too short for the window: neighbouring steps
        half = first = 1
    steps = np.arange(first, lowest - half + 1)
    if len(steps) == 0:
        return float(rates[0])
    falls = smoothed[steps + half] - smoothed[steps - half]
    return float(rates[steps[int(np.argmin(falls))]])


class _RangeTest(keras.callbacks.Callback):
    """Sets each step's rate and records its loss; fit runs one step per epoch.

    One step per epoch makes logs["loss"] that step's loss (within an epoch Keras
    reports a running mean). The rate recorded is read back from the optimizer.
    """

    def __init__(self, rates: np.ndarray):
        super().__init__()
        self.rates = rates
        self.learning_rates: list[float] = []
        self.losses: list[float] = []
        self.smoothed: list[float] = []
        self._average = 0.0
        self._best = math.inf

    def on_epoch_begin(self, epoch, logs=None):
        self.model.optimizer.learning_rate = float(self.rates[epoch])

    def on_epoch_end(self, epoch, logs=None):
        loss = float((logs or {}).get("loss", math.nan))
        rate = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        # Bias-corrected exponential moving average (starts at 0, so divide the start's bias out).
        self._average = SMOOTHING * self._average + (1 - SMOOTHING) * loss
        smoothed = self._average / (1 - SMOOTHING ** (epoch + 1))
        self.learning_rates.append(rate)
        self.losses.append(loss)
        self.smoothed.append(smoothed)
        self._best = min(self._best, smoothed)
        if (epoch + 1) % 10 == 0:
            console.say(
                f"  step {epoch + 1}/{len(self.rates)}: rate {rate:.2g}, smoothed loss "
                f"{smoothed:.4g}"
            )
        if not math.isfinite(smoothed) or smoothed > DIVERGENCE * self._best:
            self.model.stop_training = True


def lr_find(config: ExperimentConfig, settings: LrFindConfig, verbose: bool = True) -> LrFindResult:
    """Runs the range test for one phase and writes lr_find.png and lr_find.json.

    Args:
      config: the experiment whose rate is wanted (data, model, optimizer, batch size...).
      settings: the phase and the range of rates.
      verbose: progress and the suggestion on stderr; False is lmrec.console's quiet
        mode for this call.

    Returns:
      The rates and losses recorded and the suggestion.

    Raises:
      UserError: a bad flag, no output folder, or no prepared data.
    """
    check(settings)
    training.validate(config)
    out_dir = settings.lr_find_dir or config.train.model_dir
    if not out_dir:
        raise UserError("--lr_find_dir or --model_dir is required (where lr_find.png goes)")
    what = "lr_find_dir" if settings.lr_find_dir else "model_dir"
    with console.quiet(console.is_quiet() or not verbose):
        with run_lock.folder(out_dir, what, "--lr_find_dir", not console.is_quiet()):
            return _range_test(config, settings, out_dir)


def _range_test(config: ExperimentConfig, settings: LrFindConfig, out_dir: str) -> LrFindResult:
    """lr_find()'s work, done while holding out_dir's lock."""
    config, labels, stats = training.resolve_data(config)
    num_classes = len(labels)
    train_data, _, steps_per_epoch = training.datasets(config, stats, num_classes)

    strategy = distribute.get_strategy(config.train.strategy)
    model, _ = training.build_model(config, num_classes, strategy, config.data.seed)
    phase, epochs_frozen = settings.lr_find_phase, config.train.epochs_frozen
    if phase == "finetune" and epochs_frozen > 0:
        console.say(f"Phase 1 first ({epochs_frozen} epoch(s)), as lmrec.train.")
        with strategy.scope():
            training.prepare_phase(
                model, "frozen", config.train.lr_frozen, epochs_frozen, steps_per_epoch, config
            )
        model.fit(
            train_data,
            epochs=epochs_frozen,
            steps_per_epoch=steps_per_epoch,
            shuffle=False,
            verbose=training.fit_verbosity(),
        )

    rates = learning_rates(settings)
    # A constant rate that the callback overwrites each step; no EMA (its weights would lag).
    test_config = config.replace(
        train={"lr_schedule": "constant", "warmup_epochs": 0.0, "ema_momentum": 0.0}
    )
    with strategy.scope():
        training.prepare_phase(model, phase, float(rates[0]), 1, len(rates), test_config)
    console.say(
        f"Range test of the {phase} phase: {len(rates)} steps, rate "
        f"{rates[0]:.2g} to {rates[-1]:.2g}."
    )
    test = _RangeTest(rates)
    model.fit(
        train_data,
        epochs=len(rates),
        steps_per_epoch=1,
        callbacks=[test],
        shuffle=False,
        verbose=0,
    )

    suggestion = suggest(test.learning_rates, test.smoothed)
    finite = [v if math.isfinite(v) else math.inf for v in test.smoothed]
    min_loss_rate = test.learning_rates[int(np.argmin(finite))]
    result = LrFindResult(
        phase=phase,
        learning_rates=test.learning_rates,
        losses=test.losses,
        smoothed_losses=test.smoothed,
        suggestion=suggestion,
        min_loss_rate=min_loss_rate,
        stopped_early=len(test.learning_rates) < len(rates),
        png=os.path.join(out_dir, PNG_FILE),
        json=os.path.join(out_dir, JSON_FILE),
    )
    _write(result, config, settings)
    console.say(_summary(result, settings))
    return result


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _write(result: LrFindResult, config: ExperimentConfig, settings: LrFindConfig) -> None:
    atomic.write_json(
        result.json,
        {
            "phase": result.phase,
            "flag": result.flag,
            "suggestion": result.suggestion,
            "method": "steepest fall of the smoothed loss against log rate, before its minimum",
            "min_loss_rate": result.min_loss_rate,
            "min_loss_rate_over_10": result.min_loss_rate / 10,
            "stopped_early": result.stopped_early,
            "settings": {
                "lr_find_min": settings.lr_find_min,
                "lr_find_max": settings.lr_find_max,
                "lr_find_steps": settings.lr_find_steps,
                "optimizer": config.train.optimizer,
                "batch_size": config.data.batch_size,
                "smoothing": SMOOTHING,
                "divergence": DIVERGENCE,
            },
            "learning_rates": result.learning_rates,
            # A diverged step's loss can be inf or nan, which JSON cannot hold.
            "losses": [_finite_or_none(v) for v in result.losses],
            "smoothed_losses": [_finite_or_none(v) for v in result.smoothed_losses],
        },
    )
    plots.lr_find_png(
        result.learning_rates,
        result.losses,
        result.smoothed_losses,
        result.suggestion,
        result.png,
        title=f"{config.model.backbone} + {config.model.head}, {config.train.optimizer}, "
        f"{result.phase} phase: {result.flag}",
    )


def _summary(result: LrFindResult, settings: LrFindConfig) -> str:
    steps = len(result.learning_rates)
    lines = [
        f"Tried {steps} of {settings.lr_find_steps} rates"
        + (" (stopped: the loss diverged)." if result.stopped_early else "."),
        f"Suggested: {result.flag}  (steepest fall of the smoothed loss; lowest loss at "
        f"{result.min_loss_rate:.2g}, /10 = {result.min_loss_rate / 10:.2g})",
        f"Plot: {result.png}  Data: {result.json}",
    ]
    if result.min_loss_rate == result.learning_rates[0]:
        lines.append("The loss did not fall from the first rate: try a lower --lr_find_min.")
    elif result.min_loss_rate == result.learning_rates[-1] and not result.stopped_early:
        lines.append("The loss was still falling at the last rate: try a higher --lr_find_max.")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    result = lr_find(
        config_lib.experiment_from_flags(flags.FLAGS),
        config_lib.from_flags(config_lib.LrFindConfig, flags.FLAGS),
    )
    print(result.flag)
    return 0


def run() -> None:
    cli.run_stage("lr_find", main, positional=False)


if __name__ == "__main__":
    run()
