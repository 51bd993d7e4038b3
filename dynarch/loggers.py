"""Loggers from config (a Hydra group, conf/logger/): `logger=csv|tensorboard|mlflow|many`, or several as
`logger=[csv,mlflow]`; each writes inside the run dir unless told otherwise.

    logger:
      csv: {filename: metrics.csv}        # one row per epoch, a phase column; rewritten atomically each epoch
      tensorboard: {histogram_freq: 0}    # Keras' TensorBoard callback into RUN/tensorboard (extra)
      mlflow: {tracking_uri: null, experiment: dynarch}   # null: sqlite:///RUN/mlflow.db (extra)

Checking is pure Python (no TensorFlow, no MLflow import). The CSV logger is written here rather than
Keras' CSVLogger because that one fixes its columns at the first epoch (a later phase's learning_rate
breaks it) and appends blindly (a resumed run would repeat the epochs it retrains).
"""

from __future__ import annotations

import functools
import importlib.util
import json
import logging
import math
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

from .errors import ConfigError, did_you_mean
from .hooks import _BOOL, _TENSORBOARD, CallbackSpec, check_options, phase_of, require_tensorboard

log = logging.getLogger(__name__)
MLFLOW_EXTRA = "pip install -e '.[mlflow]'"
MLFLOW_RUN_FILE = "mlflow-run.json"  # where a resumed run finds its MLflow run again
_SCHEMES = ("sqlite", "file", "http", "https")
_STR = (lambda v: isinstance(v, str) and 0 < len(v) <= 250, "a non-empty string (at most 250 characters)")
_OPT_STR = (lambda v: v is None or _STR[0](v), "null or a non-empty string")
_URI = (
    lambda v: v is None or (isinstance(v, str) and v.split(":", 1)[0] in _SCHEMES and ":" in v),
    "null (sqlite:///RUN/mlflow.db) or a URI starting sqlite:, file:, http: or https:",
)
_FILENAME = (
    lambda v: isinstance(v, str) and re.fullmatch(r"[\w.-]{1,100}\.csv", v) is not None,
    "a file name ending .csv, without folders (it lands in the run dir)",
)
_TAGS = (
    lambda v: (
        v is None
        or (
            isinstance(v, Mapping)
            and all(isinstance(k, str) and isinstance(x, (str, int, float, bool)) for k, x in v.items())
        )
    ),
    "null or a mapping of name -> plain value",
)
LOGGER_KEYS = {
    "csv": {"filename": _FILENAME},
    "tensorboard": _TENSORBOARD,
    "mlflow": {"tracking_uri": _URI, "experiment": _STR, "run_name": _OPT_STR, "log_artifacts": _BOOL, "tags": _TAGS},
}
# Run-dir files an MLflow run gets at the end (the train-state checkpoints and tensorboard/ stay out).
ARTIFACT_SUFFIXES = (".md", ".json", ".csv", ".png", ".yaml", ".log")
ARTIFACT_DIRS = ("checkpoint", "checkpoint-best", ".hydra")
# metrics.json values logged once at the end (step = epochs trained); per-epoch values are logged as they come.
FINAL_METRICS = ("test_accuracy", "test_loss", "params", "train_time_s", "samples_per_s", "wall_time_s")


@dataclass(frozen=True)
class LoggerSpec:
    kind: str  # csv | tensorboard | mlflow
    options: tuple[tuple[str, Any], ...] = ()

    @property
    def kwargs(self) -> dict[str, Any]:
        return dict(self.options)


def parse_loggers(raw: Any, where: str = "logger") -> tuple[LoggerSpec, ...]:
    """The `logger` node (null, or {csv: {...}, mlflow: {...}}) -> checked specs (pure Python)."""
    if raw is None:
        return ()
    if not isinstance(raw, Mapping):
        raise ConfigError(
            where,
            "loggers are a mapping of kind -> settings",
            expected="{csv: {}, mlflow: {}}",
            received=raw,
            fix="use logger=csv (or tensorboard, mlflow, many; conf/logger/)",
        )
    specs = []
    for kind, body in raw.items():
        here = f"{where}.{kind}"
        if kind not in LOGGER_KEYS:
            raise ConfigError(
                here,
                f"unknown logger '{kind}'.{did_you_mean(str(kind), LOGGER_KEYS)}",
                expected=f"one of {', '.join(LOGGER_KEYS)}",
                received=kind,
                fix=f"rename {here} or remove it",
            )
        if body is None:
            continue
        if not isinstance(body, Mapping):
            raise ConfigError(
                here,
                "a logger's settings are a mapping",
                expected="{key: value} or {}",
                received=body,
                fix=f"write {here} as a mapping",
            )
        specs.append(LoggerSpec(kind, check_options(here, kind, body, LOGGER_KEYS[kind])))
    return tuple(specs)


def check_loggers(
    specs: Iterable[LoggerSpec], callbacks: Iterable[CallbackSpec] = (), backend: str = "tensorflow"
) -> None:
    """What the installed packages and the callbacks allow (pure Python): call before training."""
    for spec in specs:
        where = f"logger.{spec.kind}"
        if spec.kind == "tensorboard":
            require_tensorboard(where, backend)
            clash = [c.name for c in callbacks if c.kind == "TensorBoard"]
            if clash:
                raise ConfigError(
                    where,
                    "TensorBoard is configured twice (a logger and a callback): both would write RUN/tensorboard",
                    expected="one of them",
                    received=f"callbacks.{clash[0]}",
                    fix=f"remove callbacks.{clash[0]} or logger.tensorboard",
                )
        if spec.kind == "mlflow":
            if importlib.util.find_spec("mlflow") is None:
                raise ConfigError(
                    where,
                    "MLflow is asked for but not installed",
                    expected="the mlflow extra",
                    received="no module named 'mlflow'",
                    fix=MLFLOW_EXTRA,
                )
            uri = spec.kwargs.get("tracking_uri") or ""
            db = Path(uri[len("sqlite:///") :]) if uri.startswith("sqlite:///") else None
            if db is not None and not (db.is_absolute() and db.parent.is_dir()):
                raise ConfigError(
                    f"{where}.tracking_uri",
                    "the sqlite store must be an absolute path in an "
                    "existing folder (a relative one would land in the current folder)",
                    expected="sqlite:////ABSOLUTE/FOLDER/mlflow.db, or null for RUN/mlflow.db",
                    received=uri,
                    fix="drop tracking_uri, or give an absolute path",
                )
            if uri.startswith("file:") and os.environ.get("MLFLOW_ALLOW_FILE_STORE", "").lower() != "true":
                raise ConfigError(
                    f"{where}.tracking_uri",
                    "MLflow 3 refuses its file store (maintenance mode)",
                    expected="sqlite:///ABSOLUTE/PATH.db, or null for RUN/mlflow.db",
                    received=uri,
                    fix="drop tracking_uri (sqlite in the run dir), or set MLFLOW_ALLOW_FILE_STORE=true",
                )


def flatten_config(config: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """{"a": {"b": 1}} -> {"a.b": "1"}; lists as JSON text (MLflow keys cannot hold [i])."""
    out: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten_config(value, name + "."))
        else:
            out[name] = value if isinstance(value, str) else json.dumps(value, default=str)
    return out


def build_loggers(specs: Iterable[LoggerSpec], out_dir: Path, run, flat_params: Mapping[str, Any]) -> list:
    """Keras callbacks for `specs` (pass them with the other callbacks to `train`).

    Args:
        specs: from parse_loggers.
        out_dir: the run dir.
        run: the RunConfig (which phase a model is in, the variant).
        flat_params: the composed config as a plain dict (nested or flattened), logged as MLflow params.
    """
    specs = tuple(specs)
    check_loggers(specs)
    from .hooks import build_callbacks

    out = []
    for spec in specs:
        if spec.kind == "csv":
            out.append(_keras(CsvLogger)(Path(out_dir) / spec.kwargs.get("filename", "metrics.csv"), run))
        elif spec.kind == "tensorboard":
            out += build_callbacks([CallbackSpec("logger.tensorboard", "TensorBoard", spec.options)], out_dir, run)
        else:
            out.append(_keras(MlflowLogger)(Path(out_dir), run, flatten_config(flat_params), **spec.kwargs))
    return out


def close_loggers(
    callbacks: Iterable, metrics: Mapping[str, Any] | None = None, error: BaseException | None = None
) -> None:
    """End the loggers' runs: MLflow gets the final metrics and the run dir's artifacts, then FINISHED (or
    KILLED for a stop by signal, FAILED for an error). Safe to call with any callbacks; never raises for
    a logger (the training result matters more than its record)."""
    for callback in callbacks:
        callback = getattr(callback, "inner", callback)
        if isinstance(callback, MlflowLogger):
            try:
                callback.close(metrics, error)
            except Exception as e:  # noqa: BLE001 — a tracking store problem must not turn success into failure
                log.warning("MLflow: could not close run %s: %s", callback.run_id, e)


@functools.cache
def _keras(logic: type) -> type:
    import keras

    return type(logic.__name__, (logic, keras.callbacks.Callback), {"__module__": __name__})


class CsvLogger:
    """One row per epoch (`epoch` 1-based as printed, `phase`, then every log value) in RUN/<filename>,
    rewritten atomically after each epoch; rows of epochs a resumed run trains again are replaced."""

    def __init__(self, path: Path, run):
        super().__init__()
        self.path, self.run = Path(path), run
        self.rows: list[dict[str, Any]] | None = None

    def _load(self) -> list[dict[str, Any]]:
        import csv

        try:
            with open(self.path, newline="") as f:
                return list(csv.DictReader(f))
        except (OSError, csv.Error, UnicodeDecodeError):
            return []

    def on_epoch_end(self, epoch, logs=None):
        if self.rows is None:
            self.rows = self._load()  # a resumed run continues the file
        phase = phase_of(self.model, self.run)
        row = {
            "epoch": epoch + 1,
            "phase": "" if phase is None else phase.index,
            **{k: float(v) for k, v in (logs or {}).items() if _number(v)},
        }
        self.rows = [r for r in self.rows if _int(r.get("epoch")) < epoch + 1] + [row]
        self._write()

    def _write(self) -> None:
        import csv
        import io

        from .artifacts import write_text

        keys = list(dict.fromkeys(k for r in self.rows for k in r))
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=keys, restval="")
        writer.writeheader()
        writer.writerows(self.rows)
        write_text(self.path, buf.getvalue())


def _number(v: Any) -> bool:
    try:
        float(v)
        return not isinstance(v, (str, bool))
    except (TypeError, ValueError):
        return False


def _int(v: Any) -> int:
    try:
        return int(v)
    except (TypeError, ValueError):
        return 0


class MlflowLogger:
    """A real MLflow run through the client API (no global state): the composed config as params, every
    epoch's logs as metrics (step = the global epoch, 0-based like TensorBoard), the model tables when a
    phase starts; at the end the test metrics, the run dir's artifacts and the run's status.

    Opened at the first `on_train_begin` (the run dir is the run's by then); a resumed run finds its MLflow
    run again through RUN/mlflow-run.json and logs only the params that run lacks.
    """

    def __init__(
        self,
        out_dir: Path,
        run,
        params: Mapping[str, str],
        tracking_uri: str | None = None,
        experiment: str = "dynarch",
        run_name: str | None = None,
        log_artifacts: bool = True,
        tags: Mapping[str, Any] | None = None,
    ):
        super().__init__()
        # not self.params: Keras sets that on every callback (verbose, epochs, steps)
        self.out_dir, self.run, self.config_params = Path(out_dir), run, dict(params)
        self.tracking_uri = tracking_uri or f"sqlite:///{(self.out_dir / 'mlflow.db').resolve()}"
        self.experiment, self.run_name, self.log_artifacts = experiment, run_name, log_artifacts
        self.tags = {str(k): str(v) for k, v in (tags or {}).items()}
        self.client = self.run_id = None

    def on_train_begin(self, logs=None):
        if self.client is None:
            try:
                logged = self._open()
            except Exception as e:  # noqa: BLE001 — a store that cannot be opened is a config problem
                raise ConfigError(
                    "logger.mlflow.tracking_uri",
                    f"MLflow could not open the tracking store ({type(e).__name__}: {str(e)[:300]})",
                    expected="a store MLflow can open and write",
                    received=self.tracking_uri,
                    fix="drop tracking_uri (sqlite in the run dir) or point it at a writable store",
                ) from None
            self._log_params(logged)
        for table in sorted(self.out_dir.glob("model*.md")):
            self.client.log_artifact(self.run_id, str(table))

    def _open(self) -> set[str]:
        """Connect, and create (or find again) the MLflow run; returns the params it already has."""
        # A run logs only to its own store: no usage report over the network, no ~/.mlflow file.
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        for name in ("mlflow.store.db.utils", "alembic"):  # "Creating initial MLflow database tables..."
            logging.getLogger(name).setLevel(logging.WARNING)
        from mlflow.tracking import MlflowClient

        from .artifacts import write_json

        self.client = MlflowClient(tracking_uri=self.tracking_uri)
        self.run_id = self._saved_run()
        if self.run_id is not None:
            self.client.update_run(self.run_id, status="RUNNING")
            logged = set(self.client.get_run(self.run_id).data.params)
        else:
            found = self.client.get_experiment_by_name(self.experiment)
            experiment_id = (
                found.experiment_id
                if found
                else self.client.create_experiment(self.experiment, artifact_location=self._artifact_location())
            )
            tags = {"dynarch.run_dir": str(self.out_dir.resolve()), "dynarch.variant": self.run.variant, **self.tags}
            self.run_id = self.client.create_run(
                experiment_id, run_name=self.run_name or self.out_dir.name, tags=tags
            ).info.run_id
            logged = set()
            write_json(self.out_dir / MLFLOW_RUN_FILE, {"tracking_uri": self.tracking_uri, "run_id": self.run_id})
        return logged

    def _log_params(self, logged: set[str]) -> None:
        from mlflow.entities import Param

        params = [
            Param(k, v[:6000])
            for k, v in ((_mlflow_key(k), v) for k, v in self.config_params.items())
            if k not in logged
        ]
        for i in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(self.run_id, params=params[i : i + 100])

    def _saved_run(self) -> str | None:
        try:
            saved = json.loads((self.out_dir / MLFLOW_RUN_FILE).read_text())
            if saved.get("tracking_uri") == self.tracking_uri:
                return self.client.get_run(saved["run_id"]).info.run_id
        except Exception:  # noqa: BLE001 — no file, another store, a deleted run: start a new MLflow run
            pass
        return None

    def _artifact_location(self) -> str | None:
        """Beside a sqlite store (MLflow's default would be ./mlruns under the current folder)."""
        if self.tracking_uri.startswith("sqlite:///"):
            return (Path(self.tracking_uri[len("sqlite:///") :]).parent / "mlartifacts").resolve().as_uri()
        return None

    def on_epoch_end(self, epoch, logs=None):
        from mlflow.entities import Metric

        stamp = int(time.time() * 1000)
        metrics = [Metric(_mlflow_key(k), float(v), stamp, epoch) for k, v in (logs or {}).items() if _number(v)]
        phase = phase_of(self.model, self.run) if self.run.schedule else None
        if phase is not None:
            metrics.append(Metric("phase", float(phase.index), stamp, epoch))
        if metrics and self.client is not None:
            self.client.log_batch(self.run_id, metrics=metrics)

    def close(self, metrics: Mapping[str, Any] | None, error: BaseException | None) -> None:
        if self.client is None:
            return
        if error is not None:
            status = (
                "KILLED" if getattr(error, "exit_code", 0) >= 128 or isinstance(error, KeyboardInterrupt) else "FAILED"
            )
            self.client.set_terminated(self.run_id, status=status)
            return
        from mlflow.entities import Metric

        stamp, step = int(time.time() * 1000), int((metrics or {}).get("epochs") or 0)
        final = [
            Metric(k, float(v), stamp, step)
            for k, v in (metrics or {}).items()
            if k in FINAL_METRICS and _number(v) and math.isfinite(float(v))
        ]
        if final:
            self.client.log_batch(self.run_id, metrics=final)
        if self.log_artifacts:
            for path in sorted(self.out_dir.iterdir()):
                if path.is_file() and path.suffix in ARTIFACT_SUFFIXES and path.name != MLFLOW_RUN_FILE:
                    self.client.log_artifact(self.run_id, str(path))
                elif path.is_dir() and path.name in ARTIFACT_DIRS:
                    self.client.log_artifacts(self.run_id, str(path), artifact_path=path.name.lstrip("."))
        self.client.set_terminated(self.run_id, status="FINISHED")


def _mlflow_key(key: str) -> str:
    """MLflow names allow letters, digits, _ - . space : / (at most 250 characters)."""
    return re.sub(r"[^\w\-. :/]", "_", str(key))[:250]
