"""Everything Hydra-facing that is not the entry point: composing a run (with its schedule's phases),
per-model variant names, and shell-quoted commands. The config files themselves are checked first, by
preflight.py.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any, Iterable, Sequence

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .config import RunConfig, load_run_config
from .errors import ConfigError, did_you_mean, shown
from .preflight import CONF_DIR, check_variant_file, check_yaml_file, preflight

__all__ = [
    "CONF_DIR",
    "compose_config",
    "compose_run",
    "preflight",
    "qualify_arch_overrides",
    "resolve_config",
    "shell_command",
    "variant_name",
]


# Names the variants had before they moved into per-model folders (conf/arch/<model>/NAME.yaml).
ARCH_ALIASES = {"cnn_deep": "deep", "cnn_wide": "wide"}


def variant_name(choices: dict[str, Any] | None) -> str:
    """The `+arch` choice as Hydra made it (`mlp/deep`), or "base"."""
    return str((choices or {}).get("arch") or "base")


def _check_variant_fits(choice: str, model: str) -> str:
    """A variant from conf/arch/<other model>/ does not fit this model: say so (the layout knows it).
    Returns the short variant name recorded in reports (`mlp/deep` -> deep)."""
    folder, _, short = choice.rpartition("/")
    if folder and folder != model and (CONF_DIR / "arch" / folder).is_dir():
        fitting = sorted(p.stem for p in (CONF_DIR / "arch" / model).glob("*.yaml"))
        raise ConfigError(
            f"+arch={choice}",
            f"variant '{choice}' is made for model '{folder}', not '{model}'",
            expected=f"a variant of {model}: {', '.join(fitting) or 'none shipped'}",
            received=choice,
            fix=f"add model={folder}, or pick +arch={model}/NAME",
        )
    return short


def _default_model() -> str:
    defaults = (check_yaml_file(CONF_DIR / "config.yaml") or {}).get("defaults", [])
    return next((d["model"] for d in defaults if isinstance(d, dict) and "model" in d), "mlp")


def qualify_arch_overrides(argv: Sequence[str]) -> list[str]:
    """`+arch=deep` -> `+arch=mlp/deep` for the model on the command line (variants live in per-model
    folders, so a variant that does not fit a model is known from the layout; short names keep working).

    A name is left alone when it already names a folder, or when the model is swept (`model=mlp,cnn`):
    preflight then explains what to write.
    """
    models = [a.split("=", 1)[1] for a in argv if a.lstrip("+").startswith("model=")]
    model = models[-1] if models else _default_model()
    if "," in model or "(" in model:
        return list(argv)
    out = []
    for arg in argv:
        key, sep, value = arg.partition("=")
        if sep and key.lstrip("+~") == "arch" and not value.startswith(("choice(", "range(", "glob(")):
            names = [v.strip() for v in value.strip("[]").split(",")]
            names = [_qualify(n, model) for n in names]
            arg = f"{key}={','.join(names)}"
        out.append(arg)
    return out


def _qualify(name: str, model: str) -> str:
    if "/" in name or not name:
        return name
    short = ARCH_ALIASES.get(name, name) if model == "cnn" else name
    return f"{model}/{short}" if (CONF_DIR / "arch" / model / f"{short}.yaml").is_file() else name


def _to_plain(cfg: DictConfig) -> dict:
    try:
        return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", "") or "config"
        raise ConfigError(
            key,
            f"cannot resolve the config: {getattr(e, 'msg', None) or e}",
            expected="every ??? value set and every ${...} resolvable",
            fix=f"set it on the command line, e.g. {key}=VALUE",
        ) from None


def resolve_config(
    cfg: DictConfig, variant: str, schedule_name: str | None = None, search_dirs: Sequence[Path] = ()
) -> tuple[RunConfig, dict]:
    """DictConfig -> (validated RunConfig, resolved plain dict). The only place that touches DictConfig.

    With a `schedule` node, every phase's architecture is composed (its variant files and inline patch
    merged onto the run's model) and validated here, before anything is built.
    """
    if "data" not in cfg:  # `~data`: else the first error named model.input_shape's ${data.input_shape}
        data_dir = CONF_DIR / "data"
        known = ", ".join(f"data={p.stem}" for p in sorted(data_dir.glob("*.yaml")))
        raise ConfigError(
            "data", "no dataset selected", expected=known, fix="add data=mnist_subset (offline) or data=mnist"
        )
    container = _to_plain(cfg)
    container.pop("hydra", None)
    schedule_raw = container.pop("schedule", None)
    model = container.get("model", {}).get("name") if isinstance(container.get("model"), dict) else None
    variant = _check_variant_fits(variant, str(model)) if model else variant.rsplit("/", 1)[-1]
    run = load_run_config(container, variant)
    if schedule_raw is not None:
        run = _attach_schedule(run, cfg, schedule_raw, schedule_name or "custom", [CONF_DIR, *search_dirs])
        container["schedule"] = schedule_raw
    from .hooks import check_callbacks
    from .loggers import check_loggers

    check_callbacks(run.callbacks, run)
    check_loggers(run.loggers, run.callbacks, run.backend)
    return run, container


def _variant_patch(name: Any, where: str, dirs: Sequence[Path], model: str) -> dict:
    """The `model` patch of variant file arch/NAME.yaml (checked like a `+arch` file)."""
    if not isinstance(name, str) or not name:
        raise ConfigError(
            where,
            "a variant is named by a string",
            expected="e.g. deep",
            received=name,
            fix=f"set {where} to a file name from conf/arch/",
        )
    candidates = [
        Path(folder) / "arch" / f"{n}.yaml"
        for folder in dirs
        for n in (f"{model}/{ARCH_ALIASES.get(name, name)}", name)
    ]
    for path in candidates:
        if path.is_file():
            check_variant_file(path)
            data = check_yaml_file(path) or {}
            extra = [k for k in data if k != "model"]
            if extra:
                raise ConfigError(
                    where,
                    f"variant '{name}' also sets {', '.join(extra)}: a phase changes the model only",
                    expected="a variant that patches model only",
                    received=extra,
                    fix="use a model-only variant, or set the phase's optimizer under optimizer:",
                )
            return data.get("model") or {}
    known = sorted({p.stem for folder in dirs for p in (Path(folder) / "arch" / model).glob("*.yaml")})
    raise ConfigError(
        where,
        f"no variant named '{name}'.{did_you_mean(name, known)}",
        expected=f"one of {', '.join(known)}",
        received=name,
        fix=f"set {where} to an existing variant",
    )


def _attach_schedule(run: RunConfig, cfg: DictConfig, raw: Any, name: str, dirs: Sequence[Path]) -> RunConfig:
    """The run with its typed phases: each phase's model composed, parsed and shape-checked."""
    import dataclasses

    from .schedule import PhaseSpec, check_plateau_monitors, parse_until, phase_list
    from .spec import parse_arch

    base = OmegaConf.masked_copy(cfg, [k for k in cfg if k not in ("hydra", "schedule")])
    phases = []
    for i, raw_phase in enumerate(phase_list(raw)):
        where = f"schedule.phases[{i}]"
        arch_names = raw_phase.get("arch")
        arch_names = [] if arch_names is None else arch_names if isinstance(arch_names, list) else [arch_names]
        patches = [_variant_patch(a, f"{where}.arch", dirs, run.arch.name) for a in arch_names]
        inline = raw_phase.get("model")
        if inline is not None and not isinstance(inline, dict):
            raise ConfigError(
                f"{where}.model",
                "an inline patch is a mapping",
                expected="{blocks: {extra: {enabled: true}}}",
                received=inline,
                fix=f"write {where}.model as a mapping",
            )
        merged = OmegaConf.merge(base, *({"model": p} for p in [*patches, inline or {}]))
        arch = parse_arch(_to_plain(merged)["model"], run.data.num_classes, where=f"{where}.model")
        optimizer = _phase_optimizer(run, raw_phase.get("optimizer"), f"{where}.optimizer")
        label = raw_phase.get("name") or "+".join(arch_names) or ("inline" if inline else run.variant)
        if raw_phase.get("epochs") == "rest":
            if i != len(raw["phases"]) - 1:
                raise ConfigError(
                    f"{where}.epochs",
                    "only the last phase can run for the rest of the run",
                    expected="a number of epochs",
                    received="rest",
                    fix=f"set {where}.epochs to a number, or move this phase last",
                )
            phases.append(PhaseSpec(i, str(label), arch, optimizer, rest=True))
        elif raw_phase.get("epochs") is not None:
            phases.append(
                PhaseSpec(i, str(label), arch, optimizer, epochs=_epochs(raw_phase["epochs"], f"{where}.epochs"))
            )
        else:
            plateau, cap = parse_until(raw_phase["until"], f"{where}.until")
            phases.append(PhaseSpec(i, str(label), arch, optimizer, plateau=plateau, max_epochs=cap))
    check_plateau_monitors(phases, run.data)
    if phases[-1].rest:  # the phases before `rest` must leave it at least one epoch of trainer.epochs
        budget = sum(p.epochs if p.epochs is not None else p.max_epochs for p in phases[:-1])
        if budget >= run.trainer.epochs:
            raise ConfigError(
                "trainer.epochs",
                f"the phases before the last ('epochs: rest') can take {budget} "
                f"epochs, which leaves the last phase nothing of trainer.epochs={run.trainer.epochs}",
                expected=f"trainer.epochs > {budget}",
                received=run.trainer.epochs,
                fix=f"raise trainer.epochs above {budget}, or lower the earlier phases' epochs/max_epochs",
            )
    return dataclasses.replace(run, schedule=name, phases=tuple(phases))


def _phase_optimizer(run: RunConfig, patch: Any, where: str):
    """The run's optimizer settings with the phase's patch, validated by the same rules as `optimizer.*`."""
    import dataclasses

    from .config import OptimizerConfig, from_mapping

    if patch is not None and not isinstance(patch, dict):
        raise ConfigError(
            where,
            "a phase's optimizer settings are a mapping",
            expected="{lr: 3.0e-4}",
            received=patch,
            fix=f"write {where} as a mapping",
        )
    try:
        return from_mapping(OptimizerConfig, {**dataclasses.asdict(run.optimizer), **(patch or {})}, "optimizer")
    except ConfigError as e:  # same rules, but the message names the phase's key
        rename = lambda text: None if text is None else str(text).replace("optimizer", where, 1)  # noqa: E731
        raise ConfigError(
            rename(e.where), e.problem, expected=e.expected, received=e.received, fix=rename(e.fix)
        ) from None


def _epochs(value: Any, where: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 < value <= 100_000:
        raise ConfigError(
            where,
            "must be a whole number of epochs",
            expected="an integer in [1, 100000], or 'rest' (last phase: until trainer.epochs in all)",
            received=value,
            fix=f"set {where} to e.g. 2",
        )
    return value


def _override_list(overrides: Any) -> list[str]:
    """The overrides as a list of strings: a notebook's compose_run("data=mnist_subset") was split into
    characters ("d: Hydra cannot parse the override"), a non-string item raised AttributeError."""
    if overrides is None:
        return []
    items = list(overrides) if isinstance(overrides, Iterable) and not isinstance(overrides, (str, bytes)) else None
    if items is None or not all(isinstance(o, str) for o in items):
        bad = overrides if items is None else next(o for o in items if not isinstance(o, str))
        raise ConfigError(
            "overrides",
            "the overrides are a list of strings, one KEY=VALUE each",
            expected='e.g. ["data=mnist_subset", "trainer.epochs=3"]',
            received=f"{type(bad).__name__} {shown(bad)!r}" if not isinstance(bad, str) else f"the string {bad!r}",
            fix="pass a list: compose_run([" + (repr(bad) if isinstance(bad, str) else "'KEY=VALUE'") + "])",
        )
    return items


def compose_config(overrides: Sequence[str]) -> tuple[DictConfig, dict[str, Any]]:
    """Compose conf/ with Hydra's compose API (after the pre-flight check): (config, what resolve_config
    needs besides it: variant, schedule_name, search_dirs)."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException

    overrides = _override_list(overrides)
    overrides = qualify_arch_overrides(overrides)
    preflight(overrides)
    try:
        with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
            cfg = compose("config", overrides=list(overrides), return_hydra_config=True)
            choices = dict(cfg.hydra.runtime.choices)
            sources = [Path(s.path) for s in cfg.hydra.runtime.config_sources if s.schema == "file"]
    except HydraException as e:
        raise ConfigError(
            "overrides",
            f"Hydra cannot compose the config: {str(e).splitlines()[0]}",
            expected="overrides naming existing keys and config options",
            received=" ".join(overrides),
            fix="check the spelling; new keys need a leading +",
        ) from None
    context = {"variant": variant_name(choices), "schedule_name": choices.get("schedule"), "search_dirs": sources}
    return OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]), context


def compose_run(overrides: Sequence[str]) -> RunConfig:
    """What a CLI run with these overrides would train, validated, without running anything."""
    cfg, context = compose_config(overrides)
    return resolve_config(cfg, **context)[0]


def hydra_value(value: str) -> str:
    """`value` as Hydra's override grammar reads it back unchanged: quoted when it holds anything but plain path
    characters (a run dir named `it's a dir`, `a,b` or `ü` made the printed resume command unparsable, or a
    sweep). Inside the quotes Hydra takes \\' for a quote."""
    if re.fullmatch(r"[\w/.+:@-]+", value, re.ASCII):
        return value
    return "'" + value.replace("'", "\\'") + "'"


def shell_command(args: Iterable[str]) -> str:
    """A command line the user can paste: every argument shell-quoted (run dirs may hold spaces)."""
    return " ".join(shlex.quote(str(a)) for a in args)
