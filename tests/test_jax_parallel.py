"""JAX on several devices (keras.distribution.DataParallel over XLA host devices) and JAX's persistent
compilation cache. Every JAX process here is a subprocess with TensorFlow blocked (this test process runs
TensorFlow; Keras fixes its backend per process), running the CLI or this file as a script.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import ROOT, run_config  # noqa: E402
from helpers import BACKEND_CFG, ok, run_blocked  # noqa: E402

# 540 training / 60 validation / 200 test examples in batches of 32: every last partial batch (28, 28, 8)
# splits evenly over 2 devices.
CFG = BACKEND_CFG
TWO = ["trainer.strategy=mirrored", "trainer.logical_cpus=2"]


def jax_env() -> dict[str, str]:
    env = {**os.environ, "KERAS_BACKEND": "jax", "PYTHONPATH": str(ROOT)}
    env.pop("XLA_FLAGS", None)  # the device count comes from trainer.logical_cpus, nothing else
    return env


def jax_cli(*args: str) -> subprocess.CompletedProcess:
    return run_blocked("dynarch", *args, env=jax_env())


def jax_driver(*args: str) -> subprocess.CompletedProcess:
    return run_blocked(str(Path(__file__)), *args, env=jax_env())


def last_json(proc: subprocess.CompletedProcess) -> dict:
    return json.loads(ok(proc).stdout.strip().splitlines()[-1])


# -- refusals and the device split (one JAX process, no training) -----------------------------------------
def test_two_host_devices_refusals_and_no_leak_into_the_next_job():
    got = last_json(jax_driver("rules"))
    assert got["devices"] == 2 and got["strategy"].startswith("data parallel over 2 devices")
    assert got["multiple"] == 2 and got["even_splits_ok"]
    assert got["odd_batch"][0] == "trainer.batch_size" and "fix: set trainer.batch_size=32 or 34" in got["odd_batch"][1]
    assert "last batch has 29 examples" in got["odd_tail"] and "fix:" in got["odd_tail"]
    assert "already started in this process with 2 CPU device(s)" in got["recount"] and "fix:" in got["recount"]
    assert "fix:" in got["multi_worker"]
    assert got["after_default_job"] == {"distribution": None, "strategy": "default (one device)", "multiple": 1}


# -- training on two devices ------------------------------------------------------------------------------
@pytest.mark.slow
def test_mirrored_on_two_host_devices_trains_like_one_device(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    ok(jax_cli(*CFG, "backend=jax", f"hydra.run.dir={one}"))
    ok(jax_cli(*CFG, "backend=jax", *TWO, f"hydra.run.dir={two}"))
    m1, m2 = (json.loads((d / "metrics.json").read_text()) for d in (one, two))
    assert m2["strategy"].startswith("data parallel over 2 devices") and "2 XLA host devices" in m2["devices"]
    assert m1["strategy"] == "default (one device)"
    # Same data, same steps; only the order of the gradient sums differs (each device reduces half a batch).
    assert abs(m1["test_loss"] - m2["test_loss"]) < 1e-5 and abs(m1["test_accuracy"] - m2["test_accuracy"]) < 1e-9
    from dynarch.checkpoint import load_checkpoint

    a, b = load_checkpoint(one).tensors, load_checkpoint(two).tensors
    assert max(float(np.abs(a[k] - b[k]).max()) for k in a) < 1e-5
    # and the run resumes on two devices: its train-state restores into the replicated variables
    ok(jax_cli(*CFG, "backend=jax", *TWO, "trainer.epochs=3", f"hydra.run.dir={two}", "resume=true"))
    assert json.loads((two / "metrics.json").read_text())["epochs"] == 3
    # and a one-device run's weights migrate into a two-device run (init_from, every variable carried over)
    warm = tmp_path / "warm"
    ok(
        jax_cli(
            *CFG,
            "backend=jax",
            *TWO,
            "trainer.epochs=1",
            f"init_from={one}",
            "migrate.strict=true",
            f"hydra.run.dir={warm}",
        )
    )
    assert json.loads((warm / "metrics.json").read_text())["migrated_from"]


# -- the persistent compilation cache ---------------------------------------------------------------------
@pytest.mark.slow
def test_a_second_process_reads_its_compiles_from_the_cache(tmp_path):
    cache = tmp_path / "cache"
    first = last_json(jax_driver("compile", str(cache), str(tmp_path / "a")))
    second = last_json(jax_driver("compile", str(cache), str(tmp_path / "b")))
    assert first["cache_hits"] == 0 and first["cache_misses"] > 0 and any(cache.iterdir())
    # Every compile of the second process is served from the cache (counted by JAX's own hit events).
    assert second["cache_misses"] == 0 and second["cache_hits"] == first["cache_misses"], (first, second)
    assert first["compile_seconds"] > 0 and second["compile_seconds"] > 0
    print(f"compile seconds: first process {first['compile_seconds']:.3f}, second {second['compile_seconds']:.3f}")


# -- the JAX side, run as `python tests/test_jax_parallel.py COMMAND ...` ---------------------------------
def _error(fn) -> tuple[str, str] | str:
    from dynarch.errors import DynarchError

    try:
        fn()
    except DynarchError as e:
        return str(e).split(":", 1)[0], str(e)
    return "no error"


def _rules() -> dict:
    import keras

    from dynarch.runtime import get_runtime

    runtime = get_runtime("jax")
    two = run_config([*CFG, "++backend=jax", *TWO])
    odd = run_config([*CFG, "++backend=jax", *TWO, "trainer.batch_size=33"])
    out = {"odd_batch": list(_error(lambda: runtime.configure(odd.trainer, 1)))}
    runtime.configure(two.trainer, 1)  # the process now has 2 XLA host devices: it cannot be changed
    import jax

    out |= {"devices": len(jax.devices()), "strategy": runtime.strategy_text(), "multiple": runtime.batch_multiple()}
    runtime.check_batches({"train": 540, "val": 60, "test": 200}, 32)
    out["even_splits_ok"] = True
    out["odd_tail"] = _error(lambda: runtime.check_batches({"train": 541}, 32))[1]
    three = run_config([*CFG, "++backend=jax", "trainer.strategy=mirrored", "trainer.logical_cpus=3"])
    out["recount"] = _error(lambda: runtime.configure(three.trainer, 1))[1]
    # refused at validation (no cluster) or by the runtime (JAX has no multi-worker path here): never run
    worker = [*CFG, "++backend=jax", "trainer.strategy=multi_worker"]
    out["multi_worker"] = _error(lambda: runtime.configure(run_config(worker).trainer, 1))[1]
    runtime.configure(run_config([*CFG, "++backend=jax", "trainer.strategy=default"]).trainer, 1)
    out["after_default_job"] = {
        "distribution": keras.distribution.distribution(),
        "strategy": runtime.strategy_text(),
        "multiple": runtime.batch_multiple(),
    }
    return out


def _compile(cache: Path, out: Path) -> dict:
    from dynarch.runtime.jax import JaxRuntime
    from dynarch.train import train

    JaxRuntime.enable_compile_cache(cache)
    train(run_config([*CFG, "++backend=jax", "trainer.epochs=1", "trainer.compile_cache=off"]), out)  # ours only
    stats = JaxRuntime.compile_stats()
    return {**stats, "compile_seconds": JaxRuntime.compile_seconds()}


def main(argv: list[str]) -> None:
    command, *args = argv
    result = _rules() if command == "rules" else _compile(Path(args[0]), Path(args[1]))
    assert sys.modules.get("tensorflow") is None  # nothing imported TensorFlow on the way
    print(json.dumps(result, default=str))


if __name__ == "__main__":
    main(sys.argv[1:])
