"""Distribution: strategy choice and errors, MirroredStrategy on 2 logical CPUs vs one device."""

import json
import os
import subprocess
import sys

import pytest
from conftest import ROOT, run_config

from dynarch.errors import ConfigError
from dynarch.runtime.tensorflow import make_strategy


def test_strategy_errors_are_clear(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    monkeypatch.delenv("SLURM_PROCID", raising=False)
    with pytest.raises(ConfigError, match=r"multi_worker needs a cluster description(?s:.*)launch_local"):
        make_strategy(run_config(["trainer.strategy=multi_worker"]).trainer)  # more in test_multiworker.py
    with pytest.raises(ConfigError, match="trainer.strategy"):
        run_config(["trainer.strategy=tpu"])


def test_auto_is_default_on_a_cpu_machine():
    strategy, text = make_strategy(run_config([]).trainer)
    assert text == "default (one device)" and strategy.num_replicas_in_sync == 1


def _run(out, *args, env=None):
    return subprocess.Popen(
        [sys.executable, "-m", "dynarch", *args, f"hydra.run.dir={out}"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )


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
