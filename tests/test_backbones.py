"""Every backbone in the registry builds at 96 px with weights=None and takes a training step."""

from __future__ import annotations

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


def test_imagenet_download_failure_says_what_to_fetch_and_where(monkeypatch):
    def offline(*args, **kwargs):
        raise Exception(
            "URL fetch failure on https://storage.googleapis.com/tensorflow/keras-applications/"
            "resnet/resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5: None -- [Errno -2] "
            "Name or service not known"
        )

    spec = backbones.BACKBONES["resnet50"]
    monkeypatch.setitem(
        backbones.BACKBONES,
        "resnet50",
        backbones.BackboneSpec(offline, spec.preprocess, spec.default_size, spec.min_size),
    )
    with pytest.raises(UserError) as error:
        backbones.build_backbone("resnet50", 64, "imagenet")
    message = str(error.value)
    assert "https://storage.googleapis.com/" in message
    assert "models/resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5" in message
    assert "--weights=none" in message


def test_a_local_weights_file_is_loaded(tmp_path):
    donor = backbones.build_backbone("resnet50", 64, "none")
    path = str(tmp_path / "resnet50_notop.weights.h5")
    donor.save_weights(path)
    loaded = backbones.build_backbone("resnet50", 64, path)
    for a, b in zip(donor.weights, loaded.weights, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


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
