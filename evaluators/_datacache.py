"""The on-disk data cache: content hashes of files, and encoded tensors stored once.

Layout under the data cache directory (``data.cache_dir``; default ``<temponas cache>/data``)::

    file_hashes.json                 common.hashing's record: a file is re-hashed only when
                                     its size or mtime changes
    <store>/index.json               {"meta", "entries": {key: shard}, "bad": {key: reason},
                                     "encoded": total}: written last, after the shard it names
    <store>/shard-000000.safetensors tensors named by entry key (one per clip / caption)
    <store>/events.jsonl             one line per use: pid, host, requested, encoded, reused
    <store>/lock                     flock: one process encodes, concurrent ones wait for it

A *store* holds one kind of tensor from one encoder at one shape (its directory name is a hash
of that ``meta``); an *entry key* is a hash of one input's content and the options that shape
it. So clips are encoded once, whichever run, evaluator, Ray worker or data split asks; adding
clips encodes only the new ones. Shards are never rewritten; a crash leaves complete shards
and an index that names only complete shards.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from common.fsio import append_jsonl, atomic_path, atomic_write_json, file_lock
from common.hashing import FileHashes

SHARD_BYTES = 256 << 20


def digest(obj: Any, n: int = 16) -> str:
    """First ``n`` hex of the sha256 of ``obj`` as canonical JSON."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:n]


def tree_hash(files: Iterable[tuple[str, str]], hashes: FileHashes) -> str:
    """Hash of ``(name, path)`` pairs: names and contents (the order matters)."""
    return digest([[name, hashes.sha256(path)] for name, path in files], 32)


@dataclass
class FetchResult:
    """What :meth:`TensorStore.fetch` found: tensors by key, bad inputs by key with the reason,
    and how many entries this call encoded vs. found already stored."""

    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    bad: dict[str, str] = field(default_factory=dict)
    encoded: int = 0
    reused: int = 0


#: ``build(missing keys)`` yields ``(key, tensor)`` or ``(key, reason)`` for an unusable input
Builder = Callable[[list[str]], Iterator[tuple[str, "torch.Tensor | str"]]]


class TensorStore:
    """Encoded tensors of one kind (see the module docstring), shared by every process."""

    def __init__(self, cache_dir: str, kind: str, meta: Mapping[str, Any]) -> None:
        self.meta = json.loads(json.dumps(dict(meta), sort_keys=True, default=str))
        self.dir = os.path.join(cache_dir, f"{kind}-{digest(self.meta)}")
        self.index_path = os.path.join(self.dir, "index.json")

    def _index(self) -> dict[str, Any]:
        try:
            with open(self.index_path, encoding="utf-8") as f:
                idx = json.load(f)
        except (OSError, json.JSONDecodeError):
            idx = {}
        idx.setdefault("meta", self.meta)
        idx.setdefault("entries", {})
        idx.setdefault("bad", {})
        idx.setdefault("encoded", 0)
        return idx

    def fetch(self, keys: list[str], build: Builder, load: bool = True) -> FetchResult:
        """Tensors of ``keys``; the missing ones are built (once, under the store's lock: a
        concurrent process waits, then reads them). ``load=False`` only makes sure they exist."""
        t0 = time.perf_counter()
        idx = self._index()
        res = FetchResult()
        if any(k not in idx["entries"] and k not in idx["bad"] for k in keys):
            with file_lock(os.path.join(self.dir, "lock")):
                idx = self._index()  # another process may have built them while we waited
                missing = [k for k in dict.fromkeys(keys) if k not in idx["entries"]
                           and k not in idx["bad"]]
                if missing:
                    res.encoded = self._build(idx, missing, build)
        res.reused = sum(1 for k in set(keys) if k in idx["entries"]) - res.encoded
        res.bad = {k: idx["bad"][k] for k in keys if k in idx["bad"]}
        if load:
            res.tensors = self._load(idx, [k for k in keys if k in idx["entries"]])
        append_jsonl(os.path.join(self.dir, "events.jsonl"),
                     {"time": round(time.time(), 3), "pid": os.getpid(), "host": socket.gethostname(),
                      "requested": len(set(keys)), "encoded": res.encoded, "reused": res.reused,
                      "bad": len(res.bad), "wall_s": round(time.perf_counter() - t0, 3)},
                     durable=False)
        return res

    def _build(self, idx: dict[str, Any], missing: list[str], build: Builder) -> int:
        buf: dict[str, torch.Tensor] = {}
        size = 0
        encoded = 0
        try:
            for key, out in build(missing):
                if isinstance(out, str):
                    idx["bad"][key] = out
                    continue
                buf[key] = out.detach().to("cpu", torch.float32).contiguous()
                size += buf[key].numel() * 4
                encoded += 1
                if size >= SHARD_BYTES:
                    self._flush(idx, buf)
                    buf, size = {}, 0
        finally:  # whatever was finished stays usable, even when a later input fails
            self._flush(idx, buf)
        return encoded

    def _flush(self, idx: dict[str, Any], buf: dict[str, torch.Tensor]) -> None:
        from safetensors.torch import save_file

        if buf:
            n = len(set(idx["entries"].values()))
            name = f"shard-{n:06d}.safetensors"
            with atomic_path(os.path.join(self.dir, name)) as tmp:
                save_file(buf, str(tmp), metadata={"store": os.path.basename(self.dir)})
            for k in buf:
                idx["entries"][k] = name
            idx["encoded"] = int(idx["encoded"]) + len(buf)
        atomic_write_json(self.index_path, idx, indent=None)

    def _load(self, idx: dict[str, Any], keys: list[str]) -> dict[str, torch.Tensor]:
        from safetensors import safe_open

        by_shard: dict[str, list[str]] = {}
        for k in dict.fromkeys(keys):
            by_shard.setdefault(idx["entries"][k], []).append(k)
        out = {}
        for shard, ks in by_shard.items():
            with safe_open(os.path.join(self.dir, shard), framework="pt") as f:
                for k in ks:
                    out[k] = f.get_tensor(k)
        return out
