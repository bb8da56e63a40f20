"""Strategies by name: mirrored over two logical CPUs, and two workers on loopback."""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys

import h5py
import keras
import numpy as np
import pytest
import tensorflow as tf

from lmrec import distribute, resume
from lmrec.errors import UserError
from tests.conftest import REPO, TINY_RUN

# Trains, exports or runs commands: left out by `pytest -m "not slow"`.
pytestmark = pytest.mark.slow

TINY = {**TINY_RUN, "epochs_frozen": 1, "epochs_finetune": 1, "batch_size": 8}


def _flags(settings: dict) -> list[str]:
    return [f"--{key}={value}" for key, value in settings.items()]


def test_lr_scaling_follows_the_replicas():
    assert distribute.lr_scale("none", 8) == 1.0
    assert distribute.lr_scale("linear", 8) == 8.0
    assert distribute.lr_scale("sqrt", 4) == 2.0
    with pytest.raises(
        UserError,
        match="--lr_scaling='cubic'; valid learning-rate scaling names: none, linear, sqrt",
    ):
        distribute.lr_scale("cubic", 2)


@pytest.mark.parametrize(
    "tf_config, message",
    [
        (None, "TF_CONFIG environment variable, which is not set"),
        ("{not json", "TF_CONFIG is not valid"),
        ('{"cluster": {"worker": ["a:1"]}}', "TF_CONFIG is not valid"),
        (
            '{"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 3}}',
            "task index 3 is not in its worker list",
        ),
    ],
)
def test_multi_worker_explains_a_missing_or_bad_tf_config(monkeypatch, tf_config, message):
    if tf_config is None:
        monkeypatch.delenv("TF_CONFIG", raising=False)
    else:
        monkeypatch.setenv("TF_CONFIG", tf_config)
    with pytest.raises(UserError, match=message):
        distribute.get_strategy("multi_worker")


def test_tpu_without_a_tpu_says_how_to_get_one(monkeypatch):
    monkeypatch.delenv("TPU_NAME", raising=False)
    with pytest.raises(UserError, match="--strategy=tpu found no TPU.*Colab"):
        distribute.get_strategy("tpu")


def test_the_default_strategy_is_its_own_chief(tmp_path):
    strategy = distribute.get_strategy("default")
    assert distribute.is_chief(strategy)
    assert distribute.worker_model_dir(str(tmp_path), strategy) == str(tmp_path)
    assert distribute.global_batch_size(8, strategy) == 8


MIRRORED_SCRIPT = """
import json, sys
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from lmrec import config
from lmrec.train import train_and_evaluate
experiment = config.experiment_from_flagfile(sys.argv[1], *sys.argv[2:])
result = train_and_evaluate(experiment, verbose=False)
print("RESULT " + json.dumps({"steps": result.steps, "history": result.history}))
"""


def test_mirrored_over_two_logical_cpus_batches_per_replica_and_scales_the_rate(
    tmp_path, demo_records, env_for_subprocess
):
    settings = dict(
        TINY,
        data_dir=demo_records,
        model_dir=tmp_path / "run",
        strategy="mirrored",
        lr_scaling="linear",
        lr_schedule="constant",
    )
    completed = subprocess.run(
        [
            sys.executable,
            "-c",
            MIRRORED_SCRIPT,
            str(REPO / "configs" / "baseline_demo.cfg"),
            *_flags(settings),
        ],
        cwd=REPO,
        env=env_for_subprocess,
        capture_output=True,
        timeout=600,
    )
    assert completed.returncode == 0, completed.stderr.decode()[-3000:]
    line = [x for x in completed.stdout.decode().splitlines() if x.startswith("RESULT ")][-1]
    result = json.loads(line[len("RESULT ") :])
    with open(os.path.join(demo_records, "stats.json")) as f:
        train_images = json.load(f)["totals"]["train"]
    # A global batch of 2 replicas x 8: one pass is ceil(n / 16) steps per epoch.
    steps = math.ceil(train_images / 16)
    assert result["steps"] == {"frozen": steps, "finetune": steps}
    # baseline_demo.cfg's rates (3e-3, 2e-3), doubled for two replicas.
    rates = [row["learning_rate"] for row in result["history"]]
    assert rates == pytest.approx([6e-3, 4e-3])


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _weights(path: str) -> dict[str, np.ndarray]:
    arrays = {}
    with h5py.File(path, "r") as f:
        f.visititems(
            lambda name, item: (
                arrays.__setitem__(name, item[()]) if isinstance(item, h5py.Dataset) else None
            )
        )
    return arrays


def test_two_workers_on_loopback_train_in_lockstep_to_identical_weights(
    tmp_path, demo_records, env_for_subprocess
):
    model_dir = str(tmp_path / "run")
    settings = dict(
        TINY,
        data_dir=demo_records,
        model_dir=model_dir,
        strategy="multi_worker",
        steps_per_epoch=3,
    )
    workers = [f"127.0.0.1:{port}" for port in _free_ports(2)]
    processes = []
    for index in range(2):
        env = dict(env_for_subprocess)
        env["TF_CONFIG"] = json.dumps(
            {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
        )
        command = [
            sys.executable,
            "-m",
            "lmrec.train",
            f"--flagfile={REPO / 'configs' / 'baseline_demo.cfg'}",
            *_flags(settings),
        ]
        processes.append(
            subprocess.Popen(
                command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
            )
        )
    errors = []
    for process in processes:
        try:
            _, err = process.communicate(timeout=400)
        except subprocess.TimeoutExpired:
            for p in processes:
                p.kill()
            pytest.fail("the two workers did not finish within 400 s")
        errors.append(err.decode())
        assert process.returncode == 0, err.decode()[-3000:]
    assert "2 replica(s)" in errors[0] and "This is worker 0 (the chief" in errors[0]
    assert "This is worker 1" in errors[1]
    # Moving means and variances only agree when BatchNorm syncs its batch statistics.
    assert "BatchNorm layers compute their statistics over all 2 replicas" in errors[0]

    other_dir = os.path.join(model_dir, "workers", "worker-1")
    chief = _weights(os.path.join(model_dir, "checkpoints", "last.weights.h5"))
    other = _weights(os.path.join(other_dir, "checkpoints", "last.weights.h5"))
    assert chief.keys() == other.keys() and len(chief) > 4
    for name in chief:
        np.testing.assert_array_equal(chief[name], other[name], err_msg=name)
    for folder in (model_dir, other_dir):
        assert resume.read(folder).steps == {"frozen": 3, "finetune": 3}


def test_sync_batchnorm_reaches_nested_models_and_skips_one_replica():
    inner = keras.Sequential([keras.layers.Conv2D(2, 3), keras.layers.BatchNormalization()])
    model = keras.Sequential([keras.Input((8, 8, 3)), inner, keras.layers.BatchNormalization()])
    one = tf.distribute.get_strategy()
    assert distribute.sync_batchnorm(model, one) == 0
    assert not any(layer.synchronized for layer in (inner.layers[1], model.layers[1]))

    class TwoReplicas:
        num_replicas_in_sync = 2

    assert distribute.sync_batchnorm(model, TwoReplicas()) == 2
    assert inner.layers[1].synchronized and model.layers[1].synchronized
