"""Crash-safe file writing: the ONE implementation every package uses.

Every output is written to a temporary file in the same directory, flushed, fsynced (unless
``durable=False``) and renamed over the target (``os.replace`` is atomic on POSIX), so a reader
never sees half a file and a crash leaves the old file or the new one. Libraries that insist on
writing to a path themselves (PIL, matplotlib, safetensors, coremltools) write to the temporary
path that :func:`atomic_path` / :func:`atomic_dir` hand out. Append-only logs write one complete
JSON line per ``write``.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from common.errors import OutputError


def io_error(path: str | Path, e: OSError) -> OutputError:
    """The one-line user error for an ``OSError`` while writing ``path``."""
    why = "disk full" if e.errno == errno.ENOSPC else (e.strerror or str(e))
    return OutputError(f"{path}: cannot write ({why})")


def _umask() -> int:
    try:  # read it without changing it (os.umask sets it, racing other threads)
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o022


def _unlink_quietly(p: str | Path) -> None:
    try:
        os.unlink(p)
    except OSError:
        pass


def atomic_write(path: str | Path, writer: Callable[[Any], None], mode: str = "w",
                 durable: bool = True, perm: int | None = None) -> None:
    """Write ``path`` atomically: ``writer(fileobj)`` fills a temp file that is then renamed.

    ``durable=False`` skips the fsync (still atomic for readers and process crashes; use it
    only for files that can be regenerated). ``perm`` (e.g. ``0o600`` for a file only its owner
    may read) replaces the usual ``0o666 & ~umask``. Raises :class:`OutputError` on ``OSError``.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise io_error(path, e) from None
    try:
        os.fchmod(fd, 0o666 & ~_umask() if perm is None else perm)  # mkstemp makes 0600
        text_kw = {"encoding": "utf-8", "newline": ""} if "b" not in mode else {}
        with os.fdopen(fd, mode, **text_kw) as f:
            writer(f)
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        _unlink_quietly(tmp)
        raise io_error(path, e) from None
    except BaseException:
        _unlink_quietly(tmp)
        raise


def atomic_write_text(path: str | Path, text: str, durable: bool = True,
                      perm: int | None = None) -> None:
    atomic_write(path, lambda f: f.write(text), durable=durable, perm=perm)


def atomic_write_bytes(path: str | Path, data: bytes, durable: bool = True) -> None:
    atomic_write(path, lambda f: f.write(data), mode="wb", durable=durable)


def atomic_write_json(path: str | Path, data: Any, *, indent: int | None = 2,
                      durable: bool = True, perm: int | None = None) -> None:
    """``data`` as sorted-key JSON (numpy scalars/arrays converted, NaN/inf refused)."""
    text = json.dumps(data, indent=indent, sort_keys=True, allow_nan=False, default=jsonable)
    atomic_write_text(path, text + "\n", durable=durable, perm=perm)


@contextlib.contextmanager
def atomic_path(path: str | Path, durable: bool = True) -> Iterator[Path]:
    """A temporary path next to ``path`` (same suffix) for a library to write to; renamed
    over ``path`` when the block exits normally, removed if it raises."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix or ".tmp",
                                   dir=path.parent)
        os.close(fd)
    except OSError as e:
        raise io_error(path, e) from None
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        if durable:
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        _unlink_quietly(tmp)
        raise io_error(path, e) from None
    except BaseException:
        _unlink_quietly(tmp)
        raise


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """A temporary directory path next to ``path`` for a library to create (e.g. an
    ``.mlpackage``); it replaces ``path`` (an old one is removed) when the block exits
    normally and is removed if it raises."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        holder = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    except OSError as e:
        raise io_error(path, e) from None
    tmp = holder / path.name
    try:
        yield tmp
        if path.exists():
            old = holder / f"{path.name}.old"
            os.replace(path, old)
        os.replace(tmp, path)
    except OSError as e:
        raise io_error(path, e) from None
    finally:
        shutil.rmtree(holder, ignore_errors=True)


@contextlib.contextmanager
def file_lock(path: str | Path) -> Iterator[None]:
    """An exclusive ``flock`` on ``path`` (an empty lock file, created if missing) for the
    ``with`` block: concurrent processes (Ray workers on one node) wait for each other, and the
    kernel releases the lock if the holder dies. Per host: not a lock across NFS clients."""
    import fcntl

    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666 & ~_umask())
    except OSError as e:
        raise io_error(path, e) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        try:
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)


def try_holder_lock(path: str | Path, holder: dict[str, Any]) -> tuple[int | None, dict[str, Any]]:
    """Take an exclusive non-blocking ``flock`` on ``path`` (created if missing) and write
    ``holder`` (JSON) into it: ``(fd, holder)``; or ``(None, the current holder's record)``
    when another process holds it. The kernel drops the lock if the holder dies (per host)."""
    import fcntl

    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise io_error(path, e) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        try:
            current = json.loads(os.pread(fd, 4096, 0) or b"{}")
        except ValueError:
            current = {}
        os.close(fd)
        return None, current if isinstance(current, dict) else {}
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(holder) + "\n").encode(), 0)
    os.fsync(fd)
    return fd, holder


def release_holder_lock(fd: int) -> None:
    """Empty the lock file of :func:`try_holder_lock`'s ``fd``, unlock and close it."""
    import fcntl

    try:
        os.ftruncate(fd, 0)
    except OSError:
        pass
    fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)


def append_jsonl(path: str | Path, record: dict[str, Any], durable: bool = True) -> None:
    """Append one JSON line; ``durable`` fsyncs it (without, the line survives a process crash
    but not a power loss). Appenders take turns (``flock`` on the file), so a last line without
    its newline can only be the torn write of a process that died: it is cut off first, so the
    new record is never glued to it (and lost with it)."""
    import fcntl

    path = Path(path)
    line = json.dumps(record, sort_keys=True, allow_nan=False, default=jsonable) + "\n"
    try:
        with open(path, "ab+") as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)  # released when the file is closed
            end = f.seek(0, os.SEEK_END)
            if end:
                f.seek(end - 1)
                if f.read(1) != b"\n":
                    f.truncate(_end_of_last_line(f, end))
            f.write(line.encode("utf-8"))
            f.flush()
            if durable:
                os.fsync(f.fileno())
    except OSError as e:
        raise io_error(path, e) from None


def _end_of_last_line(f: Any, end: int, chunk: int = 1 << 16) -> int:
    """Offset just past the last newline before ``end`` (0 if there is none)."""
    pos = end
    while pos > 0:
        start = max(0, pos - chunk)
        f.seek(start)
        i = f.read(pos - start).rfind(b"\n")
        if i >= 0:
            return start + i + 1
        pos = start
    return 0


def read_jsonl(path: str | Path) -> Iterator[tuple[int, dict[str, Any] | None]]:
    """``(line_number, record)`` per line; ``record`` is None for a line that is not a JSON
    object (a truncated last line after a crash)."""
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


# ---- JSON helpers ------------------------------------------------------------------------------
def jsonable(x: Any) -> Any:
    """``json.dumps(default=...)`` hook: numpy scalars and arrays become Python values."""
    import numpy as np

    if isinstance(x, (np.floating, np.integer, np.bool_)):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    raise TypeError(f"not JSON serializable: {type(x).__name__}")


def json_safe(o: Any) -> Any:
    """``o`` with non-finite floats as ``None`` and numpy values as Python ones (strict JSON)."""
    if isinstance(o, float):
        return o if math.isfinite(o) else None
    if isinstance(o, dict):
        return {str(k): json_safe(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [json_safe(v) for v in o]
    if type(o).__module__ == "numpy":
        return json_safe(jsonable(o))
    return o
