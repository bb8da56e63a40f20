"""lmrec.registry.Registry, and every registry of named choices built on it."""

from __future__ import annotations

import pytest

from lmrec import (
    callbacks,
    distribute,
    feature_cache,
    knn,
    losses,
    lr_find,
    optimizers,
    performance,
    predict,
)
from lmrec.config import ModelConfig, TrainConfig
from lmrec.data import augment, pipeline, shards, sources
from lmrec.data.sources import gldv2
from lmrec.errors import UserError
from lmrec.export import tflite
from lmrec.models import backbones, heads
from lmrec.registry import Registry

COLOURS = Registry("colour", {"red": 1, "green": 2, "dark_blue": 3})


def test_get_returns_the_entry_and_keeps_table_order():
    assert COLOURS.get("green") == 2
    assert COLOURS.names() == ["red", "green", "dark_blue"]
    assert list(COLOURS) == ["red", "green", "dark_blue"]
    assert COLOURS.items() == [("red", 1), ("green", 2), ("dark_blue", 3)]
    assert len(COLOURS) == 3


def test_contains_is_about_names_only():
    assert "red" in COLOURS
    assert "Red" not in COLOURS
    assert 1 not in COLOURS
    assert ["red"] not in COLOURS  # unhashable: no name, no TypeError


def test_unknown_name_names_the_flag_and_lists_every_valid_name():
    with pytest.raises(UserError) as error:
        COLOURS.get("purple")
    assert str(error.value) == (
        "Unknown --colour='purple'; valid colour names: red, green, dark_blue"
    )


@pytest.mark.parametrize(
    "typo, suggestion", [("gren", "green"), ("Dark-Blue", "dark_blue"), ("RED", "red")]
)
def test_unknown_name_suggests_the_closest_ignoring_case_and_punctuation(typo, suggestion):
    with pytest.raises(UserError, match=rf"\(did you mean '{suggestion}'\?\)"):
        COLOURS.get(typo)


def test_no_suggestion_for_a_name_like_none():
    assert "did you mean" not in COLOURS.unknown_message("xyzzy")


def test_flag_also_and_renamed_shape_the_message():
    registry = Registry(
        "paint",
        {"matt": 1, "gloss": 2},
        flag="finish",
        also="or any RAL code",
        also_names=["ral9010", "matt"],
        renamed={"shiny": "gloss"},
    )
    assert registry.flag == "finish"
    assert registry.unknown_message("ral9011") == (
        "Unknown --finish='ral9011' (did you mean 'ral9010'?); "
        "valid paint names: matt, gloss, or any RAL code: ral9010"
    )
    assert "(renamed to --finish=gloss)" in registry.unknown_message("shiny")
    with pytest.raises(UserError, match="renamed to --finish=gloss"):
        registry.get("shiny")
    assert "ral9010" not in registry  # also_names are for the message, not the table


def test_default_flag_is_the_kind_with_underscores():
    assert Registry("mixed precision", {}).flag == "mixed_precision"


def test_parse_names_keeps_order_and_drops_blanks_and_repeats():
    assert COLOURS.parse_names(" green,red,, green ") == ["green", "red"]
    assert COLOURS.parse_names("") == []
    with pytest.raises(UserError, match=r"--colour='blue' .*dark_blue \(comma-separated\)"):
        COLOURS.parse_names("red,blue")


# Every registry of named choices, with the flag that names its entries.
REGISTRIES = [
    (backbones.BACKBONES, "backbone"),
    (backbones.KERAS_APPLICATIONS, "backbone"),
    (heads.HEADS, "head"),
    (losses.LOSSES, "loss"),
    (optimizers.OPTIMIZERS, "optimizer"),
    (optimizers.LR_SCHEDULES, "lr_schedule"),
    (distribute.STRATEGIES, "strategy"),
    (distribute.LR_SCALING, "lr_scaling"),
    (augment.AUGMENTATIONS, "augment"),
    (augment.MIXING, "mixing"),
    (pipeline.BALANCE, "balance"),
    (shards.RUNNERS, "runner"),
    (performance.MIXED_PRECISION, "mixed_precision"),
    (performance.JIT_COMPILE, "jit_compile"),
    (tflite.VARIANTS, "tflite"),
    (predict.ENGINES, "engine"),
    (sources.SOURCES, "source"),
    (gldv2.CSV_LISTS, "gldv2_csv"),
    (gldv2.CLASS_SELECTIONS, "class_selection"),
    (lr_find.PHASES, "lr_find_phase"),
    (feature_cache.CACHE_MODES, "cache_frozen_features"),
    (callbacks.EARLY_STOPPING_METRICS, "early_stopping_metric"),
    (callbacks.SELECT_EPOCH, "select_epoch"),
    (knn.INDEXES, "index"),
    (knn.CLASSIFIERS, "classifier"),
    (knn.OPEN_SET_SCORES, "open_set_score"),
]


@pytest.mark.parametrize("registry, flag", REGISTRIES, ids=[flag for _, flag in REGISTRIES])
def test_each_registry_rejects_a_bad_name_naming_its_flag(registry, flag):
    assert isinstance(registry, Registry) and len(registry) > 0
    first = registry.names()[0]
    assert first in registry
    registry.get(first)
    with pytest.raises(UserError) as error:
        registry.get("no_such_choice")
    message = str(error.value)
    assert message.startswith(f"Unknown --{flag}='no_such_choice'")
    assert all(name in message for name in registry.names())


# The functions the rest of lmrec calls, each looking a bad name up in its registry.
LOOKUPS = [
    (lambda name: backbones.get_spec(name), "backbone"),
    (lambda name: heads.get_builder(name), "head"),
    (lambda name: losses.check_model(ModelConfig(loss=name)), "loss"),
    (lambda name: optimizers.check(TrainConfig(optimizer=name)), "optimizer"),
    (lambda name: optimizers.check(TrainConfig(lr_schedule=name)), "lr_schedule"),
    (lambda name: distribute.get_factory(name), "strategy"),
    (lambda name: distribute.lr_scale(name, 2), "lr_scaling"),
    (lambda name: augment.get_policy(name), "augment"),
    (lambda name: augment.check_mixing(name), "mixing"),
    (lambda name: pipeline.check_balance(name), "balance"),
    (lambda name: shards.check_runner(name), "runner"),
    (lambda name: performance.dtype_policy_name(name), "mixed_precision"),
    (lambda name: performance.jit_compile(name), "jit_compile"),
    (lambda name: tflite.parse_variants(f"float32,{name}"), "tflite"),
    (lambda name: predict.load_tagger("unused", name), "engine"),
    (lambda name: knn.build_index([[1.0]], name), "index"),
    (lambda name: knn.classify(name), "classifier"),
    (lambda name: knn.open_set_score(name), "open_set_score"),
]


@pytest.mark.parametrize("lookup, flag", LOOKUPS, ids=[flag for _, flag in LOOKUPS])
def test_each_lookup_goes_through_its_registry(lookup, flag):
    with pytest.raises(UserError, match=rf"^Unknown --{flag}='nonsense'.*; valid "):
        lookup("nonsense")


def test_backbone_fallback_accepts_any_keras_application_and_suggests_among_them():
    assert "densenet201" not in backbones.BACKBONES
    assert backbones.get_spec("densenet201") is backbones.KERAS_APPLICATIONS.get("densenet201")
    message = backbones.BACKBONES.unknown_message("DenseNet-201")
    assert "(did you mean 'densenet201'?)" in message
    assert "or any keras.applications model by its lower-case class name: " in message
