"""Schedules: the architecture changes during one run — weights, optimizer state, RNG and data position
carried at each boundary, validated before TensorFlow, resumable anywhere."""

import json
import subprocess
import sys

import keras
import numpy as np
import pytest
from conftest import ROOT, run_config
from helpers import run_module_reporting_tf

from dynarch.checkpoint import load_checkpoint
from dynarch.errors import ConfigError
from dynarch.train import train

SMALL = [
    "data=mnist_subset",
    "data.limit_train=600",
    "data.limit_test=200",
    "trainer.verbose=0",
    "trainer.steps_per_execution=4",
    "trainer.batch_size=32",
    "trainer.checkpoint_every=8",
]


def sha(run_dir):
    return json.loads((run_dir / "checkpoint" / "manifest.json").read_text())["weights_sha256"]


def boundary_report(run_dir, k=1):
    return json.loads((run_dir / f"migration-phase-{k}.json").read_text())


@pytest.mark.parametrize(
    "optimizer", [[], ["optimizer=adam_cosine", "optimizer.warmup_steps=20", "optimizer.decay_steps=60"]]
)
def test_a_boundary_that_changes_nothing_is_invisible(tmp_path, optimizer):
    """Weights, optimizer slots, step (so the learning-rate schedule's position), RNG and data position all
    cross the boundary exactly."""
    plain, scheduled = tmp_path / "plain", tmp_path / "scheduled"
    train(run_config([*SMALL, *optimizer, "trainer.epochs=3"]), plain)
    metrics = train(run_config([*SMALL, *optimizer, "+schedule={phases:[{epochs:2},{epochs:1}]}"]), scheduled)
    assert sha(plain) == sha(scheduled)
    report = boundary_report(scheduled)
    assert report["counts"] == {"copied": 4, "adapted": 0, "reinitialized": 0, "dropped": 0}
    assert report["output_change"] == 0.0 and [p["epochs"] for p in metrics["phases"]] == [2, 1]


@pytest.mark.parametrize(
    "overrides,schedule",
    [
        ([], "grow"),
        (["model=cnn", "data.limit_train=200"], "cnn_widen"),
        (["model=resnet_mlp"], "{phases:[{epochs:1},{model:{blocks:{res2:{enabled:true}}},epochs:1}]}"),
    ],
)
def test_growth_preserves_the_function_at_the_boundary(tmp_path, overrides, schedule):
    metrics = train(run_config([*SMALL, *overrides, f"+schedule={schedule}"]), tmp_path / "run")
    report = boundary_report(tmp_path / "run")
    assert report["output_change"] < 1e-5, report["notes"]
    assert report["counts"]["dropped"] == 0 and len(metrics["phases"]) == 2


def test_one_run_one_story(tmp_path):
    out = tmp_path / "run"
    metrics = train(run_config([*SMALL, "+schedule=drop_dense"]), out)
    rows = (out / "history.csv").read_text().splitlines()
    header = rows[0].split(",")
    assert header[:2] == ["epoch", "phase"] and [r.split(",")[0] for r in rows[1:]] == ["1", "2", "3", "4", "5"]
    assert [r.split(",")[1] for r in rows[1:]] == ["0", "0", "1", "1", "1"]
    assert [p["name"] for p in metrics["phases"]] == ["base", "no_dense"]
    assert metrics["phases"][1]["migration"]["dropped"] == 2 and metrics["phases"][1]["params"] == 7_850
    assert (out / "model.md").is_file() and (out / "model-phase-1.md").is_file()
    assert (out / "migration-phase-1.md").read_text().count("dropped") >= 2
    manifest = load_checkpoint(out).manifest
    assert [p["name"] for p in manifest["schedule"]] == ["base", "no_dense"]
    assert set(load_checkpoint(out).tensors) == {"head/kernel", "head/bias"}


def test_optimizer_slots_of_copied_variables_are_carried_exactly():
    from dynarch.boundary import migrate_boundary
    from dynarch.build import build_model
    from dynarch.optim import make_optimizer
    from dynarch.resume import optimizer_state_variables

    run = run_config([*SMALL, "+schedule=grow"])
    models = []
    for phase in run.phases:
        model = build_model(phase.arch)
        model.compile(optimizer=make_optimizer(phase.optimizer), loss="sparse_categorical_crossentropy")
        model.optimizer.build(model.trainable_variables)
        models.append(model)
    rng = np.random.default_rng(0)
    x, y = rng.random((64, 28, 28, 1), np.float32), rng.integers(0, 10, 64)
    models[0].fit(x, y, batch_size=16, epochs=1, verbose=0)
    migrate_boundary(
        models[0], models[1], run.phases[0], run.phases[1], new_blocks="identity", seed=1, lr_changed=False
    )
    old, new = (optimizer_state_variables(m.optimizer) for m in models)
    assert int(new["iteration"].numpy()) == 4
    for key in ("dense_kernel_momentum", "dense_kernel_velocity", "head_bias_momentum", "head_kernel_velocity"):
        assert np.array_equal(old[key].numpy(), new[key].numpy()) and np.abs(new[key].numpy()).sum() > 0, key
    assert not np.abs(new["extra_kernel_momentum"].numpy()).any()  # a new block starts with fresh slots


def test_killed_during_the_migration_resumes_to_the_same_weights(tmp_path, monkeypatch):
    import dynarch.boundary

    reference, out = tmp_path / "ref", tmp_path / "run"
    train(run_config([*SMALL, "+schedule=grow"]), reference)

    def die(*args, **kwargs):
        raise RuntimeError("killed inside the boundary")

    with monkeypatch.context() as m:
        m.setattr(dynarch.boundary, "migrate_boundary", die)
        with pytest.raises(RuntimeError, match="killed inside the boundary"):
            train(run_config([*SMALL, "+schedule=grow"]), out)
    assert not (out / "checkpoint").exists() and not (out / "migration-phase-1.json").exists()
    train(run_config([*SMALL, "+schedule=grow", "resume=true"]), out, resume=True)
    assert sha(out) == sha(reference)


def test_plateau_ends_a_phase_and_the_run_grows(tmp_path):
    # min_delta 1.0 on val_accuracy: no epoch can improve on the first by that much, so the phase ends
    # after 1 + patience epochs, before its cap of 4.
    schedule = (
        "{phases:[{until:{plateau:{monitor:val_accuracy,patience:1,min_delta:1.0},max_epochs:4}},{arch:deep,epochs:1}]}"
    )
    metrics = train(run_config([*SMALL, f"+schedule={schedule}"]), tmp_path / "run")
    assert [p["epochs"] for p in metrics["phases"]] == [2, 1] and metrics["epochs"] == 3


def test_plateau_rule():
    from dynarch.schedule import Plateau

    rule = Plateau(monitor="val_loss", patience=2, min_delta=0.01)
    assert not rule.reached([1.0, 0.9, 0.895])
    assert rule.reached([1.0, 0.9, 0.895, 0.899])
    assert Plateau(monitor="val_accuracy", patience=1).reached([0.5, 0.6, 0.6])


def test_early_stopping_keeps_its_state_across_epochs(tmp_path):
    """One fit per phase: EarlyStopping(patience=1) that stops after 2 epochs does, out of 6."""
    stopper = keras.callbacks.EarlyStopping(monitor="loss", patience=1, min_delta=10.0)
    metrics = train(run_config([*SMALL, "trainer.epochs=6"]), tmp_path / "run", callbacks=[stopper])
    assert metrics["epochs"] == 2 and stopper.stopped_epoch == 1
    assert len((tmp_path / "run" / "history.csv").read_text().splitlines()) == 3


@pytest.mark.parametrize(
    "override,needles",
    [
        ("schedule.phases.1.arch=nope", ["schedule.phases[1].arch", "no variant named 'nope'"]),
        ("+schedule.phases.1.model={blocks:{extra:{units:-1}}}", ["schedule.phases[1].model.blocks.extra.units"]),
        ("+schedule.phases.0.until={max_epochs:3}", ["schedule.phases[0]", "exactly one"]),
        ("+schedule.phases.1.optimizer={lr:-1}", ["schedule.phases[1].optimizer.lr"]),
    ],
)
def test_a_bad_schedule_fails_fast_without_tensorflow(tmp_path, override, needles):
    code = (
        "import sys, runpy\n"
        f"sys.argv = ['dynarch', '+schedule=grow', {override!r}, 'hydra.run.dir={tmp_path}/r']\n"
        "try:\n    runpy.run_module('dynarch', run_name='__main__')\n"
        "except SystemExit as e:\n    print('EXIT', e.code)\n"
        "print('TF_IMPORTED' if 'tensorflow' in sys.modules else 'NO_TF')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.stdout.strip().endswith("EXIT 2\nNO_TF"), proc.stdout[-800:] + proc.stderr[-800:]
    for needle in needles:
        assert needle in proc.stderr, proc.stderr[-1500:]
    assert "fix:" in proc.stderr and "Traceback" not in proc.stderr


def test_schedule_errors_name_the_phase():
    with pytest.raises(ConfigError, match=r"schedule.phases\[1\].arch(?s:.*)Did you mean 'deep'"):
        run_config(["+schedule=grow", "schedule.phases.1.arch=deeep"])


def _cli(out, *extra):
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "dynarch",
            *SMALL,
            "data.limit_train=1200",
            "+schedule=grow",
            f"hydra.run.dir={out}",
            *extra,
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.slow
def test_sigkill_anywhere_in_a_scheduled_run_then_resume_is_bitwise_identical(tmp_path):
    """Kill points inside phase 0, near the boundary and inside phase 1 (chosen by the step reached)."""
    import random
    import time

    from dynarch.resume import STATE_DIR, load_latest_state

    ref = tmp_path / "ref"
    assert _cli(ref).wait(timeout=300) == 0
    rng, phases_hit = random.Random(11), set()
    for attempt in range(10):
        out = tmp_path / f"killed{attempt}"
        proc = _cli(out)
        target_step = rng.randint(8, 170)  # 34 steps/epoch, 5 epochs; the boundary is at step 68
        while proc.poll() is None:
            latest = out / STATE_DIR / "latest"
            if latest.exists() and int(latest.read_text().strip().split("-")[1]) >= target_step:
                break
            time.sleep(0.01)  # polling for a condition (the step reached), not a timed kill
        proc.kill()
        proc.wait()
        if (out / "checkpoint").exists():
            continue  # finished before the kill landed
        killed = load_latest_state(out)
        phases_hit.add(killed.manifest["phase"])
        resumed = _cli(out, "resume=true")
        assert resumed.wait(timeout=300) == 0, resumed.stderr.read()[-2000:]
        assert sha(out) == sha(ref), f"kill at step {killed.manifest['step']} (phase {killed.manifest['phase']})"
        if len(phases_hit) == 2:
            break
    assert phases_hit == {0, 1}


def test_inspect_shows_every_phase_without_tensorflow():
    proc = run_module_reporting_tf("dynarch.inspect", ["+schedule=grow"])
    out = proc.stdout
    assert "EXIT 0" in out and out.strip().endswith("NO_TF"), out + proc.stderr
    assert "schedule grow: 2 phases, 5 epochs in all" in out
    assert "phase 1: deep, 3 epochs; at the boundary: +extra" in out
    assert "total params 101,770" in out and "total params 118,282" in out


def test_a_rest_phase_must_be_left_some_epochs():
    with pytest.raises(
        ConfigError,
        match=r"(?s)trainer.epochs: the phases before the last.*can take 4 epochs"
        r".*expected: trainer.epochs > 4",
    ):
        run_config(["+schedule=grow_on_plateau", "trainer.epochs=2"])
    assert run_config(["+schedule=grow_on_plateau", "trainer.epochs=5"]).total_epochs == 5


def test_a_trainer_epochs_no_phase_reads_is_said_not_ignored_silently(tmp_path, caplog):
    """grow's phases set their own lengths (2 + 3): trainer.epochs=2 cannot shorten the run — the log says so;
    a schedule whose last phase is `epochs: rest` reads it, and nothing is said."""
    from dynarch.schedule import unused_epochs_note

    grow = run_config(["data=mnist_subset", "+schedule=grow", "trainer.epochs=2"])
    note = unused_epochs_note(grow.schedule, grow.phases, grow.trainer.epochs)
    assert note and "trainer.epochs=2 is not used" in note and "(5 epochs in all)" in note
    same = run_config(["data=mnist_subset", "+schedule=grow", "trainer.epochs=5"])
    assert unused_epochs_note(same.schedule, same.phases, same.trainer.epochs) is None
    rest = run_config(["data=mnist_subset", "+schedule=grow_on_plateau", "trainer.epochs=9"])
    assert unused_epochs_note(rest.schedule, rest.phases, rest.trainer.epochs) is None
    plain = run_config(["data=mnist_subset", "trainer.epochs=2"])
    assert unused_epochs_note(plain.schedule, plain.phases, plain.trainer.epochs) is None
    run = run_config(
        [
            "data=mnist_subset",
            "data.limit_train=200",
            "data.limit_test=100",
            "+schedule=grow",
            "trainer.epochs=2",
            "trainer.verbose=0",
        ]
    )
    with caplog.at_level("INFO", logger="dynarch.train"):
        metrics = train(run, tmp_path / "run")
    assert metrics["epochs"] == 5 and "trainer.epochs=2 is not used" in caplog.text
