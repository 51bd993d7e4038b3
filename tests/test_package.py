"""A real package: the wheel carries the configs, the console scripts work from outside the repo."""

import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from conftest import ROOT


@pytest.mark.slow
def test_wheel_installs_into_a_fresh_venv_and_trains_outside_the_repo(tmp_path):
    dist = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(dist), str(ROOT)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    wheel = next(dist.glob("dynarch-*.whl"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    # The dependencies (TensorFlow & co., ~2 GB) come from this environment through a .pth file, which adds
    # the folder but not its own .pth files — so the editable checkout of dynarch stays out of sight.
    site = next((venv / "lib").glob("python3*/site-packages"))
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(venv / "bin" / "python"),
            "install",
            "-q",
            "--no-deps",
            str(wheel),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    work = tmp_path / "elsewhere"
    work.mkdir()
    where = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import dynarch; print(dynarch.__file__)"],
        cwd=work,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert Path(where).is_relative_to(venv), where  # the installed wheel, not the checkout
    inspect = subprocess.run(
        [str(venv / "bin" / "dynarch-inspect"), "+schedule=grow"], cwd=work, capture_output=True, text=True, timeout=120
    )
    assert inspect.returncode == 0 and "phase 1: deep" in inspect.stdout, inspect.stderr[-2000:]
    completion = subprocess.run(
        [str(venv / "bin" / "dynarch"), "-sc", "query=bash"],
        cwd=work,
        capture_output=True,
        text=True,
        timeout=120,
        env={"COMP_LINE": "dynarch model=c", "PATH": str(venv / "bin")},
    )
    assert completion.returncode == 0 and "model=cnn" in completion.stdout, (
        completion.stdout + completion.stderr[-1000:]
    )
    run = subprocess.run(
        [
            str(venv / "bin" / "dynarch"),
            "data=mnist_subset",
            "data.limit_train=300",
            "trainer.epochs=1",
            "trainer.verbose=0",
            f"hydra.run.dir={work / 'run'}",
        ],
        cwd=work,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert (work / "run" / "checkpoint" / "manifest.json").is_file() and "test accuracy" in run.stdout
    evaluate = subprocess.run(
        [str(venv / "bin" / "dynarch-evaluate"), str(work / "run")],
        cwd=work,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert evaluate.returncode == 0, evaluate.stderr[-2000:]
