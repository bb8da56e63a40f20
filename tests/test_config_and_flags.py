"""Flags and configs: one flag per config field, flagfiles that parse, clear errors."""

from __future__ import annotations

import dataclasses
import glob
import subprocess
import sys

import pytest
from absl import flags as absl_flags

from lmrec import config, flags
from lmrec.models import backbones, heads
from tests.conftest import REPO


def test_every_config_field_has_one_flag_with_the_same_default():
    table = {name: cls for cls, name, _ in flags.FLAG_TABLE}
    assert len(table) == len(flags.FLAG_TABLE), "a flag is defined twice"
    fields = {}
    for cls in config.ALL_CONFIG_CLASSES:
        for field in dataclasses.fields(cls):
            fields.setdefault(field.name, field.default)
    assert set(fields) == set(table)
    parsed = flags.parse([])
    for name, default in fields.items():
        assert parsed[name].value == default, name


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
        prepare={"input_dir": "/photos/with space/ünïcode"},
    )
    path = tmp_path / "flags.cfg"
    path.write_text(experiment.to_flagfile(), encoding="utf-8")
    assert config.experiment_from_flagfile(str(path)) == experiment
    assert config.ExperimentConfig.from_dict(experiment.to_dict()) == experiment


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
