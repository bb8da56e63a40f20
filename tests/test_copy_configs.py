"""The configs ship with the package and `python -m lmrec.copy_configs` puts them in place."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile

from lmrec import config, copy_configs, shipped_configs
from tests.conftest import REPO

REPO_CONFIGS = sorted(
    str(path.relative_to(REPO / "configs")) for path in (REPO / "configs").rglob("*.cfg")
)


def test_every_config_is_copied_and_parses_from_the_copy(tmp_path, monkeypatch):
    assert shipped_configs.bundled_files() == REPO_CONFIGS
    outcome = copy_configs.copy_configs(str(tmp_path))
    assert outcome["copied"] == REPO_CONFIGS
    for relative in REPO_CONFIGS:
        assert (tmp_path / "configs" / relative).read_bytes() == (
            REPO / "configs" / relative
        ).read_bytes()
    assert not (tmp_path / "configs" / "__init__.py").exists()
    # The nested includes (configs/common.cfg, configs/recipes/..., configs/datasets/...)
    # resolve against the working directory: the copy must work from there alone.
    monkeypatch.chdir(tmp_path)
    experiment = config.experiment_from_flagfile("configs/vietnam_landmarks_lite0.cfg")
    assert experiment.model.backbone == "efficientnet_lite0"
    assert experiment.data.data_dir.startswith("tf_records/")


def test_an_edited_config_is_kept_unless_overwrite(tmp_path):
    copy_configs.copy_configs(str(tmp_path))
    edited = tmp_path / "configs" / "demo.cfg"
    edited.write_text("--epochs_frozen=9\n", encoding="utf-8")
    outcome = copy_configs.copy_configs(str(tmp_path))
    assert outcome == {
        "copied": [],
        "unchanged": [name for name in REPO_CONFIGS if name != "demo.cfg"],
        "kept": ["demo.cfg"],
    }
    assert edited.read_text(encoding="utf-8") == "--epochs_frozen=9\n"
    assert copy_configs.copy_configs(str(tmp_path), overwrite=True)["copied"] == ["demo.cfg"]
    assert edited.read_bytes() == (REPO / "configs" / "demo.cfg").read_bytes()


def test_missing_flagfile_names_the_copy_command(tmp_path, env_for_subprocess, monkeypatch):
    monkeypatch.chdir(tmp_path)
    present = str(REPO / "configs/demo.cfg")
    assert shipped_configs.missing_flagfile_hint(["--flagfile", present]) is None
    assert shipped_configs.missing_flagfile_hint(["-flagfile", "configs/demo.cfg"]) is not None
    own = shipped_configs.missing_flagfile_hint(["--flagfile=mine.cfg"])
    assert own.startswith("no flagfile at mine.cfg") and "copy_configs" not in own
    result = subprocess.run(
        [sys.executable, "-m", "lmrec.train", "--flagfile=configs/xception.cfg"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env_for_subprocess,
        timeout=300,
    )
    assert result.returncode == 2
    assert "no flagfile at configs/xception.cfg" in result.stderr
    assert "python -m lmrec.copy_configs" in result.stderr and "Traceback" not in result.stderr


def test_the_wheel_carries_every_config(tmp_path):
    # Built from a copy: a build in the checkout would leave build/ and egg-info behind.
    source = tmp_path / "source"
    source.mkdir()
    for name in ("setup.py", "pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    for name in ("lmrec", "configs"):
        shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run(
        [
            *(sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps"),
            *("--no-build-isolation", "--wheel-dir", str(tmp_path), str(source)),
        ],
        check=True,
        cwd=tmp_path,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("lmrec-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {f"lmrec/bundled_configs/{name}" for name in REPO_CONFIGS} <= names
