"""Every backbone builds at its minimum size with weights=None, takes a training step and
gives a Grad-CAM map."""

from __future__ import annotations

import http.server
import threading

import keras
import numpy as np
import pytest

from lmrec import gradcam
from lmrec.config import ModelConfig
from lmrec.errors import UserError
from lmrec.models import backbones, classifier, freezing

# Trains, exports or runs commands: left out by `pytest -m "not slow"`.
pytestmark = pytest.mark.slow

# keras.applications models outside BACKBONES, built too: they share _keras_application
# with Xception, InceptionV3, ResNet50 and EfficientNetB7, so three more families
# (depthwise, caffe-style, ConvNeXt with its normalization inside) are enough; building
# all 40 would take many minutes on a CPU.
# test_every_keras_application_is_a_backbone_with_keras_own_sizes covers every name.
KERAS_APPLICATIONS_SAMPLE = ["convnexttiny", "mobilenetv2", "vgg16"]


@pytest.mark.parametrize("name", sorted(backbones.BACKBONES) + KERAS_APPLICATIONS_SAMPLE)
def test_builds_at_its_minimum_size_and_trains_one_step(name):
    size = backbones.get_spec(name).min_size
    config = ModelConfig(backbone=name, weights="none", dense_units=32)
    keras.utils.set_random_seed(0)  # the same initial weights on every run
    model = classifier.build_classifier(config, num_classes=3, image_size=size)
    assert model.backbone.name == "backbone" and model.head.name == "head"
    assert len(model.backbone.output.shape) == 4, "backbones return a feature map"
    images = np.random.default_rng(0).uniform(-1, 1, (2, size, size, 3)).astype("float32")
    # Grad-CAM needs no layer names: the gradient w.r.t. the backbone's output map.
    maps, chosen, cam_probabilities = gradcam.gradcam(model, images)
    assert maps.shape == (2, *model.backbone.output.shape[1:3])
    assert np.isfinite(maps).all() and maps.min() >= 0 and maps.max() <= 1
    np.testing.assert_allclose(cam_probabilities, model.predict(images, verbose=0), atol=1e-4)
    assert chosen.shape == (2,) and all(0 <= c < 3 for c in chosen)
    labels = keras.utils.to_categorical([0, 2], 3)
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss="categorical_crossentropy")
    before = [w.numpy().copy() for w in model.head.trainable_weights]
    loss = model.train_on_batch(images, labels)
    assert np.isfinite(loss)
    after = [w.numpy() for w in model.head.trainable_weights]
    assert any(not np.allclose(b, a) for b, a in zip(before, after, strict=True)), (
        "a step changed the head"
    )
    assert all(np.isfinite(w.numpy()).all() for w in model.weights), "a step left NaN weights"
    # The outputs after the step are not checked: at its minimum size a deep untrained
    # backbone (EfficientNetB7 at 32 px: 1x1 feature maps, BatchNorm statistics of two
    # photos) can overflow to NaN from finite weights on some CPUs.


def test_every_keras_application_is_a_backbone_with_keras_own_sizes(monkeypatch):
    """Each model Keras ships resolves, with the sizes Keras itself checks, without building it.

    Keras passes each model's default and minimum size to
    imagenet_utils.obtain_input_shape; a stand-in that raises with them stops the
    constructor before any layer exists. MobileNetV3 checks its 32 px itself.
    """
    from keras.src.applications import imagenet_utils

    class Sizes(Exception):
        pass

    def report_sizes(input_shape, default_size, min_size, **kwargs):
        raise Sizes(default_size, min_size)

    monkeypatch.setattr(imagenet_utils, "obtain_input_shape", report_sizes)
    class_names = backbones.keras_application_class_names()
    assert len(class_names) >= 40 and "DenseNet201" in class_names and "ConvNeXtTiny" in class_names
    for class_name in class_names:
        name = class_name.lower()
        assert name in backbones.available_backbones()
        spec = backbones.get_spec(name)
        assert callable(spec.preprocess) and spec.pretrained
        assert spec.min_size <= spec.default_size
        constructor = getattr(keras.applications, class_name)
        try:
            constructor(
                include_top=False, weights=None, input_shape=(spec.min_size - 1,) * 2 + (3,)
            )
        except Sizes as keras_sizes:
            assert keras_sizes.args == (spec.default_size, spec.min_size), class_name
        except ValueError as error:  # MobileNetV3
            assert f"at least {spec.min_size}x{spec.min_size}" in str(error), class_name
        else:
            raise AssertionError(f"{class_name} accepted {spec.min_size - 1} px")
    for name in ("xception", "inceptionv3", "resnet50", "efficientnetb7"):
        assert backbones.BACKBONES.get(name) is backbones.KERAS_APPLICATIONS.get(name)


# keras.applications module -> the normalization its preprocess_input applies.
KERAS_PREPROCESSING = {
    "tf": ["xception", "inception_v3", "inception_resnet_v2", "mobilenet", "mobilenet_v2"]
    + ["nasnet", "resnet_v2"],
    "caffe": ["resnet", "vgg16", "vgg19"],
    "torch": ["densenet"],
    # Rescaling (and Normalization) layers inside the model.
    "identity": ["efficientnet", "efficientnet_v2", "convnext", "mobilenet_v3"],
}
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406])
IMAGENET_STD = np.array([0.229, 0.224, 0.225])


def _expected(mode, ramp):
    if mode == "tf":
        return ramp / 127.5 - 1
    if mode == "caffe":
        return ramp[..., ::-1] - np.array([103.939, 116.779, 123.68])
    if mode == "torch":
        return (ramp / 255 - IMAGENET_MEAN) / IMAGENET_STD
    return ramp


def test_each_backbone_gets_the_normalization_of_its_family():
    ramp = np.linspace(0, 255, 4 * 3, dtype="float32").reshape(1, 2, 2, 3)
    for name in ("squeezenet", "resnet18", "resnet34"):  # torchvision's mean/std
        got = np.asarray(backbones.get_spec(name).preprocess(ramp.copy()))
        np.testing.assert_allclose(got, _expected("torch", ramp), rtol=1e-5, atol=1e-5)
    modules = {
        class_name.lower(): getattr(keras.applications, class_name).__module__.rsplit(".")[-1]
        for class_name in backbones.keras_application_class_names()
    }
    assert set(modules.values()) == {m for ms in KERAS_PREPROCESSING.values() for m in ms}
    for name, module in modules.items():
        mode = next(mode for mode, ms in KERAS_PREPROCESSING.items() if module in ms)
        got = np.asarray(backbones.get_spec(name).preprocess(ramp.copy()))
        np.testing.assert_allclose(got, _expected(mode, ramp), rtol=1e-5, atol=1e-4, err_msg=name)


@pytest.mark.parametrize(
    "name, trainable, non_trainable",
    [
        # torchvision resnet18 / resnet34 / squeezenet1_1 have 11,689,512 / 21,797,672 /
        # 1,235,496 parameters; without the classifier (fc 512*1000+1000, or squeezenet's
        # conv10 512*1000+1000) that is 11,176,512 / 21,284,672 / 722,496. PyTorch counts
        # BatchNorm's running mean and variance as buffers, not parameters; Keras keeps them
        # as non-trainable weights: 2 per BatchNorm channel (4,800 / 8,512 channels).
        ("resnet18", 11_176_512, 9_600),
        ("resnet34", 21_284_672, 17_024),
        ("squeezenet", 722_496, 0),
    ],
)
def test_torchvision_architectures_have_torchvision_parameter_counts(
    name, trainable, non_trainable
):
    network = backbones.build_backbone(name, 224, "none")
    count = freezing.count_parameters(network)
    assert (count.trainable, count.non_trainable) == (trainable, non_trainable)
    feature_map = {"squeezenet": (13, 13, 512)}.get(name, (7, 7, 512))
    assert tuple(network.output.shape[1:]) == feature_map


def test_squeezenet_pools_round_up_like_pytorch_ceil_mode():
    def torch_side(n):  # conv1 3x3/2, then three 3x3/2 pools with ceil_mode=True
        n = (n - 3) // 2 + 1
        for _ in range(3):
            n = -(-(n - 3) // 2) + 1
        return n

    for size in (32, 35, 37, 41, 100):
        network = backbones.build_backbone("squeezenet", size, "none")
        assert network.output.shape[1] == network.output.shape[2] == torch_side(size), size


def test_resnet18_layer_names_follow_keras_resnet50():
    names = {layer.name for layer in backbones.build_backbone("resnet18", 32, "none").layers}
    keras_names = {layer.name for layer in backbones.build_backbone("resnet50", 32, "none").layers}
    shared = {"conv1_conv", "pool1_pool", "conv3_block1_0_conv", "conv5_block2_2_conv"}
    assert shared <= names and shared <= keras_names
    assert "conv5_block3_1_conv" not in names, "two blocks per stage"


def test_architectures_without_imagenet_weights_load_local_keras_files(tmp_path):
    path = str(tmp_path / "resnet18.weights.h5")
    trained = backbones.build_backbone("resnet18", 32, "none")
    trained.save_weights(path)
    loaded = backbones.build_backbone("resnet18", 32, path)
    for a, b in zip(trained.weights, loaded.weights, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    with pytest.raises(UserError, match="does not fit"):
        backbones.build_backbone("resnet34", 32, path)
    for name in ("resnet18", "resnet34", "squeezenet", "baseline"):
        with pytest.raises(UserError, match=f"--backbone={name} has no ImageNet weights"):
            backbones.build_backbone(name, 32, "imagenet")


def test_unknown_backbone_lists_the_valid_names():
    with pytest.raises(UserError, match=r"--backbone='vgg99'.*xception.*baseline"):
        backbones.get_spec("vgg99")
    with pytest.raises(UserError) as error:
        backbones.get_spec("DenseNet-201")
    message = str(error.value)
    assert "(did you mean 'densenet201'?)" in message
    assert "any keras.applications model by its lower-case class name" in message
    assert "squeezenet" in message and "convnexttiny" in message


def test_image_size_below_minimum_is_rejected():
    with pytest.raises(UserError, match="below the minimum 71 px"):
        backbones.resolve_image_size("xception", 64)
    assert backbones.resolve_image_size("resnet50", 0) == 224


def test_weights_argument_is_validated(tmp_path):
    with pytest.raises(UserError, match="neither 'imagenet', 'none' nor an existing"):
        backbones.normalize_weights(str(tmp_path / "missing.h5"))
    with pytest.raises(UserError, match="no ImageNet weights"):
        backbones.build_backbone("baseline", 64, "imagenet")


@pytest.fixture
def loopback_404_server():
    """An HTTP server on 127.0.0.1 that answers 404 to everything (a mirror without the file)."""

    class NotFound(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - the http.server API
            self.send_error(404, "Not Found")

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), NotFound)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/keras-applications/resnet/"
    server.shutdown()


def test_imagenet_download_failure_says_what_to_fetch_and_where(
    loopback_404_server, monkeypatch, tmp_path
):
    """The real Keras download path, pointed at a loopback server that lacks the file."""
    from keras.src.applications import resnet

    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    monkeypatch.setattr(resnet, "BASE_WEIGHTS_PATH", loopback_404_server)
    with pytest.raises(UserError) as error:
        backbones.build_backbone("resnet50", 64, "imagenet")
    message = str(error.value)
    file_name = "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"
    assert f"Fetch {loopback_404_server}{file_name}" in message
    assert f"put it at {tmp_path / 'keras_home' / 'models' / file_name}" in message
    assert "--weights=none" in message and "Traceback" not in message


def _save_legacy_h5(model, path):
    """Writes weights the way Keras' published .h5 files are laid out (by layer name)."""
    import h5py
    from keras.src.legacy.saving import legacy_h5_format

    with h5py.File(path, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, model)


def test_legacy_h5_files_with_or_without_top_load(tmp_path):
    full = keras.applications.ResNet50(weights=None, input_shape=(64, 64, 3), classes=1000)
    notop = keras.applications.ResNet50(weights=None, include_top=False, input_shape=(64, 64, 3))
    for model, name in ((full, "full.h5"), (notop, "notop.h5")):
        path = str(tmp_path / name)
        _save_legacy_h5(model, path)
        loaded = backbones.build_backbone("resnet50", 64, path)
        for layer in notop.layers:
            if layer.weights:
                for a, b in zip(
                    model.get_layer(layer.name).weights,
                    loaded.get_layer(layer.name).weights,
                    strict=True,
                ):
                    np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_a_weights_file_of_another_backbone_is_a_clear_error(tmp_path):
    path = str(tmp_path / "xception_notop.h5")
    _save_legacy_h5(keras.applications.Xception(weights=None, include_top=False), path)
    with pytest.raises(UserError, match=r"does not fit resnet50: \d+ of its layers are not in"):
        backbones.build_backbone("resnet50", 64, path)
    keras3_file = str(tmp_path / "other.weights.h5")
    keras.applications.MobileNetV2(weights=None, include_top=False).save_weights(keras3_file)
    with pytest.raises(UserError, match="does not fit resnet50"):
        backbones.build_backbone("resnet50", 64, keras3_file)


def test_keras3_weights_files_load_whole_and_partial_loads_are_refused(tmp_path):
    full = keras.applications.ResNet50(weights=None, input_shape=(64, 64, 3))
    full_file = str(tmp_path / "resnet50_full.weights.h5")
    full.save_weights(full_file)
    loaded = backbones.build_backbone("resnet50", 64, full_file)
    np.testing.assert_array_equal(
        loaded.get_layer("conv5_block3_3_conv").kernel.numpy(),
        full.get_layer("conv5_block3_3_conv").kernel.numpy(),
    )
    # A Lite1 file into Lite0: same layer kinds, more blocks. Keras only warns; lmrec refuses.
    lite1_file = str(tmp_path / "lite1.weights.h5")
    backbones.build_backbone("efficientnet_lite1", 64, "none").save_weights(lite1_file)
    with pytest.raises(UserError, match="does not fit"):
        backbones.build_backbone("efficientnet_lite0", 64, lite1_file)


def test_freezing_phases_and_unfreeze_from_a_named_block():
    config = ModelConfig(backbone="baseline", weights="none", dense_units=16)
    model = classifier.build_classifier(config, num_classes=4, image_size=64)
    freezing.freeze_backbone(model)
    frozen = freezing.count_parameters(model)
    head_only = sum(int(np.prod(w.shape)) for w in model.head.trainable_weights)
    assert frozen.trainable == head_only
    freezing.unfreeze_backbone(model, "block3", keep_batchnorm_frozen=True)
    trainable_names = {
        layer.name for layer in model.backbone.layers if layer.trainable and layer.weights
    }
    assert "block3_conv1" in trainable_names and "block4_conv2" in trainable_names
    assert "block2_conv2" not in trainable_names and "stem_conv" not in trainable_names
    assert not any(name.endswith("_bn") for name in trainable_names), "BatchNorm stays frozen"
    freezing.unfreeze_backbone(model, "", keep_batchnorm_frozen=False)
    assert freezing.count_parameters(model).non_trainable == sum(
        int(np.prod(w.shape)) for w in model.non_trainable_weights
    )
    assert "block1_conv1_bn" in {layer.name for layer in model.backbone.layers if layer.trainable}
    with pytest.raises(UserError, match="--unfreeze_from='block9'.*block1_conv1"):
        freezing.unfreeze_backbone(model, "block9")


def test_freeze_layers_keeps_the_first_n_layers_frozen_in_phase_2():
    config = ModelConfig(backbone="baseline", weights="none", dense_units=16)
    model = classifier.build_classifier(config, num_classes=4, image_size=64)
    layers = model.backbone.layers
    n = next(i for i, layer in enumerate(layers) if layer.name == "block3_conv1")
    freezing.unfreeze_backbone(model, "", keep_batchnorm_frozen=False, freeze_layers=n)
    assert not any(layer.trainable for layer in layers[:n] if layer.weights)
    assert all(layer.trainable for layer in layers[n:] if layer.weights)
    # With --unfreeze_from too, the later starting point wins.
    freezing.unfreeze_backbone(model, "block2", keep_batchnorm_frozen=False, freeze_layers=n)
    assert not layers[n - 1].trainable and layers[n].trainable
    freezing.unfreeze_backbone(model, "block4", keep_batchnorm_frozen=False, freeze_layers=n)
    assert not layers[n].trainable
    with pytest.raises(UserError, match=f"--freeze_layers={len(layers)}.*has {len(layers)} layers"):
        freezing.unfreeze_backbone(model, "", freeze_layers=len(layers))


def test_scratch_backbones_get_batchnorm_momentum_that_short_runs_can_follow(monkeypatch, tmp_path):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))  # the Lite weights cache goes there
    scratch = backbones.build_backbone("efficientnet_lite0", 64, "none")
    pretrained = backbones.build_backbone("efficientnet_lite0", 64, "imagenet")
    batchnorm = keras.layers.BatchNormalization
    assert {layer.momentum for layer in scratch.layers if isinstance(layer, batchnorm)} == {0.9}
    assert {layer.momentum for layer in pretrained.layers if isinstance(layer, batchnorm)} == {0.99}
    baseline = backbones.build_backbone("baseline", 64, "none")
    assert {layer.momentum for layer in baseline.layers if isinstance(layer, batchnorm)} == {0.9}
