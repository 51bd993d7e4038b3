"""Optimizers and learning-rate schedules from plain data, through keras.optimizers.get."""

import inspect
import math

import keras
import pytest
import yaml
from conftest import CONF, run_config

from dynarch.config import OptimizerConfig
from dynarch.errors import ConfigError
from dynarch.optim import OPTIMIZERS, SCHEDULES, SHORT_NAMES, make_optimizer, optimizer_identifier

SHIPPED = sorted(p.stem for p in (CONF / "optimizer").glob("*.yaml"))
# OptimizerConfig key -> Keras optimizer config key (schedule keys live inside learning_rate).
KERAS_KEY = {"lr": "learning_rate"}


def test_every_requested_optimizer_yaml_is_shipped():
    assert {"adam", "adamw", "sgd", "rmsprop", "adam_cosine"} <= set(SHIPPED)


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_yaml_builds_the_keras_optimizer_it_says(name):
    written = yaml.safe_load((CONF / "optimizer" / f"{name}.yaml").read_text())
    opt = make_optimizer(run_config([f"optimizer={name}"]).optimizer)
    assert type(opt).__name__ == SHORT_NAMES.get(written["name"], written["name"])
    config = opt.get_config()
    for key, value in written.items():
        if key in ("name", "schedule") or key in SCHEDULES["cosine"][1] | SCHEDULES["exponential"][1]:
            continue
        if value is None:
            continue  # not passed: Keras' own default applies
        got = config[KERAS_KEY.get(key, key)]
        if key == "lr" and written.get("schedule"):
            continue  # a schedule: checked step by step below
        if key == "weight_decay" and value == 0 and name != "adamw":
            assert got is None  # 0 means none; Keras skips the decay step only for None
        elif isinstance(value, float):
            assert got == pytest.approx(value), key
        else:
            assert got == value, key


def test_adamw_gets_exactly_the_configured_weight_decay():
    assert make_optimizer(run_config(["optimizer=adamw"]).optimizer).get_config()["weight_decay"] == pytest.approx(
        0.004
    )
    zero = make_optimizer(run_config(["optimizer=adamw", "optimizer.weight_decay=0.0"]).optimizer)
    assert zero.get_config()["weight_decay"] == 0.0  # was silently 0.004


def test_short_names_and_class_names_build_the_same_optimizer():
    for short, cls in SHORT_NAMES.items():
        wd = 0.0 if cls in ("AdamW", "Muon") else None
        built = make_optimizer(OptimizerConfig(name=short, lr=0.01, weight_decay=wd))
        assert type(built).__name__ == cls
        assert type(make_optimizer(OptimizerConfig(name=cls, lr=0.01, weight_decay=wd))) is type(built)


def _lr_at(opt, step: int) -> float:
    opt.iterations.assign(step)
    return float(opt.learning_rate)


def test_cosine_schedule_with_warmup_gives_the_right_rate_at_each_step():
    cfg = run_config(
        [
            "optimizer=adam_cosine",
            "optimizer.lr=0.01",
            "optimizer.warmup_steps=10",
            "optimizer.decay_steps=100",
            "optimizer.alpha=0.1",
        ]
    ).optimizer
    opt = make_optimizer(cfg)
    for step in (0, 5, 10, 35, 60, 110, 500):
        if step <= 10:
            want = 0.01 * step / 10  # linear warm-up from 0
        else:
            done = min(step - 10, 100) / 100
            want = 0.01 * ((1 - 0.1) * 0.5 * (1 + math.cos(math.pi * done)) + 0.1)
        assert _lr_at(opt, step) == pytest.approx(want, rel=1e-5, abs=1e-9), step


def test_exponential_and_piecewise_schedules():
    exp = make_optimizer(
        OptimizerConfig(lr=0.1, schedule="exponential", decay_steps=10, decay_rate=0.5, staircase=True)
    )
    assert [_lr_at(exp, s) for s in (0, 9, 10, 25)] == pytest.approx([0.1, 0.1, 0.05, 0.025])
    piece = make_optimizer(OptimizerConfig(lr=0.1, schedule="piecewise", boundaries=(5, 8), decay_rate=0.1))
    assert [_lr_at(piece, s) for s in (0, 5, 6, 8, 9)] == pytest.approx([0.1, 0.1, 0.01, 0.01, 0.001])


def test_clipping_goes_to_keras():
    opt = make_optimizer(OptimizerConfig(clipnorm=2.0))
    assert opt.get_config()["clipnorm"] == 2.0 and opt.get_config()["global_clipnorm"] is None
    assert make_optimizer(OptimizerConfig(clipvalue=0.5)).get_config()["clipvalue"] == 0.5


def test_identifier_is_plain_data_and_keras_builds_it():
    ident = optimizer_identifier(run_config(["optimizer=adam_cosine"]).optimizer)
    assert ident["class_name"] == "Adam" and ident["config"]["learning_rate"]["class_name"] == "CosineDecay"
    assert isinstance(keras.optimizers.get(ident), keras.optimizers.Adam)


def test_static_tables_match_keras():
    """The pure-Python tables used before TensorFlow is imported agree with Keras 3's own classes."""
    keras_optimizers = {
        n
        for n in dir(keras.optimizers)
        if isinstance(getattr(keras.optimizers, n), type)
        and issubclass(getattr(keras.optimizers, n), keras.optimizers.Optimizer)
    }
    # Wrappers are not nameable; Lamb is not resolvable by keras.optimizers.get in Keras 3.15.
    assert set(OPTIMIZERS) == keras_optimizers - {"Optimizer", "LossScaleOptimizer", "MultiOptimizer", "Lamb"}
    for name, keys in OPTIMIZERS.items():
        params = inspect.signature(getattr(keras.optimizers, name).__init__).parameters
        assert keys | {"learning_rate", "weight_decay", "clipnorm", "clipvalue", "global_clipnorm"} <= set(params), name
    for cls, keys in SCHEDULES.values():
        params = set(inspect.signature(getattr(keras.optimizers.schedules, cls).__init__).parameters)
        assert keys - {"boundaries", "decay_rate"} <= params or cls == "PiecewiseConstantDecay", cls


@pytest.mark.parametrize(
    "changes,needles",
    [
        ({"name": "adamm"}, ["optimizer.name", "Did you mean 'adam'"]),
        ({"lr": 0.0}, ["optimizer.lr", "> 0"]),
        ({"lr": float("nan")}, ["optimizer.lr", "finite"]),
        ({"name": "sgd", "momentum": -0.1}, ["optimizer.momentum", "[0, 1)"]),
        ({"name": "sgd", "beta_1": 0.9}, ["optimizer.beta_1", "SGD does not take 'beta_1'"]),
        ({"name": "adam", "nesterov": True}, ["optimizer.nesterov", "Adam does not take"]),
        ({"epsilon": 0.0}, ["optimizer.epsilon", "> 0"]),
        ({"clipnorm": 1.0, "clipvalue": 1.0}, ["optimizer.clipvalue", "only one of"]),
        ({"schedule": "linear"}, ["optimizer.schedule", "cosine"]),
        ({"schedule": "exponential", "decay_steps": 10}, ["optimizer.decay_rate", "needs"]),
        ({"schedule": "exponential", "decay_steps": 10, "decay_rate": 1.5}, ["optimizer.decay_rate", "(0, 1]"]),
        ({"schedule": "piecewise", "decay_rate": 0.1}, ["optimizer.boundaries", "needs"]),
        ({"schedule": "cosine", "decay_steps": 0}, ["optimizer.decay_steps"]),
        ({"decay_steps": 100}, ["optimizer.decay_steps", "constant learning rate"]),
    ],
)
def test_bad_optimizer_settings_are_refused_with_the_key(changes, needles):
    with pytest.raises(ConfigError) as err:
        OptimizerConfig(**changes)
    for needle in needles:
        assert needle in str(err.value), str(err.value)
    assert "fix:" in str(err.value)
