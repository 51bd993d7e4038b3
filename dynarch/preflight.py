"""Pre-flight check of the config files a command line will make Hydra read — before Hydra reads any.

Hydra acts on `hydra.*` nodes (callbacks, logging handlers) while composing, so a variant file that sets
them must be refused before composition, not after. Every YAML file in the search path is parsed with
PyYAML's safe composer under bounds (size, depth, values after alias expansion), without tags or
duplicate keys; variant files may patch model/data/trainer/optimizer only; schedule files stay in their
package.
"""

from __future__ import annotations

import re
import stat
from pathlib import Path
from typing import Any, Sequence

from .errors import ConfigError, did_you_mean

CONF_DIR = Path(__file__).resolve().parent / "conf"  # in the package, so the wheel carries it (conf/ links here)
# What a variant patch (`+arch=NAME`, a `# @package _global_` file) may change. Anything else — above all
# `hydra.*`, whose callbacks and logging handlers Hydra instantiates — is the user's command line's to set.
VARIANT_KEYS = ("model", "data", "trainer", "optimizer")
VARIANT_GROUPS = ("arch", "schedule")
MAX_FILE_BYTES = 1 << 20  # a config file larger than 1 MiB is not a config
MAX_NODES = 20_000  # leaves + containers after alias expansion (the shipped files: < 100)
MAX_DEPTH = 32


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
                    dirs.append(Path(item[len("file://") :]).expanduser())
                elif item and "://" not in item:
                    dirs.append(Path(item).expanduser())
    for d in dirs[1:]:
        if not d.is_dir():
            raise ConfigError(
                str(d),
                "the config folder does not exist" if not d.exists() else "not a folder",
                expected="an existing folder of YAML configs (--config-dir / hydra.searchpath)",
                received=str(d),
                fix="check the path given to --config-dir or hydra.searchpath",
            )
    return dirs


def _variant_choices(argv: Sequence[str]) -> list[tuple[str, str]]:
    """(group, option) for every variant-group choice on the command line (sweeps list several)."""
    out = []
    for arg in argv:
        key, sep, value = arg.lstrip("+~").partition("=")
        key = key.split("@", 1)[0]  # +arch@PKG=NAME still reads arch/NAME.yaml
        if sep and key in VARIANT_GROUPS and not value.lstrip().startswith("{"):  # {..}: a value, not a file
            for option in value.strip("[]").split(","):
                option = option.strip().strip("'\"")
                if re.fullmatch(r"[\w./-]+", option):
                    out.append((key, option))
    return out


def preflight(argv: Sequence[str]) -> None:
    """Check every YAML file Hydra may read for this command line, before Hydra reads any.

    Raises ConfigError naming the file: too large or too deep, aliases that expand past MAX_NODES,
    duplicate keys, non-plain tags (`!!python/...`), or a variant file setting anything but
    model/data/trainer/optimizer.
    """
    dirs = _search_dirs(argv)
    _check_cli_packages(argv)
    from .cli_overrides import check_overrides

    check_overrides(argv, dirs)  # Hydra's own errors for these carry no fix: line
    user_files = []
    for folder in dirs:
        files = sorted(p for p in folder.rglob("*.yaml") if not p.is_dir())[:2000]  # a folder named x.yaml: a group
        for path in files:
            data = check_yaml_file(path)
            if folder != CONF_DIR:
                user_files.append((path, data, folder))
    for group, option in _variant_choices(argv):
        paths = [folder / group / f"{option}.yaml" for folder in dirs if (folder / group / f"{option}.yaml").is_file()]
        for path in paths:
            (check_schedule_file if group == "schedule" else check_variant_file)(path, group)
        if not paths:
            known = sorted(
                str(p.relative_to(folder / group).with_suffix(""))
                for folder in dirs
                for p in (folder / group).rglob("*.yaml")
            )
            hint = " for this model" if group == "arch" and "/" not in option else ""
            raise ConfigError(
                f"+{group}={option}",
                f"no {group} named '{option}'{hint}.{_closest(option, known)}",
                expected=f"one of {', '.join(known)}",
                received=option,
                fix="pick one of those"
                + (
                    " (variants live in conf/arch/<model>/NAME.yaml; with several "
                    "models in one sweep write +arch=MODEL/NAME)"
                    if group == "arch"
                    else ""
                ),
            )
    for path, data, folder in user_files:  # after the variant checks, whose messages are more specific
        check_user_file(path, data, folder)


def _closest(name: str, known: Sequence[str]) -> str:
    """' Did you mean ...?' comparing short names too (`wdie` -> mlp/wide, cnn/wide)."""
    import difflib

    short = name.rsplit("/", 1)[-1]
    stems = difflib.get_close_matches(short, sorted({k.rsplit("/", 1)[-1] for k in known}), n=1, cutoff=0.6)
    full = [k for k in known if stems and k.rsplit("/", 1)[-1] == stems[0]]
    return f" Did you mean {' or '.join(repr(k) for k in full)}?" if full else did_you_mean(name, known)


def _load_bounded(path: Path) -> Any:
    """Parse a YAML file into plain data with PyYAML's safe composer, bounding size, depth and expansion."""
    import yaml

    try:
        info = path.stat()
        size, mode = info.st_size, info.st_mode
    except OSError as e:
        raise ConfigError(
            str(path),
            f"cannot read the config file ({e.strerror})",
            expected="a readable file",
            received=str(path),
            fix="check the path and its permissions",
        ) from None
    if size > MAX_FILE_BYTES:
        raise ConfigError(
            str(path),
            "config file too large",
            expected=f"at most {MAX_FILE_BYTES:,} bytes",
            received=f"{size:,} bytes",
            fix="split it, or keep data out of config files",
        )
    if not stat.S_ISREG(mode):  # a FIFO or /dev/zero would block or never end
        raise ConfigError(
            str(path),
            "not a regular file",
            expected="a YAML file",
            received="a FIFO, device or socket",
            fix=f"remove {path} from the config folder",
        )
    try:
        with open(path, "rb") as f:  # bounded: the file may grow between stat and read
            raw = f.read(MAX_FILE_BYTES + 1)
        if len(raw) > MAX_FILE_BYTES:
            raise ConfigError(
                str(path),
                "config file too large",
                expected=f"at most {MAX_FILE_BYTES:,} bytes",
                received=f"more than {MAX_FILE_BYTES:,} bytes",
                fix="split it",
            )
        node = yaml.compose(raw.decode("utf-8"), Loader=yaml.SafeLoader)
    except OSError as e:
        raise ConfigError(
            str(path),
            f"cannot read the config file ({e.strerror})",
            expected="a readable file",
            received=str(path),
            fix="check the path and its permissions",
        ) from None
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ConfigError(
            str(path),
            f"not valid YAML: {str(e).splitlines()[0]}",
            expected="a YAML mapping",
            received=str(e).replace("\n", " ")[:300],
            fix="fix the syntax at the line shown",
        ) from None
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
        raise ConfigError(
            str(path),
            f"config file too complex: {what} (after expanding aliases)",
            expected=f"at most {MAX_NODES:,} values, {MAX_DEPTH} levels",
            received=what,
            fix="remove the nested anchors/aliases; write the values out",
        )
    if node.tag not in PLAIN_TAGS:
        raise ConfigError(
            str(path),
            f"tag {node.tag} is not allowed (line {node.start_mark.line + 1})",
            expected="plain YAML: strings, numbers, booleans, null, lists, mappings",
            received=node.tag,
            fix="remove the tag: configs are data and cannot name Python objects",
        )
    if isinstance(node, yaml.MappingNode):
        out: dict = {}
        for key_node, value_node in node.value:
            key = _plain(key_node, path, depth + 1, budget)
            if isinstance(key, (dict, list)):
                raise ConfigError(
                    str(path),
                    f"a mapping key must be a scalar (line {key_node.start_mark.line + 1})",
                    expected="key: value",
                    received=type(key).__name__,
                    fix="use a plain key",
                )
            if key in out:
                raise ConfigError(
                    str(path),
                    f"duplicate key '{key}' (line {key_node.start_mark.line + 1})",
                    expected="each key once per mapping",
                    received=f"'{key}' twice",
                    fix=f"keep one '{key}' entry",
                )
            out[key] = _plain(value_node, path, depth + 1, budget)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_plain(v, path, depth + 1, budget) for v in node.value]
    return yaml.SafeLoader("").construct_object(node)  # a scalar, typed by the tag the resolver gave it


def check_yaml_file(path: Path) -> Any:
    """The file's content as plain data, or a ConfigError naming the file and what is wrong."""
    return _load_bounded(Path(path))


def check_schedule_file(path: Path, group: str = "schedule") -> None:
    """A schedule file lives in its own package (`schedule`) and holds `phases` only."""
    text = Path(path).read_text(encoding="utf-8", errors="replace")
    header = next((line for line in text.splitlines()[:5] if "@package" in line), None)
    if header is not None and header.split("@package", 1)[1].strip() not in ("schedule", "_group_"):
        raise ConfigError(
            f"{group}/{Path(path).stem}",
            "a schedule file may not change its package",
            expected="no '# @package' line (the schedule package)",
            received=header.strip(),
            fix=f"remove the '# @package' line from {path}",
        )
    data = check_yaml_file(path)
    if not isinstance(data, dict) or set(data) - {"phases"}:
        raise ConfigError(
            f"{group}/{Path(path).stem}",
            "a schedule file holds a list of phases only",
            expected="phases: [...]",
            received=sorted(data) if isinstance(data, dict) else data,
            fix=f"keep only 'phases' in {path}",
        )


def check_variant_file(path: Path, group: str = "arch") -> None:
    """A variant patch may set model/data/trainer/optimizer only (and must be a `_global_` mapping)."""
    data = check_yaml_file(path)
    if data is None:
        return
    if not isinstance(data, dict):
        raise ConfigError(
            str(path),
            "a variant file must be a mapping",
            expected="model: {...}",
            received=type(data).__name__,
            fix="write the patch as a mapping under model:",
        )
    for key in data:
        if key not in VARIANT_KEYS:
            extra = (
                " (hydra.* settings run code and open files: they belong on your own command line)"
                if key == "hydra"
                else ""
            )
            raise ConfigError(
                f"{group}/{Path(path).stem}: {key}",
                f"a variant file may only patch {', '.join(VARIANT_KEYS)}{extra}.{did_you_mean(key, VARIANT_KEYS)}",
                expected=f"top-level keys among {', '.join(VARIANT_KEYS)}",
                received=key,
                fix=f"remove '{key}' from {path}",
            )


def package_header(text: str) -> str | None:
    """The `# @package X` header as Hydra reads it: the leading `# @key value` lines, blank lines skipped."""
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        if not re.match(r"^\s*#\s*@", line):
            return None
        parts = line.lstrip("#").split()
        if len(parts) == 2 and parts[0] == "@package":
            return parts[1]
    return None


def _refuse_hydra(path: Path, what: str, received: Any) -> ConfigError:
    return ConfigError(
        str(path),
        f"a config file from --config-dir/hydra.searchpath may not set hydra.* ({what})",
        expected="settings of model, data, trainer, optimizer, schedule, ... (hydra.* settings run code "
        "and open files)",
        received=received,
        fix="remove it from the file; set hydra.* on your own command line instead",
    )


def check_user_file(path: Path, data: Any, folder: Path) -> None:
    """A YAML file from a folder the command line added: it may not reach Hydra's own node (`hydra.*`:
    callbacks run code, logging handlers open files) by its package header, a top-level `hydra` key, or a
    defaults entry that pulls a hydra config or re-packages one under hydra."""
    header = package_header(Path(path).read_text(encoding="utf-8", errors="replace"))
    if header and (header.split(".")[0] == "hydra" or header.startswith("_global_.hydra")):
        raise _refuse_hydra(path, f"its header '# @package {header}'", header)
    if isinstance(data, dict) and "hydra" in data:
        raise _refuse_hydra(path, "a top-level 'hydra' key", "hydra: ...")
    defaults = data.get("defaults") if isinstance(data, dict) else None
    for entry in defaults if isinstance(defaults, list) else []:
        items = entry.items() if isinstance(entry, dict) else [(entry, None)] if isinstance(entry, str) else []
        for key, value in items:
            key = str(key)
            group, _, package = key.removeprefix("override ").strip().lstrip("/").partition("@")
            if "hydra" in package.split(".") or (
                group.split("/")[0] == "hydra" and not (CONF_DIR / group / f"{value}.yaml").is_file()
            ):
                raise _refuse_hydra(path, f"the defaults entry '{key}'", entry)


def _check_cli_packages(argv: Sequence[str]) -> None:
    """`+GROUP@hydra=NAME` would put a config file's content under hydra.*: refused (hydra.* keys may be set
    directly on the command line)."""
    for arg in argv:
        key, sep, _ = arg.lstrip("+~").partition("=")
        package = key.partition("@")[2]
        if sep and package and ("hydra" in package.split(".") or package.startswith("_global_.hydra")):
            raise ConfigError(
                arg,
                "a config group cannot be placed under hydra.*",
                expected="GROUP=NAME or GROUP@PACKAGE=NAME with a package outside hydra",
                received=arg,
                fix="set the hydra.* keys you need directly on the command line",
            )
