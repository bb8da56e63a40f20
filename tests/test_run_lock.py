"""One run per model_dir, dataset or --output; a killed holder frees it; leftovers go."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from lmrec import run_lock
from lmrec.config import PrepareConfig
from lmrec.errors import UserError
from lmrec.tag_store import Row, TagStore
from tests.conftest import REPO, tiny_run_config

# Takes run_lock.<kind>(*args), says so, and holds it until killed.
HOLDER = """
import sys, time
from lmrec import run_lock
kind, *args = sys.argv[1:]
with getattr(run_lock, kind)(*args):
    print("locked", flush=True)
    time.sleep(600)
"""


@pytest.fixture
def holder(env_for_subprocess):
    """Starts a process holding a lock: holder("folder", path) -> the Popen."""
    started = []

    def start(kind: str, *args: str) -> subprocess.Popen:
        process = subprocess.Popen(
            [sys.executable, "-c", HOLDER, kind, *args],
            stdout=subprocess.PIPE,
            env=env_for_subprocess,
            text=True,
        )
        started.append(process)
        assert process.stdout.readline().strip() == "locked"
        return process

    yield start
    for process in started:
        process.kill()
        process.wait()


def _refused_by(process: subprocess.Popen, error: pytest.ExceptionInfo) -> None:
    message = str(error.value)
    assert f"is in use by process {process.pid} (python -c " in message, message
    assert "started 20" in message and "; wait for it" in message
    assert error.value.holder["pid"] == process.pid


def test_a_second_holder_is_refused_with_the_first_ones_pid_and_command(tmp_path, holder):
    model_dir = str(tmp_path / "runs" / "demo")
    first = holder("folder", model_dir)
    with pytest.raises(run_lock.InUse) as error:
        run_lock.folder(model_dir).__enter__()
    _refused_by(first, error)
    assert str(error.value).startswith(f"model_dir {model_dir} is in use")
    assert str(error.value).endswith("wait for it or use another --model_dir")
    assert isinstance(error.value, UserError)


def test_the_lock_is_free_again_once_its_holder_is_killed(tmp_path, holder):
    model_dir = str(tmp_path / "demo")
    first = holder("folder", model_dir)
    with pytest.raises(run_lock.InUse):
        run_lock.folder(model_dir).__enter__()
    first.send_signal(signal.SIGKILL)
    first.wait()
    with run_lock.folder(model_dir) as holding:
        assert holding.first and holding.locked
    assert os.path.exists(os.path.join(model_dir, run_lock.LOCK_FILE))  # left, harmless


def test_nested_holds_in_one_process_count_and_release_at_the_outermost(tmp_path, holder):
    model_dir = str(tmp_path / "demo")
    lock_file = os.path.join(model_dir, run_lock.LOCK_FILE)
    with run_lock.folder(model_dir) as outer:
        with run_lock.folder(os.path.join(model_dir, ".")) as inner:  # the same folder
            assert outer.first and not inner.first
        assert run_lock.is_held(lock_file)
    assert not run_lock.is_held(lock_file)
    holder("folder", model_dir)  # another process gets it: nothing was left locked


def test_train_refuses_a_model_dir_in_use_and_cleans_leftovers_when_free(
    tmp_path, holder, demo_records, monkeypatch, capsys
):
    from lmrec import train
    from lmrec.training import data as training_data

    config = tiny_run_config(str(tmp_path), demo_records)
    model_dir = config.train.model_dir
    first = holder("folder", model_dir)
    os.makedirs(os.path.join(model_dir, "resume"))
    stale = os.path.join(model_dir, "resume", ".tmp-3kq_z8ab-ckpt-000004.weights.h5")
    open(stale, "wb").close()
    with pytest.raises(UserError) as error:
        train.train_and_evaluate(config, verbose=False)
    _refused_by(first, error)
    assert os.path.exists(stale)  # the holder's, maybe: left alone
    first.kill()
    first.wait()

    class Stop(Exception):
        pass

    def stop(*args, **kwargs):
        assert run_lock.is_held(os.path.join(model_dir, run_lock.LOCK_FILE))
        raise Stop

    monkeypatch.setattr(training_data, "ensure_data", stop)
    with pytest.raises(Stop):
        train.train_and_evaluate(config, verbose=True)
    assert not os.path.exists(stale)
    assert (
        f"Removed 1 leftovers of an interrupted run in {model_dir}: "
        f"{os.path.join('resume', os.path.basename(stale))}"
    ) in capsys.readouterr().err
    assert not run_lock.is_held(os.path.join(model_dir, run_lock.LOCK_FILE))


def test_lr_find_compare_and_evaluate_refuse_a_folder_in_use(tmp_path, holder, demo_records):
    from lmrec import compare, evaluate, lr_find
    from lmrec.config import LrFindConfig

    config = tiny_run_config(str(tmp_path), demo_records)
    first = holder("folder", config.train.model_dir)
    with pytest.raises(UserError) as error:
        lr_find.lr_find(config, LrFindConfig(), verbose=False)
    _refused_by(first, error)
    assert str(error.value).endswith("or use another --lr_find_dir")
    with pytest.raises(UserError) as error:
        evaluate.evaluate(config.train.model_dir, verbose=False)
    _refused_by(first, error)
    assert str(error.value).endswith("; wait for it")

    compare_dir = str(tmp_path / "comparison")
    second = holder("folder", compare_dir)
    demo_cfg = REPO / "configs" / "baseline_demo.cfg"
    shared = [f"--flagfile={demo_cfg}", f"--data_dir={demo_records}"]
    with pytest.raises(UserError) as error:
        compare.compare(shared, f"{demo_cfg} --head=gem", compare_dir, verbose=False)
    _refused_by(second, error)
    assert str(error.value).startswith(f"compare_dir {compare_dir} is in use")


def test_evaluate_does_not_create_a_missing_model_dir(tmp_path):
    from lmrec import evaluate

    with pytest.raises(UserError, match="is not an lmrec model_dir"):
        evaluate.evaluate(str(tmp_path / "typo"), verbose=False)
    assert not os.path.exists(tmp_path / "typo")


def test_leftovers_under_another_lock_are_kept(tmp_path):
    root = tmp_path / "runs"
    mine = [".tmp-abc12345-history.csv", "logs/.tmp-abc12345-events", ".export.k2j4x_9a.partial"]
    theirs = [
        "other_run/.lock",  # another model_dir
        "other_run/.tmp-abc12345-state.json",
        ".tf_records.lock",  # a dataset beside its lock
        "tf_records/.tmp-abc12345-labels.json",
        ".tf_records.k2j4x_9a.partial/train-0.tfrecord",
        ".tf_records.inprogress/.tmp-abc12345-plan.json",
        "tags.csv.lock",  # predict's --output
        ".tmp-abc12345-tags.csv",
    ]
    for relative in mine + theirs:
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.mkdir() if relative.endswith(".partial") else path.write_bytes(b"")
    with run_lock.folder(str(root), verbose=False):
        pass
    assert not [relative for relative in mine if (root / relative).exists()]
    assert all((root / relative).exists() for relative in theirs)


def test_prepare_refuses_a_dataset_being_prepared(tmp_path, holder, env_for_subprocess):
    out = str(tmp_path / "tf_records")
    first = holder("dataset", out, "demo")
    command = [sys.executable, "-m", "lmrec.prepare", "--source=demo", f"--output_dir={out}"]
    command += ["--name=demo", "--demo_images_per_class=2", "--demo_image_size=32"]
    finished = subprocess.run(command, capture_output=True, text=True, env=env_for_subprocess)
    assert finished.returncode == 2, finished.stderr
    assert (
        f"dataset {os.path.join(out, 'demo')} is in use by process {first.pid} (python -c "
    ) in finished.stderr
    assert "wait for it or use another --name" in finished.stderr
    assert not os.path.exists(os.path.join(out, "demo"))
    assert not os.path.exists(os.path.join(out, ".demo.inprogress"))


def test_prepare_removes_a_killed_prepares_partial_folder(tmp_path, capsys):
    from lmrec.data import prepare

    out = tmp_path / "tf_records"
    (out / ".demo.k2j4x_9a.partial").mkdir(parents=True)
    (out / ".demo.v2.k2j4x_9a.partial").mkdir()  # another dataset's
    config = PrepareConfig.build(
        source="demo", output_dir=str(out), name="demo", demo_images_per_class=2,
        demo_image_size=32,
    )  # fmt: skip
    prepare.prepare(config, verbose=True)
    assert sorted(os.listdir(out)) == [".demo.lock", ".demo.v2.k2j4x_9a.partial", "demo"]
    assert f"Removed 1 leftovers of an interrupted run in {out}: .demo.k2j4x_9a.partial" in (
        capsys.readouterr().err
    )


def test_a_tag_store_holds_its_output_until_finished_or_closed(tmp_path, holder):
    output = str(tmp_path / "tags.csv")
    stale = tmp_path / ".tmp-abc12345-tags.csv"
    stale.write_bytes(b"half")
    store = TagStore(output, "model-a", verbose=False)
    assert not stale.exists()
    assert run_lock.is_held(output + run_lock.LOCK_SUFFIX)
    store.add([Row(file="a.jpg", label="x", score=0.9, top=[("x", 0.9)])])
    store.finish(store.rows(["a.jpg"]), [], k=1)
    assert not run_lock.is_held(output + run_lock.LOCK_SUFFIX)

    with pytest.raises(RuntimeError), TagStore(output, "model-a"):
        raise RuntimeError("a batch failed")
    assert not run_lock.is_held(output + run_lock.LOCK_SUFFIX)

    first = holder("output_file", output)
    with pytest.raises(UserError) as error:
        TagStore(output, "model-a")
    _refused_by(first, error)
    assert str(error.value).startswith(f"--output {output} is in use")


def test_a_tag_store_for_another_model_releases_its_lock(tmp_path):
    output = str(tmp_path / "tags.json")
    store = TagStore(output, "model-a")
    store.finish([Row(file="a.jpg", label="x", score=0.9)], [], k=1)
    with pytest.raises(UserError, match="holds tags from model-a"):
        TagStore(output, "model-b")
    assert not run_lock.is_held(output + run_lock.LOCK_SUFFIX)
