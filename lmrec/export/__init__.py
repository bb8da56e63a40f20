"""The export formats of a trained model_dir, one module each.

  savedmodel.py  SavedModel for TF Serving (image bytes in, classes and scores out)
  tflite.py      float32 / float16 / int8 TFLite files rebuilt from the model_dir
  onnx.py        model.onnx beside them, when tf2onnx and onnxruntime are installed
  agreement.py   how each converted file agrees with the SavedModel

`python -m lmrec.export` (lmrec/export/__main__.py) runs them.
"""

from lmrec.export.savedmodel import (
    EXTRA_DIR,
    MAX_MEGAPIXELS,
    METADATA_FILE,
    export_saved_model,
    next_version,
    read_metadata,
    recognizer_functions,
    serving_archive,
    serving_functions,
)

__all__ = [
    "EXTRA_DIR",
    "MAX_MEGAPIXELS",
    "METADATA_FILE",
    "export_saved_model",
    "next_version",
    "read_metadata",
    "recognizer_functions",
    "serving_archive",
    "serving_functions",
]
