"""SIGTERM (how clusters preempt) and SIGINT (Ctrl-C) during training: the loop stops at the next batch boundary,
the run is closed as KILLED with its last finished epoch saved, and the command says how to resume. A second
Ctrl-C exits at once."""

from __future__ import annotations

import logging
import os
import signal
import threading

log = logging.getLogger("coroseg")

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopSignals:
    """Context manager; calling it answers the signal that asked to stop, or None."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def __call__(self) -> int | None:
        return self.signum

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():   # Python delivers signals there only
            for signum in STOP_SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            os._exit(128 + signum)                  # the user insists: no drain, no record of this epoch
        if self.signum is None:
            self.signum = signum
            log.warning("%s received: stopping at the next batch and saving the run (Ctrl-C again to quit at once)",
                        signal.Signals(signum).name)
