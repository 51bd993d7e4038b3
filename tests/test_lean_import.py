"""Keras starts without the optional packages it only probes for (dynarch/runtime/lean.py).

Each Keras case runs in a fresh process, since what a process has imported cannot be undone: the CLI on tiny
data (the run trains and writes metrics.json; at exit the child reports sys.modules and what Keras' probing
modules recorded), or a small script that calls get_runtime first. The finder itself is checked in-process on
a throwaway package.
"""

from __future__ import annotations

import csv
import importlib
import importlib.util
import json
import subprocess
import sys

import pytest
from conftest import ROOT, TINY

from dynarch.runtime import lean

# At exit (atexit runs under the fast exit too): which packages are loaded, and what the Keras/TF modules that
# probe for them recorded (None: "not installed", for the rest of the process).
REPORT = """
import atexit, json, sys
PROBES = {"pandas": ("keras.src.trainers.data_adapters.array_slicing", "pandas"),
          "matplotlib": ("keras.src.visualization.plot_image_gallery", "plt"),
          "sklearn": ("keras.src.wrappers.fixes", "sklearn"),
          "jax": ("tensorflow.lite.python.util", "_jit")}
def report():
    mods = sys.modules
    seen = {k: getattr(mods[m], a, None) is not None for k, (m, a) in PROBES.items() if m in mods}
    loaded = sorted(n for n in ("pandas", "matplotlib", "sklearn", "jax", "scipy", "torch", "tensorflow") if n in mods)
    print("LEAN " + json.dumps({"loaded": loaded, "keras_saw": seen}), flush=True)
"""
CLI = (
    REPORT
    + "atexit.register(report)\nimport runpy\nsys.argv = ['dynarch', *sys.argv[1:]]\n"
    + ("runpy.run_module('dynarch', run_name='__main__', alter_sys=True)\n")
)
# get_runtime, report, then each hidden package that is installed imports normally (argv[2:]).
SCRIPT = REPORT + (
    "from dynarch.runtime import get_runtime\nget_runtime(sys.argv[1])\nreport()\n"
    "import importlib\nfor name in sys.argv[2:]:\n    importlib.import_module(name)\n"
    "print('IMPORTED_AFTER', flush=True)\n"
)
# What this environment has: a fresh `make install` has matplotlib, jax and scipy but not pandas or sklearn;
# a package that is not installed is absent with or without the lean start.
INSTALLED = {n for n in ("pandas", "matplotlib", "sklearn", "jax", "scipy") if importlib.util.find_spec(n)}
AFTER = [m for m in ("pandas", "matplotlib.pyplot", "sklearn", "jax", "scipy.sparse") if m.split(".")[0] in INSTALLED]


def child(code: str, args: list[str], env: dict[str, str] | None = None) -> tuple[dict, str]:
    import os

    full_env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **(env or {})}
    full_env.pop("KERAS_BACKEND", None)
    proc = subprocess.run(
        [sys.executable, "-c", code, *args], cwd=ROOT, capture_output=True, text=True, timeout=300, env=full_env
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("LEAN "))
    return json.loads(line[5:]), proc.stdout


def test_a_tensorflow_cli_run_trains_without_importing_the_optional_packages(tmp_path):
    run = tmp_path / "run"
    got, _ = child(CLI, [*TINY, f"hydra.run.dir={run}"])
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["data_sizes"]["train"] > 0 and (run / "curves.png").is_file()
    # matplotlib: dynarch's own curves.png imports it after Keras started; Keras' gallery recorded it absent.
    assert got["loaded"] == ["matplotlib", "tensorflow"], got
    assert got["keras_saw"] == {"pandas": False, "matplotlib": False, "sklearn": False, "jax": False}, got


def test_the_lean_start_trains_the_same_bits_as_the_full_one(tmp_path):
    """Hiding the optional packages changes what is imported, not what is trained."""
    from conftest import cli
    from helpers import weights_sha

    outs = {switch: tmp_path / f"lean-{switch}" for switch in ("1", "0")}
    for switch, out in outs.items():
        proc = cli(*TINY, f"hydra.run.dir={out}", env={"DYNARCH_LEAN_IMPORTS": switch})
        assert proc.returncode == 0, proc.stderr[-2000:]
    assert weights_sha(outs["1"]) == weights_sha(outs["0"])
    timing = {"epoch_time_s", "samples_per_s"}  # wall-clock columns differ run to run
    curves = [
        [{k: v for k, v in row.items() if k not in timing} for row in csv.DictReader(open(out / "history.csv"))]
        for out in outs.values()
    ]
    assert curves[0] == curves[1] and len(curves[0]) == 2


def test_after_get_runtime_every_hidden_package_imports_normally():
    got, out = child(SCRIPT, ["tensorflow", *AFTER])
    assert got["loaded"] == ["tensorflow"], got
    assert "IMPORTED_AFTER" in out


def test_switched_off_keras_imports_them_as_before():
    got, out = child(SCRIPT, ["tensorflow", *AFTER], env={lean.ENV: "0"})
    assert INSTALLED <= set(got["loaded"]), got
    assert got["keras_saw"] == {name: name in INSTALLED for name in ("pandas", "matplotlib", "sklearn", "jax")}, got
    assert "IMPORTED_AFTER" in out


def test_on_jax_jax_is_imported_and_pandas_sklearn_matplotlib_are_not():
    got, out = child(SCRIPT, ["jax", *AFTER])
    assert "jax" in got["loaded"] and "tensorflow" not in got["loaded"], got
    assert not {"pandas", "sklearn", "matplotlib"} & set(got["loaded"]), got
    assert got["keras_saw"] == {"pandas": False, "matplotlib": False, "sklearn": False}, got
    assert "IMPORTED_AFTER" in out


def test_a_jax_cli_run_trains_without_importing_pandas_or_sklearn(tmp_path):
    run = tmp_path / "run"
    got, _ = child(CLI, [*TINY, "trainer.epochs=1", "backend=jax", f"hydra.run.dir={run}"])
    assert (run / "metrics.json").is_file()
    assert "jax" in got["loaded"] and not {"pandas", "sklearn"} & set(got["loaded"]), got


# ---------------------------------------------------------------- the finder, in-process, on a throwaway package


@pytest.fixture
def fake_pkg(tmp_path, monkeypatch):
    """An importable package `dynarch_lean_fake` listed as hidden for a pseudo-backend `fake`."""
    (tmp_path / "dynarch_lean_fake").mkdir()
    (tmp_path / "dynarch_lean_fake" / "__init__.py").write_text("VALUE = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(lean.HIDDEN, "fake", ("dynarch_lean_fake", "dynarch_lean_not_installed"))
    monkeypatch.delenv(lean.ENV, raising=False)
    yield "dynarch_lean_fake"
    sys.modules.pop("dynarch_lean_fake", None)


def test_inside_the_block_a_hidden_package_is_refused_but_still_found(fake_pkg):
    before = list(sys.meta_path)
    with lean.hide_optional_imports("fake") as finder:
        with pytest.raises(ModuleNotFoundError, match=fake_pkg):
            importlib.import_module(fake_pkg)
        assert fake_pkg not in sys.modules
        assert importlib.util.find_spec(fake_pkg).origin.endswith("__init__.py")  # probes see it installed
        with pytest.raises(ModuleNotFoundError):
            importlib.import_module("dynarch_lean_not_installed")  # absent stays absent
    assert sys.meta_path == before
    assert [name for name, _ in finder.refused] == [fake_pkg]
    assert importlib.import_module(fake_pkg).VALUE == 1  # afterwards: a normal import


def test_an_already_imported_package_and_the_switch_leave_imports_alone(fake_pkg, monkeypatch):
    monkeypatch.setenv(lean.ENV, "0")
    with lean.hide_optional_imports("fake") as finder:
        assert finder is None and importlib.import_module(fake_pkg).VALUE == 1
    monkeypatch.delenv(lean.ENV)
    with lean.hide_optional_imports("fake") as finder:  # already in sys.modules: only the absent name is listed
        assert finder.names == frozenset({"dynarch_lean_not_installed"})
        assert importlib.import_module(fake_pkg).VALUE == 1


def test_the_curves_imports_are_prefetched_on_a_thread():
    """dynarch.artifacts.prefetch_plotting (called as training starts): matplotlib's Figure and Agg canvas are
    imported on a daemon thread, so the curves at the end do not pay for them."""
    code = (
        "import sys\n"
        "from dynarch.artifacts import prefetch_plotting\n"
        "assert 'matplotlib' not in sys.modules\n"
        "thread = prefetch_plotting()\n"
        "assert thread.daemon\n"
        "thread.join()\n"
        "assert {'matplotlib.figure', 'matplotlib.backends.backend_agg'} <= set(sys.modules)\n"
        "print('PREFETCHED')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "PREFETCHED" in proc.stdout, proc.stderr[-2000:]


def test_a_bad_lean_switch_is_one_clear_error(tmp_path):
    from conftest import cli

    proc = cli(*TINY, f"hydra.run.dir={tmp_path / 'run'}", env={"DYNARCH_LEAN_IMPORTS": "maybe"})
    assert proc.returncode != 0
    assert "DYNARCH_LEAN_IMPORTS" in proc.stderr and "maybe" in proc.stderr and "fix:" in proc.stderr
    assert "Traceback" not in proc.stderr
