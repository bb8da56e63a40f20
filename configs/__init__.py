"""Makes configs/ the package lmrec.bundled_configs in an install (see setup.py), so a
pip-installed lmrec carries these flagfiles; `python -m lmrec.copy_configs` copies them out."""
