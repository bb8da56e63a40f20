"""Optimizers and learning-rate schedules by name, with their values at chosen steps."""

from __future__ import annotations

import keras
import pytest

from lmrec import optimizers
from lmrec.config import TrainConfig
from lmrec.errors import UserError

STEPS_PER_EPOCH = 10


def rate(train: TrainConfig, epochs: int = 10, warmup_epochs: float = 0.0, peak: float = 0.1):
    """The schedule of a phase of `epochs` epochs as a function of the step."""
    schedule = optimizers.schedule(
        train, peak, epochs * STEPS_PER_EPOCH, STEPS_PER_EPOCH, warmup_epochs
    )
    return lambda step: float(schedule(step)) if callable(schedule) else schedule


@pytest.mark.parametrize("name", sorted(optimizers.OPTIMIZERS))
def test_every_optimizer_builds_with_every_schedule(name):
    for schedule in optimizers.LR_SCHEDULES:
        for warmup_epochs in (0.0, 1.0):
            train = TrainConfig(optimizer=name, lr_schedule=schedule, weight_decay=0.01)
            optimizer = optimizers.build(train, 1e-3, 100, 10, warmup_epochs)
            assert isinstance(optimizer, keras.optimizers.Optimizer)


def test_constant_stays_at_the_peak():
    constant = rate(TrainConfig(lr_schedule="constant"))
    assert [constant(s) for s in (0, 55, 100)] == [0.1, 0.1, 0.1]


def test_cosine_decays_to_zero_over_the_phase():
    cosine = rate(TrainConfig(lr_schedule="cosine"))
    assert cosine(0) == pytest.approx(0.1)
    assert cosine(50) == pytest.approx(0.05, rel=1e-3)
    assert cosine(100) == pytest.approx(0.0, abs=1e-7)


def test_step_drops_by_the_factor_at_epoch_boundaries():
    step = rate(TrainConfig(lr_schedule="step", lr_step_epochs=3, lr_decay_factor=0.1))
    boundary = 3 * STEPS_PER_EPOCH
    assert step(0) == pytest.approx(0.1)
    assert step(boundary - 1) == pytest.approx(0.1)  # the last step of epoch 3
    assert step(boundary) == pytest.approx(0.01)  # the first step of epoch 4
    assert step(2 * boundary) == pytest.approx(0.001)
    # lr_step_epochs=0: drops at a third and two thirds of the phase, whatever its length.
    thirds = rate(TrainConfig(lr_schedule="step", lr_decay_factor=0.5), epochs=6)
    assert [thirds(s) for s in (19, 20, 39, 40, 59)] == pytest.approx(
        [0.1, 0.05, 0.05, 0.025, 0.025]
    )


def test_cosine_restarts_returns_to_the_peak_at_each_restart():
    sgdr = rate(TrainConfig(lr_schedule="cosine_restarts", restart_epochs=1, restart_multiplier=2))
    first, second = STEPS_PER_EPOCH, 2 * STEPS_PER_EPOCH  # cycles of 1, then 2 epochs
    assert sgdr(0) == pytest.approx(0.1)
    assert sgdr(first // 2) == pytest.approx(0.05, rel=1e-3)
    assert sgdr(first - 1) < 0.01
    assert sgdr(first) == pytest.approx(0.1)  # restart
    assert sgdr(first + second // 2) == pytest.approx(0.05, rel=1e-3)
    assert sgdr(first + second) == pytest.approx(0.1)  # second restart


@pytest.mark.parametrize("schedule", sorted(optimizers.LR_SCHEDULES))
def test_warmup_rises_linearly_from_zero_then_runs_the_schedule(schedule):
    train = TrainConfig(lr_schedule=schedule, lr_step_epochs=2, restart_epochs=2)
    warm = rate(train, warmup_epochs=2)
    cold = rate(train, epochs=8)  # the same schedule over the 8 epochs left after warm-up
    warmup = 2 * STEPS_PER_EPOCH
    assert warm(0) == pytest.approx(0.0)
    assert warm(warmup // 4) == pytest.approx(0.025)
    assert warm(warmup // 2) == pytest.approx(0.05)
    assert warm(warmup) == pytest.approx(0.1)
    for after in (1, 25, 45, 79):
        assert warm(warmup + after) == pytest.approx(cold(after), abs=1e-7), after


def test_cosine_warmup_matches_keras_cosine_decay_warmup():
    ours = rate(TrainConfig(lr_schedule="cosine"), warmup_epochs=1)
    keras_own = keras.optimizers.schedules.CosineDecay(
        0.0, decay_steps=90, warmup_target=0.1, warmup_steps=10
    )
    for step in (0, 3, 10, 40, 99, 100):
        assert ours(step) == pytest.approx(float(keras_own(step)), abs=1e-7), step


def test_warmup_round_trips_through_keras_serialization():
    schedules = keras.optimizers.schedules
    for inner in (0.1, schedules.CosineDecayRestarts(0.1, 20)):
        original = optimizers.WarmUp(inner, warmup_steps=5)
        config = schedules.serialize(original)
        restored = schedules.deserialize(config)
        assert isinstance(restored, optimizers.WarmUp)
        assert schedules.serialize(restored) == config
        for step in (0, 2, 5, 17, 30):
            assert float(restored(step)) == pytest.approx(float(original(step)))


def test_sgd_is_nesterov_and_momentum_decay_and_ema_are_passed_through():
    sgd = optimizers.build(
        TrainConfig(optimizer="sgd", momentum=0.8, weight_decay=1e-4, ema_momentum=0.98),
        0.01,
        10,
        10,
    )
    assert sgd.nesterov and sgd.momentum == pytest.approx(0.8)
    assert sgd.weight_decay == pytest.approx(1e-4)
    assert sgd.use_ema and sgd.ema_momentum == pytest.approx(0.98)
    assert not optimizers.build(TrainConfig(optimizer="adam"), 0.01, 10, 10).use_ema
    adamw = optimizers.build(TrainConfig(optimizer="adamw", weight_decay=0.05), 0.01, 10, 10)
    assert adamw.weight_decay == pytest.approx(0.05)
    rmsprop = optimizers.build(TrainConfig(optimizer="rmsprop"), 0.01, 10, 10)
    assert isinstance(rmsprop, keras.optimizers.RMSprop) and rmsprop.rho == pytest.approx(0.9)


def test_unknown_names_list_the_valid_ones():
    with pytest.raises(
        UserError, match=r"--optimizer='lamb'; valid optimizer names: adam, adamw, rmsprop, sgd"
    ):
        optimizers.check(TrainConfig(optimizer="lamb"))
    with pytest.raises(
        UserError,
        match=r"--lr_schedule='linear'; valid learning-rate schedule names: "
        r"constant, step, cosine, cosine_restarts",
    ):
        optimizers.build(TrainConfig(lr_schedule="linear"), 0.1, 10, 10)


@pytest.mark.parametrize(
    "values, flag",
    [
        ({"momentum": 1.0}, "--momentum"),
        ({"lr_step_epochs": -1}, "--lr_step_epochs"),
        ({"lr_decay_factor": 0.0}, "--lr_decay_factor"),
        ({"lr_decay_factor": 2.0}, "--lr_decay_factor"),
        ({"restart_epochs": 0}, "--restart_epochs"),
        ({"restart_multiplier": 0.5}, "--restart_multiplier"),
        ({"warmup_epochs": -0.5}, "--warmup_epochs"),
        ({"warmup_epochs": 5, "epochs_finetune": 5}, "--warmup_epochs=5.*--epochs_finetune=5"),
        ({"layer_lr_ratio": 0.0}, "--layer_lr_ratio"),
        ({"layer_lr_ratio": 1.5}, "--layer_lr_ratio"),
    ],
)
def test_bad_values_name_the_flag(values, flag):
    with pytest.raises(UserError, match=flag):
        optimizers.check(TrainConfig(**values))


def test_a_warmed_up_schedule_trains_in_a_compiled_step():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    train = TrainConfig(lr_schedule="step", lr_step_epochs=1)
    model.compile(optimizers.build(train, 0.1, 40, 10, warmup_epochs=1), loss="mse")
    model.fit(keras.ops.ones((8, 3)), keras.ops.zeros((8, 2)), batch_size=2, verbose=0)
    # 4 of the 10 warm-up steps done: the rate the next step uses is 0.1 * 4 / 10.
    assert float(model.optimizer.learning_rate) == pytest.approx(0.04)


def _three_dense_layers() -> keras.Model:
    return keras.Sequential(
        [keras.Input((3,)), keras.layers.Dense(4), keras.layers.Dense(4), keras.layers.Dense(2)]
    )


def test_layer_rate_factors_rise_geometrically_from_the_ratio():
    factors = optimizers.layer_rate_factors(_three_dense_layers(), 0.01)
    per_layer = sorted(set(factors.values()))
    # Three layers: 0.01 ** (1, 2/3, 1/3); kernel and bias of a layer share a factor.
    assert per_layer == pytest.approx([0.01, 0.01 ** (2 / 3), 0.01 ** (1 / 3)])
    assert len(factors) == 6


def _first_step_change(train: TrainConfig, first_kernel_factor: float | None) -> list:
    keras.utils.set_random_seed(3)
    model = _three_dense_layers()
    factors = None
    if first_kernel_factor is not None:
        factors = {model.trainable_weights[0].path: first_kernel_factor}
    model.compile(optimizers.build(train, 0.1, 10, 10, lr_factors=factors), loss="mse")
    before = [w.numpy().copy() for w in model.trainable_weights]
    x = keras.random.normal((8, 3), seed=1)
    model.fit(x, keras.ops.ones((8, 2)), batch_size=8, epochs=1, verbose=0)
    return [w.numpy() - b for w, b in zip(model.trainable_weights, before, strict=True)]


@pytest.mark.parametrize("name", sorted(optimizers.OPTIMIZERS))
def test_layer_factors_scale_each_variables_step_for_every_optimizer(name):
    # A first step is linear in the learning rate for all four optimizers, so a
    # variable with factor f must move exactly f times as far as without factors.
    train = TrainConfig(optimizer=name, momentum=0.0)
    plain = _first_step_change(train, None)
    scaled = _first_step_change(train, 0.25)
    assert abs(plain[0]).max() > 0
    assert scaled[0] == pytest.approx(0.25 * plain[0], rel=1e-4, abs=1e-7)
    for before, after in zip(plain[1:], scaled[1:], strict=True):
        assert after == pytest.approx(before, rel=1e-5, abs=1e-8)
