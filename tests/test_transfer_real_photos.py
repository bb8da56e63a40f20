"""Fine-tuning a pretrained backbone works: real photos, ImageNet weights vs random weights.

Uses ../shared/data/vn_landmarks (skips when absent) with a shortened version of
configs/vietnam_landmarks_lite0.cfg: 128 px, 2 frozen epochs + 1 fine-tuning epoch,
no MixUp.
"""

from __future__ import annotations

import pytest

from lmrec import config
from lmrec.train import train_and_evaluate
from tests.conftest import REPO

# Trains, exports or runs commands: left out by `pytest -m "not slow"`.
pytestmark = pytest.mark.slow

# MixUp is off: these 3-epoch runs check that transfer works, not the full recipe; with
# MixUp on, one of three runs of this file failed.
SHORT = [
    "--image_size=128",
    "--epochs_frozen=2",
    "--epochs_finetune=1",
    "--mixing=none",
    "--export_after=false",
]


def _run(tmp_path, recipe: str, vn_landmarks):
    experiment = config.experiment_from_flagfile(
        str(REPO / "configs" / f"vietnam_landmarks_{recipe}.cfg"),
        f"--input_dir={vn_landmarks / 'train'}",
        f"--data={vn_landmarks / 'test'}",
        f"--data_dir={tmp_path / 'tf_records' / 'vn_landmarks'}",
        f"--model_dir={tmp_path / recipe}",
        *SHORT,
    )
    return train_and_evaluate(experiment, verbose=False)


@pytest.fixture(scope="module")
def results(vn_landmarks, tmp_path_factory, monkeypatch_module):
    root = tmp_path_factory.mktemp("transfer")
    monkeypatch_module.setenv("KERAS_HOME", str(root / "keras_home"))
    return {recipe: _run(root, recipe, vn_landmarks) for recipe in ("lite0", "lite0_scratch")}


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def test_pretrained_backbone_transfers_to_real_landmark_photos(results):
    pretrained = results["lite0"].metrics
    # 55 test photos of 5 landmarks; chance is 0.2, the same 3 epochs from scratch about
    # 0.2-0.4. A full run of the config reaches 1.000; this 3-epoch one is not
    # bit-repeatable on a multi-threaded CPU and has given 0.873 in one of several runs.
    assert pretrained["num_images"] == 55
    assert pretrained["accuracy"] >= 0.8, pretrained["accuracy"]
    assert [row["phase"] for row in results["lite0"].history] == ["frozen", "frozen", "finetune"]


def test_imagenet_weights_beat_the_same_recipe_from_scratch(results):
    pretrained = results["lite0"].metrics["accuracy"]
    scratch = results["lite0_scratch"].metrics["accuracy"]
    assert pretrained >= scratch + 0.3, (pretrained, scratch)
