"""Hydra entry point: `python -m dynarch [+arch=NAME] [overrides]`, `-m` for sweeps.

Validation runs before TensorFlow is imported, so `--help`, `--cfg job` and any bad config answer fast.
"""
from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .config import RunConfig, load_run_config
from .errors import ConfigError, DynarchError

log = logging.getLogger("dynarch")
CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TF's C++ start-up chatter out of the run log


def resolve_config(cfg: DictConfig, variant: str) -> tuple[RunConfig, dict]:
    """DictConfig -> (validated RunConfig, resolved plain dict). The only place that touches DictConfig."""
    try:
        container = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", "") or "config"
        raise ConfigError(key, f"cannot resolve the config: {e.msg if hasattr(e, 'msg') else e}",
                          expected="every ??? value set and every ${...} resolvable", received=None,
                          fix=f"set it on the command line, e.g. {key}=VALUE") from None
    return load_run_config(container, variant), container


def compose_run(overrides: list[str]) -> RunConfig:
    """Compose conf/ with Hydra's compose API and validate: what a CLI run would get, without running."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=list(overrides))
    variant = next((o.split("=", 1)[1] for o in overrides if o.startswith("+arch=")), "base")
    return resolve_config(cfg, variant)[0]


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> float:
    hc = HydraConfig.get()
    variant = hc.runtime.choices.get("arch") or "base"
    out_dir = Path(hc.runtime.output_dir)
    try:
        run, resolved = resolve_config(cfg, variant)
        from . import artifacts
        artifacts.write_text(out_dir / "config.yaml", OmegaConf.to_yaml(resolved))
        from .train import train  # TensorFlow is imported from here on
        metrics = train(run, out_dir, resume=run.resume, resume_command=resume_command(hc, out_dir))
    except Exception as e:
        if hc.mode != RunMode.MULTIRUN:
            if isinstance(e, DynarchError):
                log.error("%s", e)
                sys.exit(getattr(e, "exit_code", 2))
            raise
        # In a sweep one failing job must not lose the others: record it, let Hydra go on.
        record_failure(out_dir, e)
        log.error("job %s failed: %s", hc.job.num, e)
        return float("nan")
    print(f"test accuracy {metrics['test_accuracy']:.4f}  test loss {metrics['test_loss']:.4f}  "
          f"({metrics['data_source']})  run dir: {out_dir}")
    return float(metrics.get(run.optimized_metric) or metrics["test_accuracy"])


def resume_command(hc, out_dir: Path) -> str:
    """The command that continues this run in place."""
    keep = [o for o in hc.overrides.task if not o.startswith(("resume=", "hydra.run.dir="))]
    return " ".join(["python -m dynarch", *keep, f"hydra.run.dir={out_dir}", "resume=true"])


def record_failure(out_dir: Path, error: BaseException) -> None:
    """error.json in the job's dir: the sweep summary marks the job failed with this message."""
    import traceback
    from .artifacts import write_json
    write_json(out_dir / "error.json", {
        "type": type(error).__name__, "message": str(error),
        "traceback": None if isinstance(error, DynarchError) else traceback.format_exc()[-4000:]})


if __name__ == "__main__":
    main()
