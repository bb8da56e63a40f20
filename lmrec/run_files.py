"""What a model_dir holds, and loading a trained model back from it.

A model_dir is self-describing: the resolved flags (flags.cfg, re-runnable),
the same as config.json, labels.json, checkpoints, history and logs. evaluate,
export and predict need nothing else.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import keras

from lmrec import atomic
from lmrec.config import ExperimentConfig, load_experiment
from lmrec.data import records
from lmrec.errors import UserError
from lmrec.models import backbones, classifier

FLAGS_FILE = "flags.cfg"
CONFIG_FILE = "config.json"
BEST_WEIGHTS = os.path.join("checkpoints", "best.weights.h5")
LAST_WEIGHTS = os.path.join("checkpoints", "last.weights.h5")
HISTORY_CSV = "history.csv"
CURVES_PNG = "training_curves.png"
LOGS_DIR = "logs"
REPORT_DIR = "report"


def save_variables(model, path: str) -> None:
    """model.save_weights without the optimizer's variables, which Keras 3 includes:
    what evaluation, export and a fresh optimizer need, a third of the size with Adam."""
    optimizer = getattr(model, "optimizer", None)
    keras.saving.save_weights(model, path, objects_to_skip=[optimizer] if optimizer else None)


def write_run_files(model_dir: str, config: ExperimentConfig, labels: list[dict]) -> None:
    """Writes flags.cfg, config.json and labels.json before training starts."""
    header = (
        "# Resolved flags of this run; re-run it with:\n"
        f"#   python -m lmrec.train --flagfile={os.path.join(model_dir, FLAGS_FILE)}\n"
    )
    atomic.write_text(os.path.join(model_dir, FLAGS_FILE), header + config.to_flagfile())
    atomic.write_text(os.path.join(model_dir, CONFIG_FILE), config.to_json() + "\n")
    atomic.write_json(os.path.join(model_dir, records.LABELS_FILE), labels)


@dataclass
class TrainedModel:
    """A model rebuilt from a model_dir, with what is needed to feed it."""

    model: object  # lmrec.models.classifier.Classifier
    config: ExperimentConfig
    labels: list[dict]
    image_size: int
    model_dir: str

    @property
    def class_names(self) -> list[str]:
        return records.label_names(self.labels)

    @property
    def preprocess(self):
        return backbones.get_spec(self.config.model.backbone).preprocess


def load(model_dir: str, weights_file: str = BEST_WEIGHTS) -> TrainedModel:
    """Rebuilds the classifier from config.json and loads its best weights.

    Raises:
      UserError: model_dir is not a finished lmrec training run.
    """
    if not model_dir:
        raise UserError("--model_dir is required")
    config_path = os.path.join(model_dir, CONFIG_FILE)
    if not os.path.isfile(config_path):
        raise UserError(f"{model_dir} is not an lmrec model_dir (no {CONFIG_FILE})")
    config = load_experiment(config_path)
    labels = records.read_labels(model_dir)
    weights_path = os.path.join(model_dir, weights_file)
    if not os.path.isfile(weights_path):
        raise UserError(
            f"{weights_path} is missing: has training in {model_dir} finished an epoch?"
        )
    # The checkpoint holds every weight, so the backbone's own weights are not fetched.
    model = classifier.build_classifier(
        config.model, len(labels), config.data.image_size, load_weights=False
    )
    model.load_weights(weights_path)
    return TrainedModel(
        model=model,
        config=config,
        labels=labels,
        image_size=config.data.image_size,
        model_dir=model_dir,
    )
