"""Loading a user's local weights file into a backbone, strictly.

Keras loads some mismatching files without an error: a legacy .h5 loaded by
name skips layers it does not find, and a Keras 3 .weights.h5 whose layout
differs only warns ("Skipping ... will retain their freshly-initialized
weights"). A backbone that silently keeps random weights trains badly and
nobody knows why, so both cases are turned into a UserError naming the file.
"""

from __future__ import annotations

import warnings

import keras

from lmrec.errors import UserError

_PARTIAL_LOAD_WARNINGS = ("Skipping", "could not be loaded", "freshly-initialized")


def load_keras_weights_file(network: keras.Model, path: str) -> None:
    """Loads a legacy .h5 (no-top or full, by layer name) or a Keras 3 .weights.h5 file.

    Raises:
      UserError: the file does not fit the network, or loads only partly.
    """
    try:
        if path.endswith(".h5") and not path.endswith(".weights.h5"):
            _load_legacy_h5(network, path)
        else:
            _load_keras3(network, path)
    except UserError:
        raise
    except Exception as error:  # noqa: BLE001 - reported with the file and the network.
        raise UserError(f"--weights={path} does not fit {network.name}: {error}") from None


def _load_legacy_h5(network: keras.Model, path: str) -> None:
    import h5py

    with h5py.File(path, "r") as f:
        group = f["model_weights"] if "layer_names" not in f.attrs else f
        in_file = {n.decode() if isinstance(n, bytes) else n for n in group.attrs["layer_names"]}
    missing = [
        layer.name for layer in network.layers if layer.weights and layer.name not in in_file
    ]
    if missing:
        raise UserError(
            f"--weights={path} does not fit {network.name}: {len(missing)} of its layers are not "
            f"in the file (e.g. {', '.join(missing[:3])})"
        )
    network.load_weights(path, by_name=True)


def _load_keras3(network: keras.Model, path: str) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        network.load_weights(path)
    partial = [w for w in caught if any(s in str(w.message) for s in _PARTIAL_LOAD_WARNINGS)]
    if partial:
        raise UserError(
            f"--weights={path} does not fit {network.name}: only part of it loads "
            f"({len(partial)} parts skipped, e.g. {str(partial[0].message)[:120]})"
        )
    for warning in caught:  # Anything else is the user's to see.
        warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
