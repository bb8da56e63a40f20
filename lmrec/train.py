"""Two-phase transfer learning, then evaluation and export: the main job of lmrec.

    python -m lmrec.train --flagfile=configs/demo.cfg

Phase 1 trains the head on a frozen backbone; phase 2 unfreezes the backbone
(all of it, or from --unfreeze_from) and fine-tunes at a lower learning rate.
This module is the command; the work is in lmrec.training, whose
train_and_evaluate (and TrainResult, summary) notebooks and tests also reach
here as lmrec.train.train_and_evaluate(config, model_dir).
"""

from __future__ import annotations

from absl import flags

from lmrec import cli, config
from lmrec.training import TrainResult, summary, train_and_evaluate

__all__ = ["TrainResult", "summary", "train_and_evaluate"]


def main(argv: list[str]) -> int:
    train_and_evaluate(config.experiment_from_flags(flags.FLAGS))
    return 0


def run() -> None:
    cli.run_stage("train", main, positional=False)


if __name__ == "__main__":
    run()
