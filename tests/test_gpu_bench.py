"""experiments/gpu/bench_gpu.py in its tiny mode: the real `python -m dynarch backend=jax data=idx` path and plain
Keras on JAX, with TensorFlow (and every package the GPU box lacks) refused; the page and JSON it writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import ROOT

SCRIPT = ROOT / "experiments" / "gpu" / "bench_gpu.py"


def run_script(name: str, *args: str) -> subprocess.CompletedProcess:
    """experiments/gpu/NAME ARGS in a fresh process, as on the GPU box: KERAS_BACKEND unset (the script and
    dynarch choose JAX); fails the test with the output's tail when it does not exit 0."""
    env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    proc = subprocess.run(
        [sys.executable, str(SCRIPT.with_name(name)), *args], capture_output=True, text=True, env=env, timeout=600
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    return proc


def test_tiny_gpu_bench_runs_without_tensorflow_and_writes_its_page(tmp_path: Path):
    run_script("bench_gpu.py", "--tiny", "--loops", "keras", "--plain-spe", "64", "--out", str(tmp_path))
    page = json.loads((tmp_path / "results.json").read_text())
    assert page["device"] and page["versions"]["jax"] and page["versions"]["keras"]
    assert page["tensorflow_in_this_process"] is False
    summary = page["summary"]["mlp-b256"]
    assert set(summary) == {"dynarch:keras", "plain:spe=64", "hand:scan"}
    for key, row in summary.items():
        assert row["ok"] == row["runs"] == 1, (key, row["error"])
        assert row["samples_per_s"] > 0 and row["first_epoch_s"] > 0 and 0 <= row["test_accuracy"] <= 1
    runs = page["results"]["mlp-b256"]
    ratio = runs["dynarch:keras"][0]["samples_per_s"] / runs["plain:spe=64"][0]["samples_per_s"]
    assert summary["dynarch:keras"]["samples_per_s_vs_best_fit"] == ratio
    hand = runs["hand:scan"][0]
    assert hand["compile_s"] > 0 and hand["first_epoch_s"] >= hand["compile_s"]  # compilation counted in epoch 1
    vs_hand = runs["dynarch:keras"][0]["samples_per_s"] / hand["samples_per_s"]
    assert summary["dynarch:keras"]["samples_per_s_vs_hand_fused"] == vs_hand
    # TensorFlow was refused, and the only import attempted is Keras' optional seeding probe
    # (keras.utils.set_random_seed -> module_utils.tensorflow.available), which a machine without TF answers too.
    for run in page["results"]["mlp-b256"]["dynarch:keras"] + [page["guard_this_process"]]:
        for attempt in run["tensorflow_attempts"]:
            assert any(frame.startswith("rng_utils.py:") for frame in attempt["stack"]), attempt
    text = (tmp_path / "results.md").read_text()
    for needle in (
        "Device:",
        "Command:",
        "samples/s",
        "time-to-target",
        "dynarch CLI, trainer.loop=keras",
        "plain Keras fit, steps_per_execution=64",
        "hand-fused JAX",
        "÷ hand-fused",
        "TF import attempts",
    ):
        assert needle in text


def test_the_bench_compares_where_the_partial_batch_compiles(tmp_path: Path):
    """fused-thread / fused-branch: the epoch's partial batch (1,800 = 7 x 256 + 8 here) as its own program
    compiled on a thread, or as a cond branch of the chunk program — the A/B for a GPU, run here on the CPU."""
    args = ["--tiny", "--loops", "fused-thread,fused-branch", "--plain-spe", "", "--no-hand-fused", "--log-compiles"]
    run_script("bench_gpu.py", *args, "--out", str(tmp_path))
    runs = json.loads((tmp_path / "results.json").read_text())["results"]["mlp-b256"]
    compiled = {
        row: [name for name, _ in runs[f"dynarch:{row}"][0]["compiles"]] for row in ("fused-thread", "fused-branch")
    }
    assert "jit(_tail_fn)" in compiled["fused-thread"] and "jit(_tail_fn)" not in compiled["fused-branch"], compiled
    assert all("jit(_chunk_fn)" in names for names in compiled.values()), compiled
    for names in compiled.values():  # training compiles its programs and nothing else (the metrics are inside)
        training = names[names.index("jit(_chunk_fn)") : names.index("jit(test_step)")]
        assert set(training) <= {"jit(_chunk_fn)", "jit(_tail_fn)"}, names
    accuracy = {row: runs[f"dynarch:{row}"][0]["test_accuracy"] for row in compiled}
    assert accuracy["fused-thread"] == accuracy["fused-branch"]  # the same weights, bit for bit (test_fused.py)
    assert "partial batch as a cond branch" in (tmp_path / "results.md").read_text()


def test_tail_compile_experiment_runs_and_writes_its_table(tmp_path: Path):
    """experiments/gpu/tail_compile.py (the A/B's compile split) on the CPU, one small repeat."""
    run_script("tail_compile.py", "--repeats", "1", "--train-size", "600", "--out", str(tmp_path))
    table = (tmp_path / "tail_compile.md").read_text()
    assert "4 full batches + 28" in table  # 600 - 10% validation = 540 = 4 x 128 + 28
    rows = [line for line in table.splitlines() if line.startswith("| ") and "seconds" not in line]
    assert len(rows) == 8 and all(float(line.split("|")[2].split()[0]) > 0 for line in rows), table


def test_epoch_probe_times_the_parts_of_each_fused_call(tmp_path: Path):
    """experiments/gpu/epoch_probe.py (the H100 diagnosis of epoch 2): one small run per mode, each train call's
    parts recorded in the order the stepper runs them, the thread mode's partial batch in its own program."""
    args = ["--repeats", "1", "--epochs", "2", "--train-size", "2000", "--batch", "256"]
    args += ["--combos", "thread/prefetch/noguard,branch/noprefetch/guard", "--out", str(tmp_path)]
    run_script("epoch_probe.py", *args)
    results = json.loads((tmp_path / "epoch_probe.json").read_text())
    assert set(results) == {"thread,prefetch,noguard", "branch,noprefetch,guard"}
    for key, (run,) in results.items():
        assert len(run["epoch_s"]) == 2 and [c["epoch"] for c in run["calls"]] == [0, 1], (key, run)
        for call in run["calls"]:
            assert (
                abs(sum(v for k, v in call.items() if k not in ("epoch", "first", "count", "total")) - call["total"])
                < 1e-6
            )
    thread, branch = results["thread,prefetch,noguard"][0]["calls"], results["branch,noprefetch,guard"][0]["calls"]
    assert thread[0]["trace_tail"] > 0 and branch[0]["trace_tail"] < thread[0]["trace_tail"]  # branch: no own program
    assert "## thread,prefetch,noguard" in (tmp_path / "epoch_probe.md").read_text()
