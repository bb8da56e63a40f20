"""The lmrec pipeline as plain function calls, cell by cell: what a Colab notebook runs.

    python scripts/quickstart.py [--epochs_finetune=4 ...]   (extra flags override configs/demo.cfg)

Each block below is one notebook cell; nothing here parses absl flags except
the one helper that reads a flagfile into a config.
"""

from __future__ import annotations

import sys

from lmrec import config, evaluate, predict, train
from lmrec.data.sources import demo


def main(overrides: list[str]) -> None:
    # Cell 1: the experiment, from the demo flagfile plus any overrides.
    experiment = config.experiment_from_flagfile("configs/demo.cfg", *overrides)

    # Cell 2: prepare (if missing), train both phases, evaluate, export.
    result = train.train_and_evaluate(experiment)

    # Cell 3: the evaluation report, as numbers.
    metrics = evaluate.evaluate(result.model_dir, verbose=False).metrics
    for name in ("accuracy", "top5_accuracy", "macro_f1", "gap"):
        print(f"{name:>14}: {metrics[name]:.3f}")
    for pair in metrics["most_confused"][:3]:
        print(f"  {pair['true']} taken for {pair['predicted']}: {pair['count']} times")

    # Cell 4: tag a few new photos with the exported SavedModel.
    import os
    import tempfile

    folder = tempfile.mkdtemp(prefix="photos-")
    for i, label in enumerate((0, 3, 6)):
        image = demo.make_image(label, 5000 + i, 160, seed=7)
        with open(os.path.join(folder, f"DSC_{i:04d}.jpg"), "wb") as f:
            f.write(image.encoded)
    tags = predict.predict(result.export_path, [folder], output=os.path.join(folder, "tags.csv"))
    for row in tags.rows:
        print(f"{os.path.basename(row.file)}: {row.label} ({row.score:.2f})")


if __name__ == "__main__":
    main(sys.argv[1:])
