"""One writer per run directory: an exclusive ``fcntl.flock`` on ``RUN/.lock``.

The lock is held while a process trains into the directory and released by the OS when the
process ends in any way, SIGKILL included, so it is never stale. The lock file records the
holder (pid, host, start time) for the message the next writer gets. ``flock`` works on local
file systems and on NFS v4; on file systems without it the lock cannot protect anything and
training stops with a message saying so.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import time
from pathlib import Path
from typing import Any

from supmim.errors import SupmimError


class RunLocked(SupmimError):
    """Another process is writing this run directory (the CLI exits with code 2)."""


class RunLock:
    """``with RunLock(run_dir, wait=s):`` holds the run directory's lock for the block."""

    NAME = ".lock"

    def __init__(self, run_dir: str | Path, *, wait: float = 0.0) -> None:
        self.path = Path(run_dir) / self.NAME
        self.wait = float(wait)
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock, waiting up to ``wait`` seconds; RunLocked naming the holder."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + self.wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as err:
                if err.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    os.close(fd)
                    raise SupmimError(f"cannot lock '{self.path}' ({err}): this file system "
                                      "does not support flock; use a local or NFS v4 folder "
                                      "for --out") from err
                if time.monotonic() >= deadline:
                    holder = self._recorded_holder()
                    os.close(fd)
                    raise RunLocked(f"run directory '{self.path.parent}' is in use by "
                                    f"{_describe(holder)}; wait for it to finish (or stop it), "
                                    "or use another --out. A requeued job can wait for it "
                                    "with --set train.lock_wait=SECONDS") from None
                time.sleep(min(0.5, max(deadline - time.monotonic(), 0.01)))
        info = {"pid": os.getpid(), "host": socket.gethostname(),
                "started": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        self._fd = fd

    def holder(self) -> dict[str, Any] | None:
        """Who holds (or last held) the lock, as it recorded itself."""
        try:
            return json.loads(self.path.read_text() or "null")
        except (OSError, ValueError):
            return None

    def _recorded_holder(self, patience: float = 1.0) -> dict[str, Any] | None:
        """The holder's record, waiting up to ``patience`` s for one that just took the lock.

        A writer records itself right after ``flock`` succeeds; a second writer started at the
        same moment can look in between and would otherwise name nobody.
        """
        deadline = time.monotonic() + patience
        while (holder := self.holder()) is None and time.monotonic() < deadline:
            time.sleep(0.05)
        return holder

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _describe(holder: dict[str, Any] | None) -> str:
    if not holder:
        return "another process (it has not recorded itself yet)"
    return (f"process {holder.get('pid')} on {holder.get('host')} (started "
            f"{holder.get('started')})")
