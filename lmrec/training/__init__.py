"""Two-phase transfer learning as a library: what lmrec.train, lmrec.lr_find and
lmrec.compare run.

  setup.py   checks of the settings and the model_dir; the model under its strategy
             and precision policy
  data.py    the prepared data (prepared on demand), its datasets and class counts
  phases.py  the phases: what trains, a fresh optimizer, the feature cache, the
             callbacks, and a resumable fit of each
  run.py     train_and_evaluate: the whole run, its TrainResult and summary

    from lmrec import training
    result = training.train_and_evaluate(config, model_dir)
"""

from lmrec.training.data import (
    RunData,
    datasets,
    ensure_data,
    resolve_data,
    run_data,
    train_class_counts,
)
from lmrec.training.phases import (
    Phase,
    RunCallbacks,
    TrainingRun,
    fit_phase,
    fit_verbosity,
    frozen_feature_cache,
    phase_plan,
    prepare_phase,
    run_callbacks,
    train_phase,
    train_phases,
)
from lmrec.training.run import (
    TrainResult,
    describe_run,
    evaluate_and_export,
    summary,
    train_and_evaluate,
)
from lmrec.training.setup import build_model, require_model_dir, validate, writable_model_dir

__all__ = [
    "Phase",
    "RunCallbacks",
    "RunData",
    "TrainResult",
    "TrainingRun",
    "build_model",
    "datasets",
    "describe_run",
    "ensure_data",
    "evaluate_and_export",
    "fit_phase",
    "fit_verbosity",
    "frozen_feature_cache",
    "phase_plan",
    "prepare_phase",
    "require_model_dir",
    "resolve_data",
    "run_callbacks",
    "run_data",
    "summary",
    "train_and_evaluate",
    "train_class_counts",
    "train_phase",
    "train_phases",
    "validate",
    "writable_model_dir",
]
