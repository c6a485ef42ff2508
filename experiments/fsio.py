"""The run-directory lock and its error type (file writing itself: :mod:`common.fsio`)."""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Any

from common.errors import TemponasError
from common.fsio import io_error


class RunDirError(TemponasError):
    """The run directory cannot be used (locked by another search, unwritable, incompatible)."""


# ---- run-directory lock --------------------------------------------------------------------

class RunLock:
    """An exclusive lock on a run directory, held for the life of one search.

    Uses ``fcntl.flock`` on ``<run>/.lock`` (the kernel drops it when the process dies, so a
    crashed search never leaves the directory stuck) and records ``pid``/``host``/start time in
    the file so a refused second search can say who holds it.
    """

    def __init__(self, run_dir: str | Path):
        self.path = Path(run_dir) / ".lock"
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        import fcntl

        run_dir = self.path.parent
        if run_dir.exists() and not run_dir.is_dir():
            raise RunDirError(f"{run_dir}: exists and is not a directory (a run directory is "
                              f"needed here)")
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise io_error(self.path, e) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = self.holder()
            os.close(fd)
            who = (f"pid {holder.get('pid')} on {holder.get('host')} since {holder.get('started')}"
                   if holder else "another process")
            raise RunDirError(f"{self.path.parent}: another temponas search is running in this run "
                              f"directory ({who}); wait for it, stop it, or use another --out") from None
        info = {"pid": os.getpid(), "host": socket.gethostname(),
                "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        os.ftruncate(fd, 0)
        os.write(fd, (json.dumps(info) + "\n").encode())
        os.fsync(fd)
        self._fd = fd
        return self

    def holder(self) -> dict[str, Any]:
        try:
            return json.loads(self.path.read_text() or "{}")
        except (OSError, ValueError):
            return {}

    def release(self) -> None:
        if self._fd is None:
            return
        import fcntl

        try:
            os.ftruncate(self._fd, 0)
        except OSError:
            pass
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
