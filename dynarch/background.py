"""One file-writing job at a time on a background thread (train-state checkpoints), so training goes on while
the bytes reach the disk.

Why: a train-state checkpoint is a few milliseconds of copying the state to the host and tens of
milliseconds of serialising, hashing, fsyncing and renaming. The fused loop saves at every `checkpoint_every`
multiple; on a GPU an epoch of the MLP is ~14 ms of compute, so synchronous saves were most of an epoch
(experiments/gpu/README.md). The caller snapshots what it saves (copies, not views: the model trains on), and
the write itself runs here. A crash mid-write loses nothing: every checkpoint is written atomically and
`latest` moves only once the new one is complete; the previous one is still there to resume from.
"""

from __future__ import annotations

import logging
import threading
from typing import Callable

log = logging.getLogger(__name__)


class BackgroundWriter:
    """Runs `submit`ted writes one at a time, in order, on a background thread.

    `submit` and `flush` first wait for the write in flight; an exception it raised (a full disk, say) is
    raised there, in the training thread, with its own message. The thread is not a daemon: an interpreter
    that exits waits for the write rather than cutting it off.
    """

    def __init__(self, name: str = "dynarch-writer"):
        self.name = name
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def submit(self, write: Callable[[], object]) -> None:
        self.flush()

        def run() -> None:
            try:
                write()
            except BaseException as e:  # noqa: BLE001 — re-raised by the next flush, in the training thread
                self._error = e

        self._thread = threading.Thread(target=run, name=self.name)
        self._thread.start()

    def flush(self) -> None:
        """Wait for the write in flight; raise what it raised."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def flush_quietly(self) -> None:
        """Wait for the write in flight, logging (not raising) its error: for paths already failing. An
        interruption of the wait itself (a second Ctrl-C) propagates: it is not a failed write."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        try:
            self.flush()
        except Exception as e:  # noqa: BLE001 — the error being raised already is the one to report
            log.warning("a background write failed too: %s", str(e).splitlines()[0] if str(e) else type(e).__name__)
