"""Distribution: strategy choice, chief detection, MirroredStrategy on 2 logical CPUs, 2-worker MWMS."""
import json
import os
import socket
import subprocess
import sys

import pytest

from conftest import ROOT, TINY, run_config
from dynarch.distribute import is_chief, make_strategy, tf_config
from dynarch.errors import ConfigError


@pytest.mark.parametrize("cfg,chief", [
    (None, True),
    ({"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 0}}, True),
    ({"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 1}}, False),
    ({"cluster": {"chief": ["c:1"], "worker": ["a:1"]}, "task": {"type": "worker", "index": 0}}, False),
    ({"cluster": {"chief": ["c:1"], "worker": ["a:1"]}, "task": {"type": "chief", "index": 0}}, True),
])
def test_only_the_chief_writes(monkeypatch, cfg, chief):
    if cfg is None:
        monkeypatch.delenv("TF_CONFIG", raising=False)
    else:
        monkeypatch.setenv("TF_CONFIG", json.dumps(cfg))
    assert is_chief() is chief


def test_strategy_errors_are_clear(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(ConfigError, match="multi_worker needs a cluster description in TF_CONFIG"):
        make_strategy(run_config(["trainer.strategy=multi_worker"]).trainer)
    monkeypatch.setenv("TF_CONFIG", "{oops")
    with pytest.raises(ConfigError, match="TF_CONFIG environment variable is not JSON"):
        tf_config()
    with pytest.raises(ConfigError, match="trainer.strategy"):
        run_config(["trainer.strategy=tpu"])


def test_auto_is_default_on_a_cpu_machine(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    strategy, text = make_strategy(run_config([]).trainer)
    assert text == "default (one device)" and strategy.num_replicas_in_sync == 1


def _run(out, *args, env=None):
    return subprocess.Popen([sys.executable, "-m", "dynarch", *args, f"hydra.run.dir={out}"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})})


COMMON = ["data=mnist_subset", "trainer.epochs=4", "trainer.verbose=0"]


@pytest.mark.slow
def test_mirrored_over_two_logical_cpus_matches_single_device(tmp_path):
    single, mirrored = tmp_path / "single", tmp_path / "mirrored"
    p1 = _run(single, *COMMON)
    p2 = _run(mirrored, *COMMON, "trainer.strategy=mirrored", "trainer.logical_cpus=2")
    assert p1.wait(timeout=600) == 0 and p2.wait(timeout=600) == 0, p2.stderr.read()[-3000:]
    a, b = (json.loads((d / "metrics.json").read_text()) for d in (single, mirrored))
    assert b["strategy"].startswith("mirrored over 2 devices") and a["strategy"] == "default (one device)"
    assert abs(a["test_accuracy"] - b["test_accuracy"]) <= 0.005 + 1e-9, (a["test_accuracy"], b["test_accuracy"])


def _free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


@pytest.mark.slow
def test_multi_worker_two_processes_on_localhost_chief_writes_once(tmp_path):
    workers = [f"127.0.0.1:{p}" for p in _free_ports(2)]
    procs = []
    for index in (0, 1):
        env = {"TF_CONFIG": json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}})}
        procs.append(_run(tmp_path / f"worker{index}", *COMMON, "trainer.epochs=2", "trainer.strategy=multi_worker",
                          env=env))
    codes = [p.wait(timeout=600) for p in procs]
    assert codes == [0, 0], procs[0].stderr.read()[-3000:] + procs[1].stderr.read()[-3000:]
    chief, worker = tmp_path / "worker0", tmp_path / "worker1"
    metrics = json.loads((chief / "metrics.json").read_text())
    assert metrics["strategy"].startswith("multi_worker: worker 0 of 2 workers, 2 replicas")
    assert metrics["test_accuracy"] > 0.5
    assert (chief / "checkpoint" / "weights.safetensors").is_file() and (chief / "state").is_dir()
    assert not (worker / "checkpoint").exists() and not (worker / "state").exists()
    assert not (worker / "metrics.json").exists()
