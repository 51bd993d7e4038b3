"""Everything Hydra-facing that is not the entry point: the config dir, composing a run, the variant name,
and the pre-flight check of config files (size, depth, tags, duplicate keys, what a variant may patch).

The pre-flight check runs before Hydra reads a file: Hydra acts on `hydra.*` nodes (callbacks, logging
handlers) while composing, so a variant file that sets them must be refused before composition, not after.
"""
from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any, Iterable, Sequence

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .config import RunConfig, load_run_config
from .errors import ConfigError, did_you_mean

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
# What a variant patch (`+arch=NAME`, a `# @package _global_` file) may change. Anything else — above all
# `hydra.*`, whose callbacks and logging handlers Hydra instantiates — is the user's command line's to set.
VARIANT_KEYS = ("model", "data", "trainer", "optimizer")
VARIANT_GROUPS = ("arch",)
MAX_FILE_BYTES = 1 << 20           # a config file larger than 1 MiB is not a config
MAX_NODES = 20_000                 # leaves + containers after alias expansion (the shipped files: < 100)
MAX_DEPTH = 32


def variant_name(choices: dict[str, Any] | None) -> str:
    """The variant a run records: its `+arch` choice, or "base"."""
    return str((choices or {}).get("arch") or "base")


def resolve_config(cfg: DictConfig, variant: str) -> tuple[RunConfig, dict]:
    """DictConfig -> (validated RunConfig, resolved plain dict). The only place that touches DictConfig."""
    try:
        container = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", "") or "config"
        raise ConfigError(key, f"cannot resolve the config: {getattr(e, 'msg', None) or e}",
                          expected="every ??? value set and every ${...} resolvable", received=None,
                          fix=f"set it on the command line, e.g. {key}=VALUE") from None
    container.pop("hydra", None)
    return load_run_config(container, variant), container


def compose_config(overrides: Sequence[str]) -> tuple[DictConfig, str]:
    """Compose conf/ with Hydra's compose API (after the pre-flight check): (config, variant name)."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException

    preflight(overrides)
    try:
        with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
            cfg = compose("config", overrides=list(overrides), return_hydra_config=True)
            choices = dict(cfg.hydra.runtime.choices)
    except HydraException as e:
        raise ConfigError("overrides", f"Hydra cannot compose the config: {str(e).splitlines()[0]}",
                          expected="overrides naming existing keys and config options",
                          received=" ".join(overrides), fix="check the spelling; new keys need a leading +") from None
    return OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]), variant_name(choices)


def compose_run(overrides: Sequence[str]) -> RunConfig:
    """What a CLI run with these overrides would train, validated, without running anything."""
    cfg, variant = compose_config(overrides)
    return resolve_config(cfg, variant)[0]


def shell_command(args: Iterable[str]) -> str:
    """A command line the user can paste: every argument shell-quoted (run dirs may hold spaces)."""
    return " ".join(shlex.quote(str(a)) for a in args)


# ---------------------------------------------------------------------------------------------- preflight

def _search_dirs(argv: Sequence[str]) -> list[Path]:
    """conf/ plus the folders a command line adds (--config-dir/-cd, hydra.searchpath=[...])."""
    dirs = [CONF_DIR]
    for i, arg in enumerate(argv):
        if arg in ("--config-dir", "-cd", "--config-path", "-cp") and i + 1 < len(argv):
            dirs.append(Path(argv[i + 1]).expanduser())
        elif arg.startswith(("--config-dir=", "--config-path=")):
            dirs.append(Path(arg.split("=", 1)[1]).expanduser())
        elif arg.lstrip("+").startswith("hydra.searchpath="):
            for item in arg.split("=", 1)[1].strip("[]").split(","):
                item = item.strip().strip("'\"")
                if item.startswith("file://"):
                    dirs.append(Path(item[len("file://"):]).expanduser())
                elif item and "://" not in item:
                    dirs.append(Path(item).expanduser())
    return [d for d in dirs if d.is_dir()]


def _variant_choices(argv: Sequence[str]) -> list[tuple[str, str]]:
    """(group, option) for every variant-group choice on the command line (sweeps list several)."""
    out = []
    for arg in argv:
        key, sep, value = arg.lstrip("+~").partition("=")
        if sep and key in VARIANT_GROUPS:
            for option in value.strip("[]").split(","):
                option = option.strip().strip("'\"")
                if option and not option.startswith(("choice(", "range(", "glob(")):
                    out.append((key, option))
    return out


def preflight(argv: Sequence[str]) -> None:
    """Check every YAML file Hydra may read for this command line, before Hydra reads any.

    Raises ConfigError naming the file: too large or too deep, aliases that expand past MAX_NODES,
    duplicate keys, non-plain tags (`!!python/...`), or a variant file setting anything but
    model/data/trainer/optimizer.
    """
    dirs = _search_dirs(argv)
    for folder in dirs:
        files = sorted(folder.rglob("*.yaml"))[:2000]
        for path in files:
            check_yaml_file(path)
    for group, option in _variant_choices(argv):
        for folder in dirs:
            path = folder / group / f"{option}.yaml"
            if path.is_file():
                check_variant_file(path, group)


def _load_bounded(path: Path) -> Any:
    """Parse a YAML file into plain data with PyYAML's safe composer, bounding size, depth and expansion."""
    import yaml

    try:
        size = path.stat().st_size
    except OSError as e:
        raise ConfigError(str(path), f"cannot read the config file ({e.strerror})", expected="a readable file",
                          received=str(path), fix="check the path and its permissions") from None
    if size > MAX_FILE_BYTES:
        raise ConfigError(str(path), "config file too large", expected=f"at most {MAX_FILE_BYTES:,} bytes",
                          received=f"{size:,} bytes", fix="split it, or keep data out of config files")
    try:
        node = yaml.compose(path.read_text(encoding="utf-8"), Loader=yaml.SafeLoader)
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ConfigError(str(path), f"not valid YAML: {str(e).splitlines()[0]}", expected="a YAML mapping",
                          received=str(e).replace("\n", " ")[:300], fix="fix the syntax at the line shown") from None
    budget = [MAX_NODES]
    return _plain(node, path, 0, budget)


PLAIN_TAGS = {"tag:yaml.org,2002:" + t for t in ("str", "int", "float", "bool", "null", "map", "seq")}


def _plain(node, path: Path, depth: int, budget: list[int]) -> Any:
    import yaml

    if node is None:
        return None
    budget[0] -= 1
    if budget[0] < 0 or depth > MAX_DEPTH:
        what = f"nesting deeper than {MAX_DEPTH}" if depth > MAX_DEPTH else f"more than {MAX_NODES:,} values"
        raise ConfigError(str(path), f"config file too complex: {what} (after expanding aliases)",
                          expected=f"at most {MAX_NODES:,} values, {MAX_DEPTH} levels",
                          received=what, fix="remove the nested anchors/aliases; write the values out")
    if node.tag not in PLAIN_TAGS:
        raise ConfigError(str(path), f"tag {node.tag} is not allowed (line {node.start_mark.line + 1})",
                          expected="plain YAML: strings, numbers, booleans, null, lists, mappings",
                          received=node.tag, fix="remove the tag: configs are data and cannot name Python objects")
    if isinstance(node, yaml.MappingNode):
        out: dict = {}
        for key_node, value_node in node.value:
            key = _plain(key_node, path, depth + 1, budget)
            if isinstance(key, (dict, list)):
                raise ConfigError(str(path), f"a mapping key must be a scalar (line {key_node.start_mark.line + 1})",
                                  expected="key: value", received=type(key).__name__, fix="use a plain key")
            if key in out:
                raise ConfigError(str(path), f"duplicate key '{key}' (line {key_node.start_mark.line + 1})",
                                  expected="each key once per mapping", received=f"'{key}' twice",
                                  fix=f"keep one '{key}' entry")
            out[key] = _plain(value_node, path, depth + 1, budget)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_plain(v, path, depth + 1, budget) for v in node.value]
    return node.value


def check_yaml_file(path: Path) -> Any:
    """The file's content as plain data, or a ConfigError naming the file and what is wrong."""
    return _load_bounded(Path(path))


def check_variant_file(path: Path, group: str = "arch") -> None:
    """A variant patch may set model/data/trainer/optimizer only (and must be a `_global_` mapping)."""
    data = check_yaml_file(path)
    if data is None:
        return
    if not isinstance(data, dict):
        raise ConfigError(str(path), "a variant file must be a mapping", expected="model: {...}",
                          received=type(data).__name__, fix="write the patch as a mapping under model:")
    for key in data:
        if key not in VARIANT_KEYS:
            extra = (" (hydra.* settings run code and open files: they belong on your own command line)"
                     if key == "hydra" else "")
            raise ConfigError(f"{group}/{Path(path).stem}: {key}",
                              f"a variant file may only patch {', '.join(VARIANT_KEYS)}{extra}."
                              f"{did_you_mean(key, VARIANT_KEYS)}",
                              expected=f"top-level keys among {', '.join(VARIANT_KEYS)}", received=key,
                              fix=f"remove '{key}' from {path}")
