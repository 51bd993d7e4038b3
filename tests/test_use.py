"""Using a trained run: dynarch.load_run, python -m dynarch.evaluate / predict / export (issue #13 item 4).

One tiny run is trained per module and shared; every command runs on it in-process (main(argv)) except one
subprocess check per command for the `python -m` wiring.
"""

import csv
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import warnings

import numpy as np
import pytest
from conftest import ROOT, TINY

from dynarch import evaluate, export, predict
from dynarch.checkpoint import load_checkpoint
from dynarch.load import load_run, scale_images


def train_tiny(out, overrides=()):
    """Train like the CLI does (config.yaml written), in-process; returns metrics."""
    from omegaconf import OmegaConf

    from dynarch.compose import compose_config, resolve_config
    from dynarch.train import train

    cfg, context = compose_config([*TINY, "trainer.epochs=1", *overrides])
    run, container = resolve_config(cfg, **context)
    return train(run, out, resolved_config=OmegaConf.to_yaml(container))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("use") / "run"
    return run_dir, train_tiny(run_dir)


@pytest.fixture(scope="module")
def test_images():
    from conftest import run_config

    from dynarch.data import load_arrays

    arrays = load_arrays(run_config(TINY).data, 42)
    return arrays.test[0][:12], arrays.test[1][:12]


def run_cli(module, argv, capsys):
    rc = module.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def test_load_run_rebuilds_the_trained_weights_from_every_kind_of_path(trained, tmp_path):
    run_dir, _ = trained
    model, meta = load_run(run_dir)
    ckpt = load_checkpoint(run_dir)
    assert meta.run_dir == run_dir and meta.checkpoint == run_dir / "checkpoint"
    assert (meta.model_name, meta.variant, meta.num_classes, meta.input_shape) == ("mlp", "base", 10, (28, 28, 1))
    assert {v.path for v in model.weights} == set(ckpt.tensors)
    for v in model.weights:
        assert np.array_equal(np.asarray(v.numpy()), ckpt.tensors[v.path]), v.path
    sweep = tmp_path / "sweep"
    shutil.copytree(run_dir, sweep / "3")
    for path in (run_dir / "checkpoint", run_dir / "checkpoint" / "weights.safetensors", f"{sweep}#3"):
        other, other_meta = load_run(path)
        x = np.random.default_rng(0).random((4, 28, 28, 1), dtype=np.float32)
        assert np.array_equal(other.predict(x, verbose=0), model.predict(x, verbose=0)), path
    assert other_meta.run_dir == sweep / "3"


def test_load_run_compiles_for_keras_evaluate(trained, test_images):
    run_dir, metrics = trained
    model, _ = load_run(run_dir)
    x, y = test_images
    loss, acc = model.evaluate(scale_images(x), y, verbose=0)
    assert np.isfinite(loss) and 0 <= acc <= 1


def test_evaluate_reproduces_the_runs_test_metrics_and_writes_a_report(trained, capsys):
    run_dir, metrics = trained
    rc, out, err = run_cli(evaluate, [run_dir], capsys)
    assert rc == 0, err
    (report_dir,) = sorted(run_dir.glob("eval-*"))
    assert sorted(p.name for p in report_dir.iterdir()) == [
        "confusion.csv",
        "confusion.png",
        "report.json",
        "report.md",
    ]
    report = json.loads((report_dir / "report.json").read_text())
    assert report["accuracy"] == pytest.approx(metrics["test_accuracy"], abs=1e-6)
    assert report["loss"] == pytest.approx(metrics["test_loss"], rel=1e-4)
    confusion = np.array(report["confusion"])
    assert confusion.shape == (10, 10) and confusion.sum() == report["samples"] == 300
    assert np.trace(confusion) / 300 == pytest.approx(report["accuracy"])
    per_class = np.diag(confusion) / confusion.sum(axis=1)
    assert np.allclose(per_class, report["per_class_accuracy"])
    rows = list(csv.reader((report_dir / "confusion.csv").open()))
    assert rows[0][1:] == [str(c) for c in range(10)] and int(rows[1][1]) == confusion[0, 0]
    assert (report_dir / "confusion.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"accuracy {report['accuracy']:.4f}" in out and str(report_dir) in out
    assert not list(run_dir.glob(".eval-*"))  # no temp left behind


def test_evaluate_on_other_data_from_overrides_into_out(trained, tmp_path, capsys):
    run_dir, _ = trained
    out = tmp_path / "report"
    rc, _, err = run_cli(evaluate, [run_dir, "data=mnist_subset", "data.limit_test=50", "--out", out], capsys)
    assert rc == 0, err
    report = json.loads((out / "report.json").read_text())
    assert report["samples"] == 50 and report["split"] == "test"
    rc, _, err = run_cli(evaluate, [run_dir, "--out", out], capsys)  # never replaced
    assert rc == 2 and "already exists" in err and "fix:" in err


def test_predict_npz_images_and_folder(trained, test_images, tmp_path, capsys):
    from PIL import Image

    run_dir, _ = trained
    x, _ = test_images
    model, _ = load_run(run_dir)
    expected = model.predict(scale_images(x), verbose=0)
    np.savez(tmp_path / "batch.npz", x=x[..., 0])  # N x H x W: one channel added
    rc, out, err = run_cli(predict, [run_dir, "--input", tmp_path / "batch.npz", "--top-k", 3], capsys)
    assert rc == 0, err
    rows = list(csv.reader(out.splitlines()))
    assert rows[0] == [
        "input",
        "top1_class",
        "top1_probability",
        "top2_class",
        "top2_probability",
        "top3_class",
        "top3_probability",
    ]
    assert [int(r[1]) for r in rows[1:]] == expected.argmax(axis=1).tolist()
    assert [float(r[2]) for r in rows[1:]] == pytest.approx(expected.max(axis=1).tolist(), abs=1e-6)
    folder = tmp_path / "images"
    folder.mkdir()
    Image.fromarray(x[0, :, :, 0]).save(folder / "a.png")  # exact size, gray
    Image.fromarray(np.repeat(x[1], 3, axis=2)).save(folder / "b.jpg", quality=100)  # RGB -> gray
    Image.fromarray(x[2, :, :, 0]).resize((56, 42), Image.Resampling.NEAREST).save(folder / "c.png")  # resized
    (folder / "notes.txt").write_text("ignored")
    out_json = tmp_path / "pred.json"
    rc, _, err = run_cli(predict, [run_dir, "--input", folder, "--top-k", 1, "--out", out_json], capsys)
    assert rc == 0, err
    preds = json.loads(out_json.read_text())
    assert [p["input"] for p in preds] == [str(folder / n) for n in ("a.png", "b.jpg", "c.png")]
    assert int(preds[0]["top"][0]["class"]) == int(expected[0].argmax())
    assert preds[0]["top"][0]["probability"] == pytest.approx(float(expected[0].max()), abs=1e-6)
    rc, _, err = run_cli(predict, [run_dir, "--input", folder / "a.png", "--out", out_json], capsys)
    assert rc == 2 and "already exists" in err
    rc, _, err = run_cli(predict, [run_dir, "--input", folder / "a.png", "--out", out_json, "--force"], capsys)
    assert rc == 0 and len(json.loads(out_json.read_text())) == 1


def test_export_keras_saved_model_and_litert_give_the_same_outputs(trained, test_images, tmp_path, capsys):
    import tensorflow as tf

    from dynarch.checkpoint import load_keras

    run_dir, _ = trained
    model, _ = load_run(run_dir)
    x = scale_images(test_images[0])
    expected = model.predict(x, verbose=0)
    rc, out, err = run_cli(export, [run_dir, "--format", "keras"], capsys)
    assert rc == 0, err
    path = run_dir / "export" / "model.keras"
    assert str(path) in out
    assert np.allclose(load_keras(path).predict(x, verbose=0), expected, atol=1e-6)
    rc, _, err = run_cli(export, [run_dir, "--format", "keras"], capsys)
    assert rc == 2 and "already exists" in err and "--force" in err
    rc, _, err = run_cli(export, [run_dir, "--format", "keras", "--force"], capsys)
    assert rc == 0, err

    saved = tmp_path / "sm"
    rc, _, err = run_cli(export, [run_dir, "--format", "saved_model", "--out", saved], capsys)
    assert rc == 0, err
    loaded = tf.saved_model.load(str(saved))  # kept: its variables die with it
    served = loaded.serve(tf.constant(x))
    assert np.allclose(np.asarray(served), expected, atol=1e-6)

    rc, _, err = run_cli(export, [run_dir, "--format", "litert", "--out", tmp_path / "m.tflite"], capsys)
    assert rc == 0, err
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tf.lite.Interpreter announces its move to ai_edge_litert
        interpreter = tf.lite.Interpreter(str(tmp_path / "m.tflite"))
    interpreter.resize_tensor_input(interpreter.get_input_details()[0]["index"], x.shape)
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x)
    interpreter.invoke()
    assert np.allclose(interpreter.get_tensor(interpreter.get_output_details()[0]["index"]), expected, atol=1e-5)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp left behind


@pytest.mark.skipif(importlib.util.find_spec("tf2onnx") is None, reason="the onnx extra is not installed")
def test_export_onnx_with_the_extra(trained, test_images, tmp_path, capsys):
    import onnx
    from onnx.reference import ReferenceEvaluator

    run_dir, _ = trained
    x = scale_images(test_images[0])
    rc, _, err = run_cli(export, [run_dir, "--format", "onnx", "--out", tmp_path / "m.onnx"], capsys)
    assert rc == 0, err
    session = ReferenceEvaluator(onnx.load(str(tmp_path / "m.onnx")))
    got = session.run(None, {session.input_names[0]: x})[0]
    assert np.allclose(got, load_run(run_dir)[0].predict(x, verbose=0), atol=1e-5)


@pytest.mark.skipif(importlib.util.find_spec("tf2onnx") is not None, reason="the onnx extra is installed")
def test_export_onnx_without_the_extra_names_it(trained, tmp_path, capsys):
    rc, _, err = run_cli(export, [trained[0], "--format", "onnx", "--out", tmp_path / "m.onnx"], capsys)
    assert rc == 2 and "'onnx' extra" in err and "pip install -e '.[onnx]'" in err
    assert not list(tmp_path.iterdir())


def test_a_scheduled_run_loads_its_last_phase(tmp_path, capsys):
    schedule = "{phases:[{epochs:1},{arch:deep,epochs:1}]}"
    metrics = train_tiny(tmp_path / "sched", ["trainer.epochs=2", f"+schedule={schedule}"])
    model, meta = load_run(tmp_path / "sched")
    assert "extra" in meta.arch.enabled_paths() and model.get_layer("extra").__class__.__name__ == "Dense"
    rc, _, err = run_cli(evaluate, [tmp_path / "sched"], capsys)
    assert rc == 0, err
    (report,) = (tmp_path / "sched").glob("eval-*/report.json")
    assert json.loads(report.read_text())["accuracy"] == pytest.approx(metrics["test_accuracy"], abs=1e-6)


@pytest.mark.parametrize(
    "module,args",
    [
        ("evaluate", ["--out", "{tmp}/r"]),
        ("predict", ["--input", "{npz}"]),
        ("export", ["--format", "keras", "--out", "{tmp}/m.keras"]),
    ],
)
def test_python_m_entry_points(trained, tmp_path, module, args):
    np.savez(tmp_path / "one.npz", x=np.zeros((1, 28, 28, 1), np.uint8))
    argv = [a.format(tmp=tmp_path, npz=tmp_path / "one.npz") for a in args]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    ok = subprocess.run(
        [sys.executable, "-m", f"dynarch.{module}", str(trained[0]), *argv],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert ok.returncode == 0, ok.stderr[-2000:]
    bad = subprocess.run(
        [sys.executable, "-m", f"dynarch.{module}", str(tmp_path / "nope"), *argv],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert bad.returncode == 2 and "error:" in bad.stderr and "fix:" in bad.stderr
    assert "Traceback" not in bad.stderr
