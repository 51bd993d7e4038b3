"""Quiet, honest start-up: keep TensorFlow's known start-up notices out of the run log, and nothing else.

Where the noise comes from (TF 2.21 CPU wheel, measured): loading TensorFlow's two shared libraries logs
through absl *before* `absl::InitializeLog()` runs, and absl then writes every message to stderr whatever
TF_CPP_MIN_LOG_LEVEL says: the "All log messages before absl::InitializeLog()" banner, port.cc's oneDNN
notice and cudart_stub.cc's "Could not find cuda drivers" (each twice). The first device listing then logs
cuda_platform.cc's "failed call to cuInit" at ERROR level on a machine without a CUDA driver. No setting
reaches those lines (TF_ENABLE_ONEDNN_OPTS=0 would silence one of them by changing the numerics), so
TensorFlow is imported and its devices listed with stderr (fd 2) going to a file in the run dir; every line
that is not one of those exact notices is then written to stderr, in order. A cuInit failure is dropped
only when the same start-up said there is no CUDA driver at all: on a machine with a driver it is real.
TFDS' absl warning "Variant folder ... has no dataset_info.json" is dropped too: dynarch's own tfds message
says what happens instead (prepared data missing, offline fallback). `log.info` names what was dropped.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from pathlib import Path

log = logging.getLogger(__name__)
# In the run dir while TensorFlow starts, one per process (workers of a multi-node job may share a run dir);
# removed after it is replayed.
CAPTURE = ".tensorflow-startup-{pid}.log"
NO_DRIVER = re.compile(r"cudart_stub\.cc:\d+\] Could not find cuda drivers on your machine")
NOISE = {
    "absl pre-init banner": re.compile(r"^WARNING: All log messages before absl::InitializeLog\(\) is called"),
    "oneDNN notice": re.compile(r"^I\d{4} [\d:. ]+\d+ port\.cc:\d+\] oneDNN custom operations are on"),
    "no CUDA driver": re.compile(r"^I\d{4} [\d:. ]+\d+ " + NO_DRIVER.pattern),
    "CPU instruction notice": re.compile(
        r"^(I\d{4} [\d:. ]+\d+ cpu_feature_guard\.cc:\d+\] This TensorFlow binary "
        r"is optimized|To enable the following instructions: .*rebuild TensorFlow)"
    ),
}
CUINIT = re.compile(r"^E\d{4} [\d:. ]+\d+ cuda_platform\.cc:\d+\] failed call to cuInit: ")


class _DropTfdsFolderWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno == logging.WARNING and "has no dataset_info.json" in str(record.msg))


def quiet_startup() -> None:
    """Call before TensorFlow is imported (the entry point, after the config is validated).

    Sets TF_CPP_MIN_LOG_LEVEL=1 unless the user set it (TF's C++ INFO lines go; its warnings and errors
    stay) and drops TFDS' redundant folder warning. Numerics are untouched (oneDNN stays on).
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    absl = logging.getLogger("absl")
    if not any(isinstance(f, _DropTfdsFolderWarning) for f in absl.filters):
        absl.addFilter(_DropTfdsFolderWarning())


def filter_startup_lines(lines: list[str]) -> tuple[list[str], list[str]]:
    """(lines to show, names of the notices dropped) for what TensorFlow printed while starting."""
    no_driver = any(NO_DRIVER.search(line) for line in lines)
    keep, dropped = [], []
    for line in lines:
        name = next((n for n, pattern in NOISE.items() if pattern.search(line)), None)
        if name is None and no_driver and CUINIT.search(line):
            name = "cuInit failure (no CUDA driver)"
        if name is None:
            keep.append(line)
        elif name not in dropped:
            dropped.append(name)
    return keep, dropped


def start_tensorflow_quietly(run_dir: Path) -> None:
    """Import TensorFlow (through dynarch.runtime) and list its physical devices with fd 2 captured in
    RUN/.tensorflow-startup-PID.log, then
    replay every line but the known notices to stderr and remove the file. Should the process die
    meanwhile, the file stays in the run dir with everything TensorFlow said."""
    if "tensorflow" in sys.modules:
        return
    quiet_startup()
    path = Path(run_dir) / CAPTURE.format(pid=os.getpid())
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(path, "wb") as capture:
            os.dup2(capture.fileno(), 2)
            try:
                from .runtime import get_runtime  # the one seam to the backend imports TensorFlow

                runtime = get_runtime("tensorflow")
                probe = getattr(runtime, "physical_devices", None)
                if probe is not None:
                    probe()  # where the CUDA probe (cuInit) runs; lists devices, initializes nothing
            finally:
                sys.stderr.flush()
                os.dup2(saved, 2)
        keep, dropped = filter_startup_lines(path.read_text(errors="replace").splitlines())
        if keep:
            sys.stderr.write("\n".join(keep) + "\n")
            sys.stderr.flush()
        if dropped:
            log.debug("TensorFlow start-up notices not shown: %s", ", ".join(dropped))
        path.unlink(missing_ok=True)
    finally:
        os.close(saved)
