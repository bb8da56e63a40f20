"""python -m lmrec.export: a model_dir -> SavedModel (+ TFLite/ONNX with --tflite).

python -m lmrec.export --model_dir=runs/demo [--export_dir=export] [--tflite=float32,int8]
    [--classifier=softmax|knn|hybrid --knn_k=10 --knn_power=3 --knn_weight=0.5]
"""

from __future__ import annotations

from absl import flags

from lmrec import cli, config
from lmrec.errors import UserError
from lmrec.export import tflite
from lmrec.export.savedmodel import export_saved_model


def main(argv: list[str]) -> int:
    export_config = config.from_flags(config.ExportConfig, flags.FLAGS)
    model_dir = flags.FLAGS.model_dir
    if not model_dir:
        raise UserError("--model_dir is required")
    # Checked before the export, so a typo does not leave a version behind.
    variants = tflite.check_settings(export_config.tflite, export_config.tflite_check_images)
    classifier = config.from_flags(config.ClassifierConfig, flags.FLAGS)
    path = export_saved_model(model_dir, export_config, classifier=classifier)
    print(path)
    if variants:
        data = flags.FLAGS.data
        report = tflite.export_tflite(
            path, variants, data=data, max_images=export_config.tflite_check_images
        )
        print(report.directory)
    return 0


def run() -> None:
    cli.run_stage("export", main, positional=False)


if __name__ == "__main__":
    run()
