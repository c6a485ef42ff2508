"""Content hashes of (large) files, computed once per file version.

A file's sha256 is remembered in this process and, given a cache directory, on disk in
``<cache_dir>/file_hashes.json`` (``{absolute path: [size, mtime_ns, sha256]}``), so a multi-GB
checkpoint or a folder of 10k clips is read once, not by every run and worker process; a
changed file (new size or mtime) is hashed again. :class:`FileHashes` batches many files and
writes the record once (:meth:`FileHashes.save`); :func:`file_sha256` / :func:`files_sha256`
are the one-call forms.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

from common.errors import ConfigError
from common.fsio import atomic_write_json, file_lock

__all__ = ["FileHashes", "file_sha256", "files_sha256"]

_CHUNK = 1 << 22
_MEMO: dict[str, tuple[int, int, str]] = {}  # per process: absolute path -> (size, mtime_ns, sha)
RECORD = "file_hashes.json"


def _sha256_of(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


class FileHashes:
    """sha256 of files, remembered by (path, size, mtime) in memory and in ``cache_dir``."""

    def __init__(self, cache_dir: str | Path | None = None) -> None:
        self.path = Path(cache_dir) / RECORD if cache_dir is not None else None
        self._new: dict[str, list] = {}
        self._disk: dict[str, list] | None = None

    def _load(self) -> dict[str, list]:
        if self.path is None:
            return {}
        try:
            d = json.loads(self.path.read_text(encoding="utf-8"))
            return d if isinstance(d, dict) else {}
        except (OSError, ValueError):
            return {}

    def sha256(self, path: str | Path) -> str:
        """Hex sha256 of the bytes of ``path`` (a one-line ConfigError if it cannot be read)."""
        p = os.path.abspath(path)
        try:
            st = os.stat(p)
        except OSError as e:
            raise ConfigError(f"{path}: cannot read ({e.strerror or e})") from None
        sig = (st.st_size, st.st_mtime_ns)
        memo = _MEMO.get(p)
        if memo and memo[:2] == sig:
            return memo[2]
        if self._disk is None:
            self._disk = self._load()
        rec = self._disk.get(p)
        if isinstance(rec, list) and len(rec) == 3 and tuple(rec[:2]) == sig:
            sha = str(rec[2])
        else:
            try:
                sha = _sha256_of(p)
            except OSError as e:
                raise ConfigError(f"{path}: cannot read ({e.strerror or e})") from None
            self._new[p] = [sig[0], sig[1], sha]
        _MEMO[p] = (*sig, sha)
        return sha

    def save(self) -> None:
        """Merge the hashes computed since the last save into the record (under its lock); a
        record that cannot be written only costs time later."""
        if not self._new or self.path is None:
            return
        try:
            with file_lock(str(self.path) + ".lock"):
                disk = self._load()
                disk.update(self._new)
                atomic_write_json(self.path, disk, indent=None, durable=False)
        except Exception:  # noqa: BLE001 - a cache, not an output
            return
        self._new.clear()


def file_sha256(path: str | Path, cache_dir: str | Path | None = None) -> str:
    """Hex sha256 of the bytes of ``path`` (see the module docstring for the caching)."""
    hashes = FileHashes(cache_dir)
    digest = hashes.sha256(path)
    hashes.save()
    return digest


def files_sha256(paths: Sequence[str | Path], cache_dir: str | Path | None = None) -> str:
    """One hex sha256 for several files: the hash of their names and content hashes (in the
    given order)."""
    hashes = FileHashes(cache_dir)
    h = hashlib.sha256()
    for p in paths:
        h.update(f"{Path(p).name}\0{hashes.sha256(p)}\n".encode())
    hashes.save()
    return h.hexdigest()
