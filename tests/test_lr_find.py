"""The learning-rate range test on a tiny demo dataset: rates, early stop, outputs."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from lmrec import lr_find
from lmrec.config import LrFindConfig
from lmrec.errors import UserError
from tests.conftest import small_demo_config

# Trains, exports or runs commands: left out by `pytest -m "not slow"`.
pytestmark = pytest.mark.slow


def tiny_config(tmp_path, demo_records, **overrides):
    return small_demo_config(
        str(tmp_path),
        data_dir=demo_records,
        image_size=32,
        batch_size=16,
        **overrides,
    )


def test_range_test_rates_rise_geometrically_and_outputs_are_written(tmp_path, demo_records):
    # One short phase 1 first (2 steps), as for a real --lr_find_phase=finetune.
    config = tiny_config(tmp_path, demo_records, epochs_frozen=1, steps_per_epoch=2)
    settings = LrFindConfig(lr_find_min=1e-5, lr_find_max=0.1, lr_find_steps=30)
    result = lr_find.lr_find(config, settings, verbose=False)

    rates = np.array(result.learning_rates)
    ratio = (0.1 / 1e-5) ** (1 / 29)
    assert rates[0] == pytest.approx(1e-5, rel=1e-5)
    np.testing.assert_allclose(rates[1:] / rates[:-1], ratio, rtol=1e-4)
    if not result.stopped_early:
        assert len(rates) == 30 and rates[-1] == pytest.approx(0.1, rel=1e-5)
    assert len(result.losses) == len(result.smoothed_losses) == len(rates)
    assert rates[0] <= result.suggestion <= rates[-1]
    assert result.flag.startswith("--lr_finetune=")

    assert os.path.dirname(result.png) == config.train.model_dir
    with open(result.png, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    with open(result.json, encoding="utf-8") as f:
        saved = json.load(f)
    assert saved["suggestion"] == result.suggestion and saved["flag"] == result.flag
    assert saved["learning_rates"] == result.learning_rates
    assert not [n for n in os.listdir(config.train.model_dir) if n.startswith(".tmp-")]


def test_a_diverging_range_stops_early(tmp_path, demo_records):
    config = tiny_config(tmp_path, demo_records, epochs_frozen=0)
    settings = LrFindConfig(
        lr_find_phase="frozen",
        lr_find_min=1.0,
        lr_find_max=1e6,
        lr_find_steps=40,
        lr_find_dir=str(tmp_path / "find"),
    )
    result = lr_find.lr_find(config, settings, verbose=False)
    assert result.stopped_early and len(result.learning_rates) < 40
    assert result.flag.startswith("--lr_frozen=")
    assert os.path.isfile(tmp_path / "find" / lr_find.PNG_FILE)


def test_suggestion_is_the_steepest_fall_before_the_minimum():
    rates = np.geomspace(1e-6, 1.0, 7)
    #        1e-6 1e-5 1e-4 1e-3 1e-2 1e-1 1
    losses = [2.0, 1.95, 1.5, 1.3, 1.2, 3.0, float("nan")]
    assert lr_find.suggest(rates, losses) == pytest.approx(1e-4)
    # The loss rose from the first rate: the range started too high; the first rate it is.
    assert lr_find.suggest(rates[:3], [2.0, 2.5, 9.0]) == pytest.approx(1e-6)


@pytest.mark.parametrize(
    "values, flag",
    [
        ({"lr_find_phase": "head"}, "--lr_find_phase='head'"),
        ({"lr_find_min": 0.0}, "--lr_find_min"),
        ({"lr_find_min": 1e-3, "lr_find_max": 1e-4}, "--lr_find_max"),
        ({"lr_find_steps": 1}, "--lr_find_steps"),
    ],
)
def test_bad_settings_name_the_flag(values, flag):
    with pytest.raises(UserError, match=flag):
        lr_find.check(LrFindConfig(**values))
