"""Bad-input catalogue, spec/optimizer/trainer part: layers a config must not reach, names Keras refuses,
integers beyond what TensorFlow/NumPy accept, absurd sizes, bad optimizer settings.

Each case must raise a dynarch error (before TensorFlow is imported) whose message names the key and
carries a `fix:` line, and must leave every file outside the run dir exactly as it was.
"""

import hashlib
import subprocess
import sys

import pytest
from conftest import ROOT, run_config

from dynarch.errors import DynarchError
from dynarch.spec import parse_arch

BIG = 10**12


def snapshot(root):
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def config(*overrides):
    return lambda tmp: run_config(list(overrides))


def target(spec: str):
    return config(f"+model.blocks.x={{{spec}}}")


def model_file(blocks: dict):
    """What a model YAML with these blocks parses to (keys Hydra's command line cannot spell)."""
    mlp = {
        "name": "m",
        "input_shape": [28, 28, 1],
        "blocks": {"flatten": {"type": "flatten"}, **blocks, "head": {"type": "dense", "units": 10}},
    }
    return lambda tmp: parse_arch(mlp, num_classes=10)


CASES = {  # name: (action, substrings of the message)
    # Layers that run code or read files, by class (the module pattern alone let TFSMLayer through).
    "TFSMLayer": (
        target("_target_: keras.layers.TFSMLayer, filepath: /tmp/x"),
        ["model.blocks.x._target_", "not on the allowlist", "SavedModel"],
    ),
    "Lambda": (
        target("_target_: keras.layers.Lambda, function: print"),
        ["model.blocks.x._target_", "Python function"],
    ),
    "TorchModuleWrapper": (target("_target_: keras.layers.TorchModuleWrapper"), ["model.blocks.x._target_", "PyTorch"]),
    "JaxLayer": (target("_target_: keras.layers.JaxLayer"), ["model.blocks.x._target_", "not on the allowlist"]),
    "FlaxLayer": (target("_target_: keras.layers.FlaxLayer"), ["model.blocks.x._target_", "not on the allowlist"]),
    "wrapper layer": (target("_target_: keras.layers.TimeDistributed"), ["model.blocks.x._target_", "wraps"]),
    "misspelt layer class": (target("_target_: keras.layers.Dens, units: 4"), ["Did you mean 'Dense'", "Conv2D"]),
    "filepath on an allowed layer": (
        target("_target_: keras.layers.Dense, units: 4, filepath: /tmp/x"),
        ["model.blocks.x.filepath", "does not take 'filepath'"],
    ),
    "quantization_config": (
        target("_target_: keras.layers.Dense, units: 4, quantization_config: {a: 1}"),
        ["model.blocks.x.quantization_config", "does not take"],
    ),
    "activation by dotted path": (
        target("_target_: keras.layers.Dense, units: 4, activation: os.system"),
        ["model.blocks.x.activation", "built-in Keras activation"],
    ),
    "Activation layer with a dict": (
        target("_target_: keras.layers.Activation, activation: {module: os, class_name: system}"),
        ["model.blocks.x.activation", "not module"],
    ),
    "initializer from a module": (
        target(
            "_target_: keras.layers.Dense, units: 4, kernel_initializer: {module: numpy, class_name: zeros, config: {}}"
        ),
        ["model.blocks.x.kernel_initializer", "no module"],
    ),
    "unknown regularizer": (
        target("_target_: keras.layers.Dense, units: 4, kernel_regularizer: l3"),
        ["model.blocks.x.kernel_regularizer", "built-in Keras regularizer"],
    ),
    "constraint class not built in": (
        target("_target_: keras.layers.Dense, units: 4, kernel_constraint: {class_name: MyNorm}"),
        ["model.blocks.x.kernel_constraint"],
    ),
    "dtype policy object": (
        target("_target_: keras.layers.Dense, units: 4, dtype: {class_name: DTypePolicy}"),
        ["model.blocks.x.dtype", "plain dtype name"],
    ),
    "nested mapping value": (
        target("_target_: keras.layers.Reshape, target_shape: {a: 1}"),
        ["model.blocks.x.target_shape", "plain data"],
    ),
    "int beyond int32 in a layer": (
        target("_target_: keras.layers.Dropout, rate: 0.1, seed: 99999999999"),
        ["model.blocks.x.seed", "2147483647"],
    ),
    "NaN in a layer": (target("_target_: keras.layers.GaussianNoise, stddev: nan"), ["model.blocks.x.stddev"]),
    # Names Keras refuses (found by trying Keras 3.15: "/" in a model name, a second layer named "input").
    "model name with a slash": (config("model.name=a/b"), ["model.name", "no '/'"]),
    "model name not a string": (config("model.name=[1,2]"), ["model.name"]),
    "block named input": (config("+model.blocks.input={type: identity}"), ["model.blocks.input", "Input layer"]),
    "non-ASCII block name": (
        model_file({"dénse": {"type": "dense", "units": 4}}),
        ["model.blocks.dénse", "ASCII letters"],
    ),
    "block name too long": (model_file({"a" * 101: {"type": "identity"}}), ["at most 100 characters"]),
    # Integers beyond what TensorFlow / NumPy take, and absurd sizes.
    "seed beyond uint32": (config("seed=4294967296"), ["seed", "4294967295"]),
    "batch_size beyond int32": (config("trainer.batch_size=2147483648"), ["trainer.batch_size", "2147483647"]),
    "steps_per_execution huge": (config(f"trainer.steps_per_execution={BIG}"), ["trainer.steps_per_execution"]),
    "intra_op_threads huge": (config("trainer.intra_op_threads=1000000"), ["trainer.intra_op_threads", "1024"]),
    "epochs huge": (config(f"trainer.epochs={BIG}"), ["trainer.epochs", "100000"]),
    "checkpoint_every huge": (config(f"trainer.checkpoint_every={BIG}"), ["trainer.checkpoint_every"]),
    "keep_checkpoints huge": (config(f"trainer.keep_checkpoints={BIG}"), ["trainer.keep_checkpoints"]),
    "units 10**12": (config(f"model.blocks.dense.units={BIG}"), ["model.blocks.dense.units", "at most 2147483647"]),
    "units 10**9 (params)": (
        config("model.blocks.dense.units=1000000000"),
        ["model.blocks.dense", "785,000,000,000 parameters", "at most 2,000,000,000"],
    ),
    "filters huge (params)": (
        config("model=cnn", "model.blocks.stage1.blocks.conv.filters=2000000000"),
        ["model.blocks.stage1.blocks.conv", "parameters"],
    ),
    "filters large (activations)": (
        config("model=cnn", "model.blocks.stage1.blocks.conv.filters=20000000"),
        ["model.blocks.stage1.blocks.conv", "values per sample"],
    ),
    "kernel_size huge": (
        config("model=cnn", f"model.blocks.stage1.blocks.conv.kernel_size={BIG}"),
        ["model.blocks.stage1.blocks.conv.kernel_size", "at most 2147483647"],
    ),
    "pool window of padding": (
        config(
            "model=cnn",
            "model.blocks.stage1.blocks.pool.pool_size=2000000000",
            "+model.blocks.stage1.blocks.pool.padding=same",
        ),
        ["model.blocks.stage1.blocks.pool", "covers only padding"],
    ),
    "_target_ Dense huge": (
        target("_target_: keras.layers.Dense, units: 1000000000"),
        ["model.blocks.x", "parameters"],
    ),
    "_target_ pool window of padding": (
        config(
            "model=cnn",
            "+model.blocks.stage1.blocks.p2={_target_: keras.layers.MaxPooling2D, pool_size: 100000, padding: same}",
        ),
        ["model.blocks.stage1.blocks.p2.pool_size", "covers only padding"],
    ),
    "declared output_shape huge": (
        target("_target_: keras.layers.Identity, output_shape: [100000, 100000]"),
        ["model.blocks.x.output_shape"],
    ),
    "input_shape huge": (config("model.input_shape=[100000,100000,1]"), ["model.input_shape", "values per sample"]),
    "batchnorm epsilon inf": (
        model_file({"bn": {"type": "batchnorm", "epsilon": float("inf")}}),
        ["model.blocks.bn.epsilon", "finite"],
    ),
    "unknown loop": (config("trainer.loop=scan"), ["trainer.loop", "auto, keras or fused"]),
    "compile cache path": (config("trainer.compile_cache=/etc"), ["trainer.compile_cache", "DYNARCH_COMPILE_CACHE"]),
    # Optimizer (keras.optimizers.get from plain data, validated first).
    "unknown optimizer": (config("optimizer.name=adamx"), ["optimizer.name", "Did you mean 'adam"]),
    "negative lr": (config("optimizer.lr=-0.1"), ["optimizer.lr", "> 0"]),
    "lr inf": (config("optimizer.lr=inf"), ["optimizer.lr", "finite"]),
    "momentum 1": (config("optimizer=sgd", "optimizer.momentum=1.0"), ["optimizer.momentum", "[0, 1)"]),
    "momentum on adam": (config("+optimizer.momentum=0.9"), ["optimizer.momentum", "Adam does not take"]),
    "negative weight decay": (config("optimizer.weight_decay=-1"), ["optimizer.weight_decay", ">= 0"]),
    "adamw without weight decay": (
        config("optimizer=adamw", "optimizer.weight_decay=null"),
        ["optimizer.weight_decay", "explicit"],
    ),
    "two clipping settings": (
        config("optimizer.clipnorm=1", "optimizer.global_clipnorm=1"),
        ["optimizer.global_clipnorm", "only one of"],
    ),
    "clipnorm 0": (config("optimizer.clipnorm=0"), ["optimizer.clipnorm", "> 0"]),
    "unknown schedule": (config("optimizer.schedule=cosin"), ["optimizer.schedule", "Did you mean 'cosine'"]),
    "cosine without decay_steps": (config("optimizer.schedule=cosine"), ["optimizer.decay_steps", "needs"]),
    "schedule key without schedule": (
        config("+optimizer.warmup_steps=10"),
        ["optimizer.warmup_steps", "constant learning rate"],
    ),
    "schedule key of another schedule": (
        config("optimizer=adam_cosine", "+optimizer.staircase=true"),
        ["optimizer.staircase", "exponential"],
    ),
    "cosine alpha above 1": (config("optimizer=adam_cosine", "optimizer.alpha=2"), ["optimizer.alpha", "[0, 1]"]),
    "piecewise boundaries unsorted": (
        config("optimizer.schedule=piecewise", "+optimizer.boundaries=[30,20]", "+optimizer.decay_rate=0.1"),
        ["optimizer.boundaries", "increasing"],
    ),
    "decay_steps beyond int32": (
        config("optimizer=adam_cosine", f"optimizer.decay_steps={BIG}"),
        ["optimizer.decay_steps", "2147483647"],
    ),
    # Schedules: a phase's label and model patch (a changed input shape was an internal error at the boundary).
    "phase name not a string": (
        config("trainer.epochs=3", "+schedule={phases: [{epochs: 1, name: [1, 2]}]}"),
        ["schedule.phases[0].name", "short label"],
    ),
    "phase patch changes input_shape": (
        config("trainer.epochs=3", "+schedule={phases: [{epochs: 1}, {epochs: 1, model: {input_shape: [10]}}]}"),
        ["schedule.phases[1].model.input_shape", "blocks only"],
    ),
    "phase patch renames the model": (
        config("trainer.epochs=3", "+schedule={phases: [{epochs: 1}, {epochs: 1, model: {name: other}}]}"),
        ["schedule.phases[1].model.name", "blocks only"],
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_gives_a_clear_error_and_touches_nothing_outside_the_run_dir(name, tmp_path):
    act, needles = CASES[name]
    before = {**snapshot(tmp_path), **snapshot(ROOT / "conf")}
    with pytest.raises(DynarchError) as err:
        act(tmp_path)
    message = str(err.value)
    for needle in needles:
        assert needle in message, message
    assert "fix:" in message and "Traceback" not in message
    assert {**snapshot(tmp_path), **snapshot(ROOT / "conf")} == before


def test_these_cases_fail_without_importing_tensorflow():
    """Every case above is a config check: run a sample in a fresh process and see TF never loads."""
    code = (
        "import sys\nsys.path.insert(0, 'tests')\nfrom conftest import run_config\n"
        "from dynarch.errors import DynarchError\n"
        "for o in [['+model.blocks.x={_target_: keras.layers.TFSMLayer, filepath: /tmp/x}'],\n"
        "          ['trainer.loop=scan'], ['seed=4294967296'], ['model.blocks.dense.units=1000000000'],\n"
        "          ['optimizer=adam_cosine', 'optimizer.clipnorm=1'], ['model.name=a/b']]:\n"
        "    try:\n        run_config(o)\n        print('ACCEPTED', o)\n"
        "    except DynarchError:\n        pass\n"
        "print('TF_IMPORTED' if 'tensorflow' in sys.modules or 'keras' in sys.modules else 'NO_TF')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.stdout.strip() == "NO_TF", proc.stdout + proc.stderr[-2000:]


def test_cli_refuses_a_code_running_layer_without_traceback(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "dynarch",
            f"+model.blocks.x={{_target_: keras.layers.TFSMLayer, filepath: {tmp_path}/sm}}",
            f"hydra.run.dir={tmp_path}/run",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "model.blocks.x._target_" in proc.stderr and "fix:" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert not (tmp_path / "sm").exists()
