"""lmrec: landmark recognition by transfer learning on Keras 3 / TensorFlow.

Stages (each a `python -m lmrec.<stage>` command and a plain function):
prepare -> train -> evaluate -> export -> predict. See docs/DESIGN.md.
"""

from lmrec import quiet_start

__version__ = "0.1.0"

if quiet_start.is_command():
    quiet_start.import_tensorflow()
