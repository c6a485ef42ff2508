"""One search per study: the lock that keeps two run directories off one shared study.

The run-directory lock (:class:`experiments.rundir.RunLock`) stops two searches in one folder;
``search.storage`` can still point two folders at one study (a shared SQLite file, journal or
database), and both drivers would then run it to its target (twice the trials) and each would
"recover" the other's running trials. So the driver also locks the study, keyed by the storage
and the study name:

* a file storage (a journal, a SQLite file): a kernel ``flock`` on ``.<file>.<study>.lock``
  next to the file, holding ``pid``/``host``/``run_dir`` for the refusal message. The kernel
  drops it when the process dies, so a crashed search never blocks its resume. Per host, like
  every ``flock`` (a study file on NFS shared by two machines is not protected).
* a database server (``postgresql://``, ``mysql://``): a record in the study's user attrs
  (:data:`ATTR`: ``pid``, ``host``, ``run_dir``, a token and a heartbeat the driver refreshes
  every :data:`HEARTBEAT_S`). It is stale (taken over) when its process is gone on this host, or
  its heartbeat is older than :data:`STALE_S` (a driver on another machine that died). Optuna has
  no compare-and-swap: the record is read back after :data:`SETTLE_S`, so two drivers that
  start within that window both see who won; a later race is not excluded.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from common.errors import TemponasError
from common.fsio import release_holder_lock, try_holder_lock

ATTR = "temponas_lock"
HEARTBEAT_S = 30.0
STALE_S = 120.0
SETTLE_S = 0.5


class StorageLockedError(TemponasError):
    """Another temponas search is running the same study."""


def _holder_text(h: dict[str, Any]) -> str:
    return (f"run directory {h.get('run_dir', '?')}, pid {h.get('pid', '?')} on "
            f"{h.get('host', '?')} since {h.get('started', '?')}")


def _refusal(where: str, study: str, holder: dict[str, Any]) -> StorageLockedError:
    return StorageLockedError(
        f"search.storage: study {study!r} in {where} is in use by another temponas search "
        f"({_holder_text(holder)}); wait for it or give this run a storage of its own")


def _me(run_dir: Path) -> dict[str, Any]:
    return {"pid": os.getpid(), "host": socket.gethostname(), "run_dir": str(run_dir),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


class FileStudyLock:
    """``flock`` on ``.<storage file name>.<study>.lock`` next to a file storage."""

    def __init__(self, storage_file: Path, study_name: str, run_dir: Path, where: str):
        self.path = storage_file.parent / f".{storage_file.name}.{study_name}.lock"
        self.study_name, self.run_dir, self.where = study_name, run_dir, where
        self._fd: int | None = None

    def acquire(self) -> FileStudyLock:
        self._fd, holder = try_holder_lock(self.path, _me(self.run_dir))
        if self._fd is None:
            raise _refusal(self.where, self.study_name, holder)
        return self

    def release(self) -> None:
        if self._fd is not None:
            release_holder_lock(self._fd)
            self._fd = None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def is_stale(holder: Any, now: float | None = None) -> bool:
    """True if a study-attr lock record no longer protects anything: released (empty), its
    process gone on this host, or no heartbeat for :data:`STALE_S`."""
    if not isinstance(holder, dict) or not holder.get("token"):
        return True
    now = time.time() if now is None else now
    if holder.get("host") == socket.gethostname() and not _alive(int(holder.get("pid", 0))):
        return True
    return now - float(holder.get("heartbeat", 0)) > STALE_S


class AttrStudyLock:
    """A lock record in the study's user attrs (database servers; see the module doc)."""

    def __init__(self, study: Any, run_dir: Path, where: str):
        self.study, self.run_dir, self.where = study, run_dir, where
        self.token = uuid.uuid4().hex
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _read(self) -> Any:
        return self.study.user_attrs.get(ATTR)  # read from the storage on every access

    def _write(self, value: Any) -> None:
        self.study.set_user_attr(ATTR, value)

    def acquire(self) -> AttrStudyLock:
        holder = self._read()
        if not is_stale(holder):
            raise _refusal(self.where, self.study.study_name, holder)
        record = {**_me(self.run_dir), "token": self.token}
        self._write({**record, "heartbeat": time.time()})
        time.sleep(SETTLE_S)
        holder = self._read()
        if not isinstance(holder, dict) or holder.get("token") != self.token:
            raise _refusal(self.where, self.study.study_name, holder or {})
        self._thread = threading.Thread(target=self._beat, args=(record,), daemon=True,
                                        name="temponas-study-lock")
        self._thread.start()
        return self

    def _beat(self, record: dict[str, Any]) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                self._write({**record, "heartbeat": time.time()})
            except Exception:  # the driver itself reports a storage that went away
                pass

    def release(self) -> None:
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join(timeout=5)
        self._thread = None
        try:
            if (self._read() or {}).get("token") == self.token:
                self._write(None)
        except Exception:
            pass
