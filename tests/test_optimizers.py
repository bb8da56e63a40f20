"""Optimizers and learning-rate schedules by name."""

from __future__ import annotations

import keras
import pytest

from lmrec import optimizers
from lmrec.errors import UserError


@pytest.mark.parametrize("name", sorted(optimizers.OPTIMIZERS))
def test_every_optimizer_builds_with_every_schedule(name):
    for schedule in optimizers.LR_SCHEDULES:
        optimizer = optimizers.build(name, 1e-3, 100, schedule=schedule, weight_decay=0.01)
        assert isinstance(optimizer, keras.optimizers.Optimizer)


def test_cosine_decays_to_zero_over_the_phase_and_constant_stays():
    cosine = optimizers.LR_SCHEDULES["cosine"](0.1, 100)
    assert float(cosine(0)) == pytest.approx(0.1)
    assert float(cosine(50)) == pytest.approx(0.05, rel=1e-3)
    assert float(cosine(100)) == pytest.approx(0.0, abs=1e-7)
    assert optimizers.LR_SCHEDULES["constant"](0.1, 100) == 0.1


def test_sgd_is_nesterov_and_decay_and_ema_are_passed_through():
    sgd = optimizers.build("sgd", 0.01, 10, weight_decay=1e-4, ema_momentum=0.98)
    assert sgd.nesterov and sgd.momentum == 0.9 and sgd.weight_decay == pytest.approx(1e-4)
    assert sgd.use_ema and sgd.ema_momentum == pytest.approx(0.98)
    assert not optimizers.build("adam", 0.01, 10).use_ema
    assert optimizers.build("adamw", 0.01, 10, weight_decay=0.05).weight_decay == pytest.approx(
        0.05
    )


def test_unknown_names_list_the_valid_ones():
    with pytest.raises(UserError, match=r"--optimizer='rmsprop'; valid: adam, adamw, sgd"):
        optimizers.check_names("rmsprop", "cosine")
    with pytest.raises(UserError, match=r"--lr_schedule='step'; valid: constant, cosine"):
        optimizers.build("adam", 0.1, 10, schedule="step")
