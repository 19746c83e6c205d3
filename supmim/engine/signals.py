"""Stopping cleanly: SIGTERM / Ctrl-C become a flag the loop checks after each step, so it
can write a checkpoint before it exits."""

from __future__ import annotations

import signal
import threading
from typing import Any


def quiet_worker(_: int) -> None:
    """Data-loader workers leave SIGINT/SIGTERM to the main process, which checkpoints and
    then shuts them down; otherwise a Ctrl-C kills them mid-batch and the save fails."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


class StopRequest:
    """Turns SIGTERM / SIGINT into ``signum`` (a second signal stops at once). Installs its
    handlers only in the main thread, and restores the old ones on exit."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum

    def __exit__(self, *exc: object) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
