"""A real model_dir in about a second: the tiny baseline classifier, untrained, saved as
lmrec.train saves one (flags.cfg, config.json, labels.json, checkpoints/best.weights.h5).

The embedding and gallery tests check mechanics (shapes, norms, files, resumes), for
which the weights must be real and fixed, not good.
"""

from __future__ import annotations

import os

import keras

from lmrec import run_files
from lmrec.data import records
from lmrec.models import classifier
from tests.conftest import tiny_run_config


def write_model_dir(model_dir: str, demo_records: str, seed: int = 0, **overrides) -> str:
    """Writes an untrained tiny_run_config model (32 px baseline) to model_dir."""
    experiment = tiny_run_config(
        os.path.dirname(model_dir), demo_records, model_dir=model_dir, **overrides
    )
    labels = records.read_labels(demo_records)
    keras.utils.set_random_seed(seed)
    model = classifier.build_classifier(
        experiment.model, len(labels), experiment.data.image_size, load_weights=False
    )
    run_files.write_run_files(model_dir, experiment, labels)
    os.makedirs(os.path.join(model_dir, "checkpoints"), exist_ok=True)
    run_files.save_variables(model, os.path.join(model_dir, run_files.BEST_WEIGHTS))
    return model_dir
