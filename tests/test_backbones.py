"""Every backbone in the registry builds at 96 px with weights=None and takes a training step."""

from __future__ import annotations

import http.server
import threading

import keras
import numpy as np
import pytest

from lmrec.config import ModelConfig
from lmrec.errors import UserError
from lmrec.models import backbones, classifier, freezing

SIZE = 96  # above every backbone's minimum (Xception 71, InceptionV3 75)


@pytest.mark.parametrize("name", sorted(backbones.BACKBONES))
def test_builds_and_trains_one_step(name):
    config = ModelConfig(backbone=name, weights="none", dense_units=32)
    model = classifier.build_classifier(config, num_classes=3, image_size=SIZE)
    assert model.backbone.name == "backbone" and model.head.name == "head"
    assert len(model.backbone.output.shape) == 4, "backbones return a feature map"
    images = np.random.default_rng(0).uniform(-1, 1, (2, SIZE, SIZE, 3)).astype("float32")
    labels = keras.utils.to_categorical([0, 2], 3)
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss="categorical_crossentropy")
    before = [w.numpy().copy() for w in model.head.trainable_weights]
    loss = model.train_on_batch(images, labels)
    assert np.isfinite(loss)
    after = [w.numpy() for w in model.head.trainable_weights]
    assert any(not np.allclose(b, a) for b, a in zip(before, after, strict=True)), (
        "a step changed the head"
    )
    probabilities = model.predict(images, verbose=0)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)


def test_unknown_backbone_lists_the_valid_names():
    with pytest.raises(UserError, match=r"--backbone='vgg99'.*baseline.*xception"):
        backbones.get_spec("vgg99")


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
