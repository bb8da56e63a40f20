"""lmrec.compare: several models, one dataset, one table; a finished entry is not trained twice."""

from __future__ import annotations

import csv
import json
import os

import pytest

from lmrec import compare
from lmrec.errors import UserError
from tests.conftest import REPO

# Trains, exports or runs commands: left out by `pytest -m "not slow"`.
pytestmark = pytest.mark.slow


def _shared_args(data_dir: str, tmp_path) -> list[str]:
    return [
        f"--flagfile={REPO / 'configs' / 'baseline_demo.cfg'}",
        f"--data_dir={data_dir}",
        "--prepare_if_missing=false",
        "--image_size=32",
        "--epochs_frozen=1",
        "--epochs_finetune=1",
        "--steps_per_epoch=2",
        "--batch_size=8",
        "--export_after=false",
        f"--model_dir={tmp_path / 'ignored'}",
    ]


@pytest.fixture
def entry_file(tmp_path) -> str:
    path = tmp_path / "baseline.cfg"
    path.write_text("--backbone=baseline\n--weights=none\n--head=gap_dense512\n")
    return str(path)


def test_compare_trains_each_entry_on_the_same_data_and_writes_the_table(
    demo_records, entry_file, tmp_path
):
    compare_dir = str(tmp_path / "comparison")
    models = f"{entry_file},{entry_file} --head=gem --data_dir={tmp_path / 'elsewhere'}"
    rows = compare.compare(_shared_args(demo_records, tmp_path), models, compare_dir, verbose=False)

    assert [row["name"] for row in rows] == [
        "baseline_gap_dense512_softmax_scratch",
        "baseline_gem_softmax_scratch",
    ]
    # The entry's own --data_dir does not apply: every model sees the shared data.
    assert {row["data_dir"] for row in rows} == {demo_records}
    gap, gem = rows
    # Same network but for GeM's one trainable exponent p.
    assert gem["params_trainable"] == gap["params_trainable"] + 1
    for row in rows:
        assert row["params_total"] == row["params_trainable"] + row["params_non_trainable"]
        assert 0.0 <= row["val_accuracy"] <= 1.0 and 0.0 <= row["train_accuracy"] <= 1.0
        assert row["evaluated_images"] == 8 * 5  # the demo records' validation split
        assert 0.0 < row["gap"] <= 1.0 and row["seconds_per_epoch_finetune"] > 0
        assert os.path.isdir(row["model_dir"]) and row["model_dir"].startswith(compare_dir)

    with open(os.path.join(compare_dir, "comparison.md"), encoding="utf-8") as f:
        table = f.read()
    assert "| baseline_gem_softmax_scratch | baseline |" in table
    assert "trainable params" in table and "GAP" in table
    with open(os.path.join(compare_dir, "comparison.csv"), encoding="utf-8") as f:
        csv_rows = list(csv.DictReader(f))
    assert [r["head"] for r in csv_rows] == ["gap_dense512", "gem"]
    with open(os.path.join(compare_dir, "comparison.png"), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    with open(os.path.join(compare_dir, "comparison.json"), encoding="utf-8") as f:
        assert json.load(f)["rows"] == rows


def test_a_rerun_reuses_finished_entries_and_retrains_changed_ones(
    demo_records, entry_file, tmp_path, monkeypatch
):
    compare_dir = str(tmp_path / "comparison")
    shared = _shared_args(demo_records, tmp_path)
    first = compare.compare(shared, entry_file, compare_dir, verbose=False)

    import lmrec.training

    trained = []
    real_train = lmrec.training.train_and_evaluate

    def counting_train(config, **kwargs):
        trained.append(config.model.head)
        return real_train(config, **kwargs)

    monkeypatch.setattr(lmrec.training, "train_and_evaluate", counting_train)
    again = compare.compare(shared, entry_file, compare_dir, verbose=False)
    assert trained == [] and again == first

    # A changed setting of the same entry trains it again.
    changed = compare.compare(shared + ["--dropout=0.5"], entry_file, compare_dir, verbose=False)
    assert trained == ["gap_dense512"] and len(changed) == 1


def test_bad_model_lists_name_the_entry(tmp_path, entry_file):
    with pytest.raises(UserError, match="no flagfile at"):
        compare.split_entries(f"{entry_file},{tmp_path / 'missing.cfg'}")
    with pytest.raises(UserError, match="overrides must be --name=value"):
        compare.split_entries(f"{entry_file} head=gem")
    with pytest.raises(UserError, match="--models is empty"):
        compare.split_entries(" , ")
    assert compare.split_entries(f"{entry_file} --head=gem") == [
        [f"--flagfile={entry_file}", "--head=gem"]
    ]
