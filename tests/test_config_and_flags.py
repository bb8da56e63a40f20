"""Flags and configs: one flag per config field, flagfiles that parse, clear errors."""

from __future__ import annotations

import dataclasses
import glob
import subprocess
import sys

import pytest
from absl import flags as absl_flags

from lmrec import config, flags, settings
from lmrec.data import sources
from lmrec.data.sources import Source
from lmrec.errors import UserError
from lmrec.models import backbones, heads
from lmrec.registry import Registry
from tests.conftest import REPO


def test_every_setting_is_one_flag_with_its_fields_default_and_help():
    parsed = flags.parse([])
    declared = {}
    for cls in config.ALL_CONFIG_CLASSES:
        for field in settings.flag_fields(cls):
            # A setting two classes hold (seed, batch_size, top_k) is one Shared object.
            entry = (field.default, field.metadata["help"])
            assert declared.setdefault(field.name, entry) == entry, f"--{field.name} twice"
    assert set(declared) == flags.all_names()
    for name, (default, help_text) in declared.items():
        assert parsed[name].value == default, name
        assert parsed[name].help == help_text, name


def test_shared_settings_are_declared_once():
    for name, classes in {
        "seed": (config.PrepareConfig, config.DataConfig),
        "batch_size": (config.DataConfig, config.PredictConfig),
        "top_k": (config.ExportConfig, config.PredictConfig),
    }.items():
        fields = [next(f for f in dataclasses.fields(c) if f.name == name) for c in classes]
        assert len({(f.default, f.metadata["help"]) for f in fields}) == 1, name


def test_a_fields_help_comes_from_its_metadata():
    @dataclasses.dataclass(frozen=True)
    class Example:
        size: int = settings.setting(7, "Side of the thing.")

    values = absl_flags.FlagValues()
    settings.define(settings.flag_fields(Example), values, module_name="test")
    values(["test", "--size=9"])
    assert values["size"].help == "Side of the thing." and values["size"].default == 7
    assert settings.values(Example, values) == Example(size=9)


def test_each_stage_defines_its_own_flags():
    predict = {f.name for f in flags.fields("predict")}
    assert {"model", "output", "top_k", "batch_size", "reject_threshold", "quiet"} <= predict
    assert not predict & {"epochs_frozen", "backbone", "source", "demo_image_size"}
    prepare = {f.name for f in flags.fields("prepare")}
    assert {"source", "input_dir", "demo_images_per_class", "gldv2_dir", "tfds_name"} <= prepare
    assert "epochs_frozen" not in prepare
    assert {f.name for f in flags.fields("evaluate")} == {
        "model_dir", "data", "distractors", "reject_threshold", "cam_crop", "batch_size", "quiet",
        "classifier", "knn_k", "knn_power", "knn_weight", "open_set_score",
        "choose_threshold", "max_landmarks_rejected",
    }  # fmt: skip


def test_a_stage_accepts_other_stages_flags_and_rejects_misspellings():
    values = flags.parse(["--flagfile=configs/demo.cfg", "--model=export/x"], stage="predict")
    assert values.model == "export/x" and "epochs_frozen" not in values
    with pytest.raises(absl_flags.Error, match="epochs_frozn"):
        flags.parse(["--flagfile=configs/demo.cfg", "--epochs_frozn=2"], stage="predict")


def test_a_new_sources_options_become_prepare_flags(monkeypatch):
    @dataclasses.dataclass(frozen=True)
    class PhotoBoothOptions:
        booth_frames: int = settings.setting(4, "For --source=booth: frames per strip.")

    def open_booth(prepare_config, options):
        return Source(name="booth", class_names=[str(options.booth_frames)], items=list)

    table = dict(sources.SOURCES.items())
    table["booth"] = sources.SourceSpec(open_booth, PhotoBoothOptions)
    monkeypatch.setattr(sources, "SOURCES", Registry("source", table))
    monkeypatch.setattr(config, "SOURCES", sources.SOURCES)
    monkeypatch.setattr(
        config, "ALL_CONFIG_CLASSES", (*config.ALL_CONFIG_CLASSES, PhotoBoothOptions)
    )
    prepare_stage = (*flags.STAGES.get("prepare"), flags.Part(PhotoBoothOptions))
    monkeypatch.setattr(flags, "STAGES", Registry("stage", {"prepare": prepare_stage}))
    values = flags.parse(["--source=booth", "--booth_frames=6"], stage="prepare")
    prepare_config = config.from_flags(config.PrepareConfig, values)
    assert prepare_config.source_options == {"booth_frames": 6}
    assert sources.get_source(prepare_config).class_names == ["6"]


def test_source_options_are_checked_against_the_source():
    built = config.PrepareConfig.build(source="demo", demo_image_size=64)
    assert built.source_options == {"demo_image_size": 64}
    assert sources.options_of(built).demo_images_per_class == 150
    with pytest.raises(UserError, match="tfds_name"):
        sources.options_of(config.PrepareConfig.build(source="demo", tfds_name="mnist"))


RUNNABLE_CONFIGS = sorted(
    p for p in glob.glob(str(REPO / "configs" / "*.cfg")) if not p.endswith("common.cfg")
)


@pytest.mark.parametrize("path", RUNNABLE_CONFIGS)
def test_every_config_file_parses_into_a_buildable_experiment(path, monkeypatch):
    monkeypatch.chdir(REPO)  # nested flagfile paths resolve against the working directory
    experiment = config.experiment_from_flagfile(path)
    assert experiment.model.backbone in backbones.BACKBONES
    assert experiment.model.head in heads.HEADS
    assert experiment.train.model_dir, "every config names its model_dir"
    backbones.resolve_image_size(experiment.model.backbone, experiment.data.image_size)
    with open(path, encoding="utf-8") as f:
        header = f.read().split("\n--", 1)[0]
    assert "python -m lmrec.train --flagfile=configs/" in header, "header gives the command"
    first_flag = next(line for line in open(path, encoding="utf-8") if line.startswith("--"))
    assert first_flag.strip() == "--flagfile=configs/common.cfg", "common.cfg comes first"


def test_resolved_flagfile_round_trips(tmp_path):
    experiment = config.ExperimentConfig().replace(
        model={"backbone": "resnet50", "dropout": 0.5},
        train={"epochs_frozen": 7, "prepare_if_missing": True, "unfreeze_from": "conv5"},
        prepare={"input_dir": "/photos/with space/ünïcode", "source": "demo"},
    )
    experiment = experiment.replace(prepare={"demo_images_per_class": 3})
    assert experiment.prepare.source_options == {"demo_images_per_class": 3}
    path = tmp_path / "flags.cfg"
    path.write_text(experiment.to_flagfile(), encoding="utf-8")
    parsed = config.experiment_from_flagfile(str(path))
    # A config read from flags holds every option of its source.
    assert parsed.prepare.source_options == {"demo_images_per_class": 3, "demo_image_size": 128}
    assert parsed == experiment.replace(prepare={"demo_image_size": 128})
    assert config.ExperimentConfig.from_dict(parsed.to_dict()) == parsed
    assert config.ExperimentConfig.from_dict(experiment.to_dict()) == experiment
    assert config.experiment_from_flagfile(str(path), "--quiet", "--model=x") == parsed


def test_unknown_config_keys_are_rejected():
    with pytest.raises(ValueError, match="epochs_frozn"):
        config.ExperimentConfig.from_dict({"train": {"epochs_frozn": 3}})


def test_misspelled_flag_in_python_names_it_and_suggests():
    with pytest.raises(absl_flags.Error, match="epochs_frozn.*epochs_frozen"):
        flags.parse(["--epochs_frozn=2"])


def _run(args, env):
    return subprocess.run(
        [sys.executable, "-m", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=300,
    )


def test_misspelled_flag_on_the_command_line(env_for_subprocess):
    result = _run(
        ["lmrec.train", "--flagfile=configs/demo.cfg", "--epochs_frozn=2"], env_for_subprocess
    )
    assert result.returncode != 0
    assert "epochs_frozn" in result.stderr and "epochs_frozen" in result.stderr


def test_unknown_backbone_on_the_command_line(env_for_subprocess, tmp_path):
    result = _run(
        [
            "lmrec.train",
            "--flagfile=configs/demo.cfg",
            "--backbone=xceptoin",
            f"--model_dir={tmp_path}/run",
            f"--data_dir={tmp_path}/none",
            "--prepare_if_missing=false",
        ],
        env_for_subprocess,
    )
    assert result.returncode == 2
    assert "--backbone='xceptoin'" in result.stderr
    assert "xception" in result.stderr and "Traceback" not in result.stderr


def test_missing_data_says_which_prepare_command_to_run(env_for_subprocess, tmp_path):
    result = _run(
        [
            "lmrec.train",
            "--flagfile=configs/xception.cfg",
            f"--data_dir={tmp_path}/landmarks",
            f"--model_dir={tmp_path}/run",
        ],
        env_for_subprocess,
    )
    assert result.returncode == 2
    assert "python -m lmrec.prepare --source=folder" in result.stderr
    assert f"--output_dir={tmp_path}" in result.stderr and "Traceback" not in result.stderr


def test_each_command_shows_only_its_own_flags(env_for_subprocess):
    predict = _run(["lmrec.predict", "--helpfull"], env_for_subprocess)
    assert "--reject_threshold:" in predict.stdout and "--[no]quiet:" in predict.stdout
    assert "--epochs_frozen:" not in predict.stdout and "--source:" not in predict.stdout
    prepare = _run(["lmrec.prepare", "--help"], env_for_subprocess)
    assert "--demo_images_per_class:" in prepare.stdout and "--tfds_name:" in prepare.stdout
    assert "--epochs_frozen:" not in prepare.stdout and "--engine:" not in prepare.stdout


def test_evaluate_and_predict_read_a_training_flagfile(env_for_subprocess, tmp_path):
    flagfile = tmp_path / "flags.cfg"
    flagfile.write_text(config.ExperimentConfig().to_flagfile(), encoding="utf-8")
    for stage in ("lmrec.evaluate", "lmrec.predict"):
        result = _run([stage, f"--flagfile={flagfile}", "--nosuch_flag=1"], env_for_subprocess)
        assert result.returncode != 0 and "nosuch_flag" in result.stderr, stage
        assert "epochs_frozen" not in result.stderr, stage
    evaluate = _run(
        ["lmrec.evaluate", f"--flagfile={flagfile}", f"--model_dir={tmp_path}/none", "--quiet"],
        env_for_subprocess,
    )
    assert evaluate.returncode == 2 and "Flags parsing error" not in evaluate.stderr


def test_a_path_flag_starting_with_a_tilde_is_in_the_home_folder(monkeypatch):
    """The shell leaves --input_dir=~/x unexpanded; lmrec expands it."""
    monkeypatch.setenv("HOME", "/home/someone")
    values = flags.parse(["--source=folder", "--input_dir=~/Pictures/landmarks"], stage="prepare")
    prepare_config = config.from_flags(config.PrepareConfig, values)
    assert prepare_config.input_dir == "/home/someone/Pictures/landmarks"
    values = flags.parse(["--source=gldv2", "--gldv2_dir=~/gldv2"], stage="prepare")
    assert config.from_flags(config.PrepareConfig, values).source_options["gldv2_dir"] == (
        "/home/someone/gldv2"
    )
