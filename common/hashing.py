"""Content hashes of (large) files, computed once per file version.

``file_sha256(path, cache_dir)`` hashes a file's bytes; the result is remembered in this process
and, with ``cache_dir``, on disk, keyed by ``(absolute path, size, mtime_ns)``: a multi-GB
checkpoint is read once, not by every worker process, and a changed file (new size or mtime)
is hashed again. ``files_sha256`` combines several files (a sharded checkpoint) into one key.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

from common.errors import ConfigError
from common.fsio import atomic_write_json

__all__ = ["file_sha256", "files_sha256"]

_CHUNK = 1 << 22
_MEMO: dict[tuple[str, int, int], str] = {}


def _stamp(path: Path) -> tuple[str, int, int]:
    try:
        st = path.stat()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read ({e.strerror or e})") from None
    return str(path.resolve()), st.st_size, st.st_mtime_ns


def file_sha256(path: str | Path, cache_dir: str | Path | None = None) -> str:
    """Hex sha256 of the bytes of ``path`` (see the module docstring for the caching)."""
    stamp = _stamp(Path(path))
    if stamp in _MEMO:
        return _MEMO[stamp]
    record = None
    if cache_dir is not None:
        record = Path(cache_dir) / "sha256" / (hashlib.sha1(stamp[0].encode()).hexdigest() + ".json")
        try:
            d = json.loads(record.read_text(encoding="utf-8"))
            if (d.get("path"), d.get("size"), d.get("mtime_ns")) == stamp:
                _MEMO[stamp] = str(d["sha256"])
                return _MEMO[stamp]
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            pass
    h = hashlib.sha256()
    try:
        with open(stamp[0], "rb") as f:
            while chunk := f.read(_CHUNK):
                h.update(chunk)
    except OSError as e:
        raise ConfigError(f"{path}: cannot read ({e.strerror or e})") from None
    digest = h.hexdigest()
    _MEMO[stamp] = digest
    if record is not None:
        try:
            atomic_write_json(record, {"path": stamp[0], "size": stamp[1], "mtime_ns": stamp[2],
                                       "sha256": digest}, durable=False)
        except Exception:  # noqa: BLE001 - a cache that cannot be written only costs time
            pass
    return digest


def files_sha256(paths: Sequence[str | Path], cache_dir: str | Path | None = None) -> str:
    """One hex sha256 for several files: the hash of their names and content hashes (in the
    given order)."""
    h = hashlib.sha256()
    for p in paths:
        h.update(f"{Path(p).name}\0{file_sha256(p, cache_dir)}\n".encode())
    return h.hexdigest()

