"""Command-line overrides checked before Hydra sees them: Hydra reports a bad override, a missing config
option or a missing primary config itself, with its own wording, exit status 1 and no `fix:` line. These
checks give the same cases one dynarch error (key, expected, received, fix) instead. Pure Python, no TF.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from .errors import ConfigError, did_you_mean

# Hydra's own flags that take a value (the value is not an override).
VALUE_FLAGS = {
    "--config-path",
    "-cp",
    "--config-name",
    "-cn",
    "--config-dir",
    "-cd",
    "--cfg",
    "-c",
    "--package",
    "-p",
    "--shell-completion",
    "-sc",
    "--experimental-rerun",
    "--info",
    "-i",
}
HANDLED_GROUPS = ("arch", "schedule")  # preflight checks these itself (per-model names, file contents)


def split_argv(argv: Sequence[str]) -> tuple[list[str], dict[str, str]]:
    """(overrides, {flag: value}) from a command line."""
    overrides, flags, skip = [], {}, False
    for i, arg in enumerate(argv):
        if skip:
            skip = False
            continue
        if arg.startswith("-"):
            name, sep, value = arg.partition("=")
            if name in VALUE_FLAGS and not sep and i + 1 < len(argv) and name not in ("--info", "-i"):
                flags[name], skip = argv[i + 1], True
            elif name in VALUE_FLAGS:
                flags[name] = value
            continue
        overrides.append(arg)
    return overrides, flags


def _parse(overrides: list[str]) -> list[Any]:
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parser, parsed = OverridesParser.create(), []
    for text in overrides:
        try:
            parsed.append(parser.parse_override(text))
        except HydraException as e:
            first = str(e).splitlines()[0] if str(e) else "cannot parse"
            key, _, value = text.partition("=")
            # SWEEP_DIR#JOB (init_from, lineage.parent) is documented, and Hydra's grammar refuses a bare '#'
            hint = f"quote the value (the shell's quotes outside): '{key}=\"{value}\"'" if "#" in value else ""
            raise ConfigError(
                key or text,
                f"Hydra cannot parse the override: {first}",
                expected="KEY=VALUE with an ASCII key; quote values holding spaces, unicode or "
                "special characters, e.g. model.name='my model'",
                received=text,
                fix=hint or "fix or quote the override (see python -m dynarch --help)",
            ) from None
    return parsed


def _options(override: Any) -> list[str]:
    if override.is_delete():
        return []
    if override.is_sweep_override():
        try:
            return list(override.sweep_string_iterator())
        except Exception:  # noqa: BLE001  glob(...) needs Hydra's loader: leave it to Hydra
            return []
    value = override.value()
    return [value] if isinstance(value, str) else []


def _check_group_value(override: Any, group: str, known: list[str]) -> None:
    """A config group takes an option name (or a list of them): `trainer=null`, `trainer=5` or `model=true`
    made Hydra raise a ValueError with its full traceback ("Config group override must be a string or a list")."""
    if override.is_delete() or override.is_sweep_override():
        return
    value = override.value()
    if isinstance(value, (str, list)):
        return
    shown = "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)
    raise ConfigError(
        f"{group}={shown}",
        f"'{group}' is a config group: it takes the name of a file in {group}/, not {shown}",
        expected=f"one of {', '.join(known)}",
        received=shown,
        fix=f"pick one of those (e.g. {group}={known[0] if known else 'NAME'})",
    )


def check_overrides(argv: Sequence[str], dirs: Sequence[Path]) -> None:
    """Every override parses; every config-group choice (model=, data=, ...) names an existing file; the
    primary config named by --config-name exists.

    Raises:
        ConfigError naming the override and the closest existing option.
    """
    overrides, flags = split_argv(argv)
    name = flags.get("--config-name") or flags.get("-cn")
    if name and not any((Path(d) / f"{name}.yaml").is_file() for d in dirs):
        known = sorted({p.stem for d in dirs for p in Path(d).glob("*.yaml")})
        raise ConfigError(
            "--config-name",
            f"no primary config named '{name}'.{did_you_mean(name, known)}",
            expected=f"one of {', '.join(known)}",
            received=name,
            fix="drop --config-name (the default is config), or name a file in the config folders",
        )
    for override in _parse(overrides):
        group = override.key_or_group
        if group in HANDLED_GROUPS or group.startswith("hydra") or override.is_add() and "." in group:
            continue
        if not any((Path(d) / group).is_dir() for d in dirs):
            continue  # a key, not a config group
        known = sorted(
            {
                str(p.relative_to(Path(d) / group).with_suffix(""))
                for d in dirs
                for p in (Path(d) / group).rglob("*.yaml")
                if (Path(d) / group).is_dir()
            }
        )
        _check_group_value(override, group, known)
        for option in _options(override):
            if not any((Path(d) / group / f"{option}.yaml").is_file() for d in dirs):
                raise ConfigError(
                    f"{group}={option}",
                    f"no {group} config named '{option}'.{did_you_mean(option, known)}",
                    expected=f"one of {', '.join(known)}",
                    received=option,
                    fix=f"pick one of those, or add {group}/{option}.yaml to a folder given with --config-dir",
                )
