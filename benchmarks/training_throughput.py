"""Training throughput: lmrec.train's steps/s against a plain model.fit, and a frozen step
against a forward pass, per backbone, in one run.

    python benchmarks/training_throughput.py
        [--backbones=baseline,efficientnet_lite0,resnet50,xception,inceptionv3]
        [--image_size=96] [--batch_size=16] [--steps=50] [--epochs=3] [--rounds=1]
        [--without=ResumeCheckpoint,...]

A quick check: --backbones=baseline --epochs=2. The default run (50 steps per epoch)
took 23 minutes on a 2-core CPU shared with other jobs (load average 1.2-1.7), most of
it not timed: each run builds its model and traces the train function of both phases,
which the uncounted first epochs absorb. --rounds=3 repeats everything for medians
(three times as long). --without=ResumeCheckpoint (or other lmrec callbacks' class
names) leaves those callbacks out of lmrec's fits: an ablation that shows what they
cost, recorded in the JSON's settings; lmrec.train itself always installs them.
Without ResumeCheckpoint, which also keeps the run's epoch count, phase 2 starts at
epoch 0 again, so the sample drawing every 5 epochs falls on other epochs: compare
phase 1 only.

Prepares a small demo dataset (--source=demo: 8 classes of drawn landmarks) in a
temporary folder, then for each backbone (weights=none: random initialization, no
download), on the same cores, each run in a fresh process (benchmarks/fresh_process.py),
measures:

  lmrec   lmrec.train.train_and_evaluate itself on configs/baseline_demo.cfg (evaluation and
          export off; --steps_per_epoch=--steps, --epochs epochs per phase), with
          everything it does per epoch: its input pipeline, the history writer,
          TensorBoard, the atomic best/last checkpoints, the resume checkpoint, the
          sample predictions, and the validation pass.
  plain   the same model (lmrec.models.classifier.build_classifier), frozen and
          compiled by lmrec's own lmrec.training.prepare_phase (so the same freezing,
          optimizer, schedule, loss and metrics), on the same tf.data datasets
          (lmrec.training.datasets), trained by a bare model.fit(steps_per_epoch=...)
          with no callbacks, validation included as in lmrec.
  forward the plain model right after its frozen phase, in inference mode
          (model.predict_on_batch: Keras' compiled predict function) over batches of
          the same training dataset: batches/s.

Both fits validate every epoch on the same validation split; steps/s counts training
steps over the epoch's wall time minus its validation pass (the same work in both,
timed from on_test_begin to on_test_end), and the JSON also gives the rates with the
validation pass left in. The first epoch of each phase (tracing the train, test and
predict functions; filling the shuffle buffer) is not counted. To see both fits'
epochs, a clock callback with epoch hooks only (no batch hooks: it changes nothing a
step does) is put first in both callback lists; in
the lmrec run it is added by wrapping keras.Model.fit for the duration of the call, and
each of lmrec's callback hooks is timed too, so the JSON says which callback costs
what per epoch. Phase 1 trains on images in all three (--cache_frozen_features=off,
where lmrec has that flag: the feature cache is benchmarks/frozen_phase_cache.py's
subject).

Reports per backbone and phase lmrec and plain steps/s and their ratio (target: at
least TARGET_RATIO), and for phase 1 the frozen step time over the forward batch
time: near 1 when only the head trains (a frozen step is a forward pass plus the
head's backward pass); about 3 would mean the backbone's gradients are computed
although nothing uses them. Trainable parameter counts per phase are listed as a
sanity check. lmrec and the bare fit run one after the other for each backbone, lmrec
first for every other backbone and plain first for the rest (swapped in the next
round), so drifting load from other jobs on the machine does not favour one side;
with --rounds > 1 every rate is the median over rounds. The process's CPU time per
step, which such load disturbs less, is recorded beside the wall-clock rates, and so
is, for each lmrec callback, its hooks' seconds per epoch, and the lmrec run's
steps/s with those seconds taken out (the training loop alone). Prints two Markdown
tables (the rates; where lmrec's extra time goes) and writes
benchmarks/results/training_throughput_50steps_cpu2.json (name another setting's file with
--output, by setting and machine: training_throughput_160steps_cpu2.json).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

import fresh_process  # noqa: E402 - benchmarks/ is on sys.path when run as a script
import machine_info  # noqa: E402

RESULT = os.path.join(REPO, "benchmarks", "results", "training_throughput_50steps_cpu2.json")
# Steps per epoch. lmrec's per-phase work (the phase-end resume checkpoint of the whole
# model, the sample-prediction drawing) is a fixed cost that a bare fit does not pay, so
# the lmrec / plain ratio depends on the epoch length: short epochs show that cost,
# long ones hide it. 50 steps keeps a five-backbone round under half an hour on 2 CPU
# cores; real epochs are longer (GLDv2 subsets: thousands of steps). --steps=10 shows the
# fixed cost; the JSON's extra_seconds_per_epoch and steps_per_epoch_for_target give it
# at any length. Measured ratios per setting: benchmarks/README.md.
DEFAULT_STEPS = 50
DEFAULT_BACKBONES = "baseline,efficientnet_lite0,resnet50,xception,inceptionv3"
PHASES = ("frozen", "finetune")
TARGET_RATIO = 0.95
# The hooks whose time is charged to the callback that implements them.
HOOKS = (
    "on_train_begin",
    "on_train_end",
    "on_epoch_begin",
    "on_epoch_end",
    "on_train_batch_begin",
    "on_train_batch_end",
    "on_test_begin",
    "on_test_end",
    "on_test_batch_begin",
    "on_test_batch_end",
)


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)  # every thread of this process
    return usage.ru_utime + usage.ru_stime


def _clock_class():
    import keras

    class EpochClock(keras.callbacks.Callback):
        """Wall and CPU time of every epoch (to the next epoch's start, so every callback's
        epoch-end work is in it), its validation pass, and the callbacks' time per hook.

        Only epoch and test begin/end hooks: nothing per step. (Keras 3's TensorFlow
        backend calls batch ends synchronously in every fit, a bare one too: it
        declares itself not thread-safe, tensorflow/tensorflow#78338.)
        """

        def __init__(self):
            super().__init__()
            self.epochs: list[dict] = []  # finished epochs, in order
            self.outside: dict[str, float] = {}  # callback time outside epochs (fit start/end)
            self.fits = 0
            self._open: dict | None = None
            self._test_started = 0.0

        def charge(self, label: str, seconds: float) -> None:
            into = self._open["callbacks"] if self._open else self.outside
            into[label] = into.get(label, 0.0) + seconds

        def _close(self) -> None:
            if self._open is None:
                return
            row = self._open
            row["seconds"] = time.perf_counter() - row.pop("started")
            row["cpu_seconds"] = _cpu_seconds() - row.pop("cpu_started")
            self.epochs.append(row)
            self._open = None

        def on_train_begin(self, logs=None):
            self.fits += 1

        def on_epoch_begin(self, epoch, logs=None):
            self._close()
            self._open = {
                "fit": self.fits,
                "epoch": epoch,
                "started": time.perf_counter(),
                "cpu_started": _cpu_seconds(),
                "val_seconds": 0.0,
                "callbacks": {},
            }

        def on_test_begin(self, logs=None):
            self._test_started = time.perf_counter()

        def on_test_end(self, logs=None):
            if self._open is not None:
                self._open["val_seconds"] += time.perf_counter() - self._test_started

        def on_train_end(self, logs=None):
            self._close()  # first in the list: after every callback's last on_epoch_end

    return EpochClock


def _time_hooks(callback, clock) -> None:
    """Charges each hook the callback implements (not Keras' empty default) to the clock.

    Default hooks stay untouched, so what Keras sees overridden (it decides batch-end
    dispatch by that on backends that allow asynchronous dispatch) is as without timing.
    """
    from keras.src import utils

    if getattr(callback, "_throughput_timed", False):
        return  # lmrec reuses its callbacks across a run's fits
    label = type(callback).__name__
    for name in HOOKS:
        method = getattr(callback, name)
        if utils.is_default(method):
            continue

        def timed(*args, _method=method, **kwargs):
            started = time.perf_counter()
            try:
                return _method(*args, **kwargs)
            finally:
                clock.charge(label, time.perf_counter() - started)

        setattr(callback, name, timed)
    callback._throughput_timed = True


@contextlib.contextmanager
def clocked_fits(clock, without: frozenset[str] = frozenset()):
    """Within the block every keras.Model.fit gets the clock first in its callbacks, and
    none of the callbacks whose class names are in `without` (--without: an ablation)."""
    import keras

    had_own = "fit" in vars(keras.Model)
    original = keras.Model.fit

    def fit(self, *args, callbacks=None, **kwargs):
        kept = [c for c in callbacks or [] if type(c).__name__ not in without]
        for callback in kept:
            _time_hooks(callback, clock)
        return original(self, *args, callbacks=[clock, *kept], **kwargs)

    keras.Model.fit = fit
    try:
        yield
    finally:
        if had_own:
            keras.Model.fit = original
        else:
            del keras.Model.fit


def prepare_demo(directory: str, images_per_class: int, image_side: int) -> str:
    from lmrec.config import PrepareConfig
    from lmrec.data import prepare

    result = prepare.prepare(
        PrepareConfig.build(
            source="demo",
            output_dir=directory,
            name="demo",
            demo_images_per_class=images_per_class,
            demo_image_size=image_side,
            images_per_shard=200,
        ),
        verbose=False,
    )
    return result.data_dir


def experiment(backbone: str, data_dir: str, args):
    """configs/baseline_demo.cfg for this backbone, shrunk to the benchmark's steps and epochs."""
    from lmrec import config
    from lmrec.models import backbones

    overrides = [
        f"--data_dir={data_dir}",
        "--prepare_if_missing=false",
        f"--backbone={backbone}",
        "--weights=none",
        f"--image_size={args.image_size}",
        f"--batch_size={args.batch_size}",
        f"--steps_per_epoch={args.steps}",
        f"--epochs_frozen={args.epochs}",
        f"--epochs_finetune={args.epochs}",
        "--evaluate_after=false",
        "--export_after=false",
        f"--seed={args.seed}",
    ]
    if "cache_frozen_features" in {f.name for f in dataclasses.fields(config.TrainConfig)}:
        overrides.append("--cache_frozen_features=off")
    result = config.experiment_from_flagfile(
        os.path.join(REPO, "configs", "baseline_demo.cfg"), *overrides
    )
    size = backbones.resolve_image_size(backbone, result.data.image_size)
    return result.replace(data={"image_size": size})


def _epoch_rows(clock, steps: int) -> tuple[dict[str, list[dict]], dict[str, float]]:
    """The clock's epochs per phase (fit 1: frozen, fit 2: finetune), first epoch dropped,
    and each phase's first epoch's seconds (tracing included)."""
    rows: dict[str, list[dict]] = {}
    first: dict[str, float] = {}
    for phase, fit in zip(PHASES, (1, 2), strict=True):
        epochs = [e for e in clock.epochs if e["fit"] == fit]
        if len(epochs) < 2:
            raise RuntimeError(f"phase {phase} ran {len(epochs)} epoch(s); need >= 2 to time")
        rows[phase] = [dict(e, steps=steps) for e in epochs[1:]]
        first[phase] = epochs[0]["seconds"]
    return rows, first


def run_lmrec(config, runs_dir: str, index: int, without: frozenset[str] = frozenset()) -> dict:
    """train_and_evaluate as lmrec.train runs it (less the callbacks named in `without`);
    returns timed epochs and parameter counts."""
    from lmrec import training

    clock = _clock_class()()
    model_dir = os.path.join(runs_dir, f"lmrec-{index}")
    with clocked_fits(clock, without):
        result = training.train_and_evaluate(config, model_dir=model_dir, verbose=False)
    shutil.rmtree(model_dir, ignore_errors=True)
    epochs, first = _epoch_rows(clock, config.train.steps_per_epoch)
    return {
        "epochs": epochs,
        "first_epoch_seconds": first,
        "outside_epochs": clock.outside,
        "trainable": {p: result.parameters[p]["trainable"] for p in PHASES},
        "total_parameters": result.parameters["frozen"]["total"],
        "feature_cache": getattr(result, "feature_cache", {}),
    }


def measure_forward(model, dataset, batches: int) -> float:
    """Batches/s of model.predict_on_batch over the training dataset's images, after warm-up."""
    iterator = iter(dataset)
    for _ in range(3):  # traces the predict function, fills the shuffle buffer
        model.predict_on_batch(next(iterator)[0])
    started = time.perf_counter()
    for _ in range(batches):
        model.predict_on_batch(next(iterator)[0])
    return batches / (time.perf_counter() - started)


def run_plain(config, forward_batches: int) -> dict:
    """A bare model.fit of the same model, compile and data; forward rate after phase 1."""
    import keras

    from lmrec import distribute, training
    from lmrec.data import prepare, records
    from lmrec.models import classifier, freezing

    data_dir = config.data.data_dir
    labels = records.read_labels(data_dir)
    stats = prepare.read_stats(data_dir)
    num_classes = len(labels)
    strategy = distribute.get_strategy(config.train.strategy)
    train_data, val_data, steps = training.datasets(config, stats, num_classes)
    keras.utils.set_random_seed(config.data.seed)
    with strategy.scope():
        model = classifier.build_classifier(config.model, num_classes, config.data.image_size)
    clock = _clock_class()()
    trainable = {}
    forward = None
    epoch = 0
    for phase, epochs, learning_rate in (
        ("frozen", config.train.epochs_frozen, config.train.lr_frozen),
        ("finetune", config.train.epochs_finetune, config.train.lr_finetune),
    ):
        with strategy.scope():
            training.prepare_phase(model, phase, learning_rate, epochs, steps, config)
        trainable[phase] = freezing.count_parameters(model).trainable
        model.fit(
            train_data,
            validation_data=val_data,
            initial_epoch=epoch,
            epochs=epoch + epochs,
            steps_per_epoch=steps,
            callbacks=[clock],
            shuffle=False,
            verbose=0,
        )
        epoch += epochs
        if phase == "frozen":
            forward = measure_forward(model, train_data, forward_batches)
    epochs, first = _epoch_rows(clock, steps)
    return {
        "epochs": epochs,
        "first_epoch_seconds": first,
        "trainable": trainable,
        "forward_batches_per_second": forward,
    }


def _rate(epochs: list[dict], with_validation: bool) -> float:
    steps = sum(e["steps"] for e in epochs)
    seconds = sum(e["seconds"] - (0.0 if with_validation else e["val_seconds"]) for e in epochs)
    return steps / seconds


def _cpu_ms_per_step(epochs: list[dict]) -> float:
    return 1000 * sum(e["cpu_seconds"] for e in epochs) / sum(e["steps"] for e in epochs)


def summarize(backbone: str, runs: list[dict], config) -> dict:
    """Medians over rounds of one backbone's lmrec and plain runs."""
    out: dict = {
        "backbone": backbone,
        "image_size": config.data.image_size,
        "rounds": len(runs),
        "total_parameters": runs[0]["lmrec"]["total_parameters"],
        "phases": {},
    }
    forward = [r["plain"]["forward_batches_per_second"] for r in runs]
    out["forward_batches_per_second"] = round(statistics.median(forward), 3)
    out["forward_batches_per_second_each"] = [round(f, 3) for f in forward]
    for phase in PHASES:
        entry: dict = {}
        for variant in ("lmrec", "plain"):
            rows = [r[variant]["epochs"][phase] for r in runs]
            entry[variant] = {
                "steps_per_second": round(statistics.median(_rate(e, False) for e in rows), 3),
                "steps_per_second_each": [round(_rate(e, False), 3) for e in rows],
                "steps_per_second_with_validation": round(
                    statistics.median(_rate(e, True) for e in rows), 3
                ),
                "cpu_ms_per_step": round(statistics.median(_cpu_ms_per_step(e) for e in rows), 1),
                "epoch_seconds_each": [[round(x["seconds"], 3) for x in e] for e in rows],
                "validation_seconds_each": [[round(x["val_seconds"], 3) for x in e] for e in rows],
                "trainable_parameters": runs[0][variant]["trainable"][phase],
                "first_epoch_seconds": round(
                    statistics.median(r[variant]["first_epoch_seconds"][phase] for r in runs), 1
                ),
            }
        lm, pl = entry["lmrec"], entry["plain"]
        per_round = [
            _rate(r["lmrec"]["epochs"][phase], False) / _rate(r["plain"]["epochs"][phase], False)
            for r in runs
        ]
        entry["ratio"] = round(lm["steps_per_second"] / pl["steps_per_second"], 3)
        entry["ratio_each_round"] = [round(x, 3) for x in per_round]
        entry["ratio_with_validation"] = round(
            lm["steps_per_second_with_validation"] / pl["steps_per_second_with_validation"], 3
        )
        # Process CPU time per step (validation included), plain over lmrec: like `ratio`.
        entry["cpu_ratio"] = round(pl["cpu_ms_per_step"] / lm["cpu_ms_per_step"], 3)
        entry["meets_target"] = entry["ratio"] >= TARGET_RATIO
        # Seconds per epoch lmrec spends beyond the bare fit (validation excluded), and the
        # epoch length at which that fixed cost would leave the ratio at the target.
        extra = config.train.steps_per_epoch * (
            1 / lm["steps_per_second"] - 1 / pl["steps_per_second"]
        )
        entry["extra_seconds_per_epoch"] = round(extra, 3)
        entry["steps_per_epoch_for_target"] = max(
            0, round(extra * pl["steps_per_second"] * TARGET_RATIO / (1 - TARGET_RATIO))
        )
        # The lmrec run's training loop alone: its epochs less validation and every
        # callback hook's time. Near plain: lmrec's cost is in its hooks; lower: per step.
        entry["lmrec"]["steps_per_second_without_hooks"] = round(
            statistics.median(
                sum(e["steps"] for e in rows)
                / sum(e["seconds"] - e["val_seconds"] - sum(e["callbacks"].values()) for e in rows)
                for rows in (r["lmrec"]["epochs"][phase] for r in runs)
            ),
            3,
        )
        callbacks: dict[str, list[float]] = {}
        for r in runs:
            rows = r["lmrec"]["epochs"][phase]
            for name in {n for e in rows for n in e["callbacks"]}:
                per_epoch = sum(e["callbacks"].get(name, 0.0) for e in rows) / len(rows)
                callbacks.setdefault(name, []).append(per_epoch)
        entry["lmrec_callback_seconds_per_epoch"] = {
            name: round(statistics.median(values), 4) for name, values in sorted(callbacks.items())
        }
        entry["step_over_forward"] = round(
            out["forward_batches_per_second"] / pl["steps_per_second"], 2
        )
        out["phases"][phase] = entry
    out["lmrec_callback_seconds_outside_epochs"] = {
        name: round(statistics.median(r["lmrec"]["outside_epochs"].get(name, 0.0) for r in runs), 3)
        for name in sorted({n for r in runs for n in r["lmrec"]["outside_epochs"]})
    }
    out["feature_cache"] = runs[0]["lmrec"]["feature_cache"]
    out["run_seconds"] = {
        variant: round(statistics.median(r[variant]["run_seconds"] for r in runs), 1)
        for variant in ("lmrec", "plain")
    }
    return out


def code_version() -> dict:
    """The commit measured, and whether lmrec/ had uncommitted changes (it was measured as is)."""

    def git(*command):
        try:
            return subprocess.run(
                ["git", *command], cwd=REPO, capture_output=True, text=True, check=True
            ).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return ""

    return {
        "commit": git("rev-parse", "HEAD"),
        "lmrec_uncommitted_changes": bool(git("status", "--porcelain", "--", "lmrec")),
    }


# The lmrec callbacks in the second table, in the order lmrec.train installs them.
CALLBACKS = ("HistoryWriter", "AtomicCheckpoint", "EpochTensorBoard", "SamplePredictions")
# Every callback lmrec.train may install (the last two by flag), which --without may name.
LMREC_CALLBACKS = (*CALLBACKS, "ResumeCheckpoint", "ResumableEarlyStopping", "SwapEMAWeights")


def table(result: dict) -> str:
    s = result["settings"]
    rounds = "one round" if s["rounds"] == 1 else f"medians of {s['rounds']} rounds"
    lines = [
        f"{s['image_size']} px, batch {s['batch_size']}, {s['steps']} steps x {s['epochs']} "
        f"epochs per phase (the first not counted), weights=none, "
        f"{result['machine']['cpus_usable']} CPU cores, {rounds}; steps/s leave out the "
        "validation pass (run in both)"
        + (
            f"; ablation: lmrec without {', '.join(s['lmrec_without_callbacks'])}"
            if s.get("lmrec_without_callbacks")
            else ""
        ),
        "",
        "| backbone | phase | trainable params | lmrec steps/s | plain fit steps/s | "
        f"lmrec / plain (target {TARGET_RATIO}) | lmrec extra s/epoch | step / forward |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in result["backbones"]:
        for phase in PHASES:
            p = row["phases"][phase]
            trainable = p["lmrec"]["trainable_parameters"]
            if trainable != p["plain"]["trainable_parameters"]:
                trainable = f"{trainable:,} (plain {p['plain']['trainable_parameters']:,})"
            else:
                trainable = f"{trainable:,} of {row['total_parameters']:,}"
            ratio = f"{p['ratio']:.2f}" if p["meets_target"] else f"**{p['ratio']:.2f}**"
            lines.append(
                f"| {row['backbone']} | {phase} | {trainable} | "
                f"{p['lmrec']['steps_per_second']:.2f} | {p['plain']['steps_per_second']:.2f} | "
                f"{ratio} | {p['extra_seconds_per_epoch']:.2f} | {p['step_over_forward']:.2f} |"
            )
    lines += [
        "",
        "step / forward: the bare fit's step time over a forward pass of a batch "
        "(predict_on_batch; ~1 when only the head gets gradients). Forward batches/s: "
        + ", ".join(
            f"{row['backbone']} {row['forward_batches_per_second']:.2f}"
            for row in result["backbones"]
        )
        + ".",
        "",
        "Where lmrec's extra time goes: its callbacks' seconds per epoch, and its training "
        "loop's steps/s with them taken out",
        "",
        "| backbone | phase | " + " | ".join(CALLBACKS) + " | ResumeCheckpoint | "
        "lmrec loop alone steps/s | plain fit steps/s | epoch length for 0.95 (approx.) |",
        "|---|---|" + "---:|" * (len(CALLBACKS) + 4),
    ]
    for row in result["backbones"]:
        for phase in PHASES:
            p = row["phases"][phase]
            cost = p["lmrec_callback_seconds_per_epoch"]
            cells = [f"{cost.get(name, 0.0):.2f}" for name in (*CALLBACKS, "ResumeCheckpoint")]
            lines.append(
                f"| {row['backbone']} | {phase} | " + " | ".join(cells) + " | "
                f"{p['lmrec']['steps_per_second_without_hooks']:.2f} | "
                f"{p['plain']['steps_per_second']:.2f} | "
                f"{p['steps_per_epoch_for_target']} steps |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backbones", default=DEFAULT_BACKBONES)
    parser.add_argument("--image_size", type=int, default=96)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument(
        "--steps", type=int, default=DEFAULT_STEPS, help="steps per epoch (see DEFAULT_STEPS)"
    )
    parser.add_argument(
        "--epochs", type=int, default=3, help="epochs per phase; the first is not counted"
    )
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--demo_images_per_class", type=int, default=30)
    parser.add_argument("--demo_image_size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument(
        "--without",
        default="",
        help="an ablation: lmrec callbacks (class names, comma-separated, e.g. "
        "ResumeCheckpoint) left out of the lmrec run's fits, to see what they cost",
    )
    parser.add_argument("--output", default=RESULT)
    args = parser.parse_args(argv)
    without = frozenset(n.strip() for n in args.without.split(",") if n.strip())
    unknown = without - set(LMREC_CALLBACKS)
    if unknown:
        parser.error(
            f"--without: not a callback lmrec.train installs: {', '.join(sorted(unknown))}"
        )
    if args.epochs < 2:
        parser.error("--epochs must be >= 2: the first epoch of each phase is not counted")
    os.chdir(REPO)  # configs/baseline_demo.cfg includes configs/common.cfg by a relative path
    import tensorflow as tf  # noqa: F401 - before the clock: TensorFlow's start is not timed

    names = [b.strip() for b in args.backbones.split(",") if b.strip()]
    info = machine_info.machine()
    started = time.time()
    tmp = tempfile.mkdtemp(prefix="lmrec-throughput-")
    try:
        data_dir = prepare_demo(tmp, args.demo_images_per_class, args.demo_image_size)
        configs = {name: experiment(name, data_dir, args) for name in names}
        print(
            f"Demo data in {data_dir}; {len(names)} backbone(s), {args.rounds} round(s), "
            f"{info['cpus_usable']} usable CPU cores.",
            file=sys.stderr,
        )
        runs: dict[str, list[dict]] = {name: [] for name in names}
        for round_index in range(args.rounds):
            for index, name in enumerate(names):
                config = configs[name]
                lmrec_first = (round_index + index) % 2 == 0
                order = ("lmrec", "plain") if lmrec_first else ("plain", "lmrec")
                measured = {}
                for variant in order:
                    t0 = time.time()
                    if variant == "lmrec":
                        measured["lmrec"] = fresh_process.run(
                            run_lmrec, config, tmp, round_index, without
                        )
                    else:
                        measured["plain"] = fresh_process.run(
                            run_plain, config, args.steps * (args.epochs - 1)
                        )
                    measured[variant]["run_seconds"] = time.time() - t0
                    rates = {
                        phase: _rate(measured[variant]["epochs"][phase], False) for phase in PHASES
                    }
                    print(
                        f"round {round_index + 1}: {name:18s} {variant:5s} "
                        f"frozen {rates['frozen']:6.2f} steps/s, "
                        f"finetune {rates['finetune']:6.2f} steps/s"
                        + (
                            f", forward {measured['plain']['forward_batches_per_second']:6.2f}"
                            " batches/s"
                            if variant == "plain"
                            else ""
                        )
                        + f" ({time.time() - t0:.0f} s)",
                        file=sys.stderr,
                    )
                runs[name].append(measured)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    info["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    result = {
        "benchmark": "training_throughput",
        "date": datetime.date.today().isoformat(),
        "machine": info,
        "code": code_version(),
        "settings": {
            "backbones": names,
            "weights": "none",
            "image_size": args.image_size,
            "batch_size": args.batch_size,
            "steps": args.steps,
            "epochs": args.epochs,
            "rounds": args.rounds,
            "data": f"demo source, {args.demo_images_per_class} images per class at "
            f"{args.demo_image_size} px, val_fraction from configs/common.cfg",
            "config": "configs/baseline_demo.cfg with the overrides above, evaluate/export off, "
            "cache_frozen_features=off",
            "lmrec_without_callbacks": sorted(without),
            "validation": "both fits validate every epoch; steps_per_second excludes the "
            "validation pass, steps_per_second_with_validation includes it",
        },
        "target_ratio": TARGET_RATIO,
        "seconds": round(time.time() - started, 1),
        "backbones": [summarize(name, runs[name], configs[name]) for name in names],
    }
    result["markdown"] = table(result)
    from lmrec import atomic

    atomic.write_json(args.output, result)
    print(result["markdown"])
    print(f"\nWrote {args.output} ({result['seconds']:.0f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
