"""Crash-safe file writing and the run-directory lock.

Every output is written to a temporary file in the same directory and renamed over the target
(``os.replace`` is atomic on POSIX), so a reader never sees half a file. Append-only logs
(the evaluation cache) write one complete JSON line per ``write`` + ``fsync``.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from search_space.errors import TemponasError


class RunDirError(TemponasError):
    """The run directory cannot be used (locked by another search, unwritable, incompatible)."""


def _io_error(path: Path, e: OSError) -> RunDirError:
    why = "disk full" if e.errno == errno.ENOSPC else (e.strerror or str(e))
    return RunDirError(f"{path}: cannot write ({why})")


def atomic_write(path: str | Path, writer: Callable[[Any], None], mode: str = "w",
                 durable: bool = True) -> None:
    """Write ``path`` atomically: ``writer(fileobj)`` fills a temp file that is then renamed.

    ``durable=False`` skips the fsync (still atomic for readers and process crashes; use it
    only for files that can be regenerated, e.g. from the study)."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise _io_error(path, e) from None
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; outputs get the usual mode
        with os.fdopen(fd, mode, **({"encoding": "utf-8", "newline": ""} if "b" not in mode else {})) as f:
            writer(f)
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        _unlink_quietly(tmp)
        raise _io_error(path, e) from None
    except BaseException:
        _unlink_quietly(tmp)
        raise


def _umask() -> int:
    try:  # read it without changing it (os.umask sets it, racing other threads)
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o022


def atomic_write_text(path: str | Path, text: str, durable: bool = True) -> None:
    atomic_write(path, lambda f: f.write(text), durable=durable)


def atomic_write_json(path: str | Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True, allow_nan=False) + "\n")


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    atomic_write(path, lambda f: f.write(data), mode="wb")


def _unlink_quietly(p: str | Path) -> None:
    try:
        os.unlink(p)
    except OSError:
        pass


def append_jsonl(path: str | Path, record: dict[str, Any], durable: bool = True) -> None:
    """Append one JSON line (a crash leaves at most one truncated last line); ``durable``
    fsyncs it (without, the line survives a process crash but not a power loss)."""
    path = Path(path)
    line = json.dumps(record, sort_keys=True, allow_nan=False) + "\n"
    try:
        with open(path, "a", encoding="utf-8") as f:
            f.write(line)
            f.flush()
            if durable:
                os.fsync(f.fileno())
    except OSError as e:
        raise _io_error(path, e) from None


def read_jsonl(path: str | Path) -> Iterator[tuple[int, dict[str, Any] | None]]:
    """``(line_number, record)`` per line; ``record`` is None for a line that is not valid JSON
    (a truncated last line after a crash)."""
    path = Path(path)
    if not path.exists():
        return
    with open(path, encoding="utf-8", errors="replace") as f:
        for i, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                yield i, None
                continue
            yield i, rec if isinstance(rec, dict) else None


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
            raise _io_error(self.path, e) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = self.holder()
            os.close(fd)
            who = (f"pid {holder.get('pid')} on {holder.get('host')} since {holder.get('started')}"
                   if holder else "another process")
            raise RunDirError(f"{self.path.parent}: another temponas search is running in this run "
                              f"directory ({who}); wait for it, stop it, or use another --out")
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
