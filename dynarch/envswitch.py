"""On/off environment variables dynarch reads (DYNARCH_LEAN_IMPORTS, DYNARCH_FAST_EXIT): one vocabulary and one
error for a value that is neither, so that no switch takes a typo for 'unset'. Standard library only: the CLI
reads them before Keras starts."""

from __future__ import annotations

import os

from .errors import ConfigError, shown

SWITCH = {"1": True, "true": True, "yes": True, "on": True, "0": False, "false": False, "no": False, "off": False}


def env_switch(name: str, meaning: str) -> bool | None:
    """The switch `name` as True/False, None when unset or empty; any other value is a ConfigError. `meaning`:
    what 1 and 0 do, for the error's expected line."""
    raw = os.environ.get(name, "")
    if not raw.strip():
        return None
    value = raw.strip().lower()
    if value not in SWITCH:
        raise ConfigError(
            name,
            "is not a switch",
            expected=f"{meaning} (also true/false, yes/no, on/off)",
            received=shown(raw),
            fix=f"unset {name}, or set it to 1 or 0",
        )
    return SWITCH[value]
