"""lmrec: landmark recognition by transfer learning on Keras 3 / TensorFlow.

Stages (each a `python -m lmrec.<stage>` command and a plain function):
prepare -> train -> evaluate -> export -> predict. See docs/DESIGN.md.
"""

__version__ = "0.1.0"
