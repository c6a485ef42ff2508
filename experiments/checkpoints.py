"""Training checkpoints of a budget ladder, in the run folder.

A rung of a multi-fidelity search trains on from the previous rung's state. Evaluations run on
any Ray node, so the state travels as bytes: the task returns it with its result, the driver
writes it here, and the next rung's task gets it as an argument (Ray ships it to whichever
node runs it). Layout::

    <run>/checkpoints/<arch_id>/s<seed>.b<budget>.safetensors   # the evaluator's blob
    <run>/checkpoints/<arch_id>/s<seed>.b<budget>.json          # its metadata, for people

The blob is the evaluator's own (a safetensors file for the built-ins: weights, optimizer
state, generator state, step); its string metadata is read here without torch. A candidate's
checkpoints are removed when its ladder ends (completed, pruned or failed); an interrupted
candidate keeps them, so a resumed search continues mid-ladder instead of starting over.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from common.fsio import atomic_write_bytes, atomic_write_json
from experiments.cache import EvalKey

CHECKPOINT_DIR = "checkpoints"


def blob_metadata(blob: bytes) -> dict[str, str]:
    """The string metadata of a safetensors blob (``__metadata__`` of its JSON header); {} if
    the blob is not a safetensors file."""
    try:
        n = int.from_bytes(blob[:8], "little")
        if not 0 < n <= len(blob) - 8:
            return {}
        header = json.loads(blob[8:8 + n])
        meta = header.get("__metadata__") if isinstance(header, dict) else None
        return {str(k): str(v) for k, v in (meta or {}).items()}
    except (ValueError, UnicodeDecodeError):
        return {}


class CheckpointStore:
    """The checkpoints of one run directory, keyed by (arch_id, seed, budget)."""

    def __init__(self, run_dir: str | Path):
        self.dir = Path(run_dir) / CHECKPOINT_DIR

    def path(self, key: EvalKey) -> Path:
        return self.dir / key.arch_id / f"s{key.seed}.b{key.budget}.safetensors"

    def write(self, key: EvalKey, blob: bytes) -> Path:
        """Store ``blob`` durably (it replaces compute), then its metadata next to it."""
        path = self.path(key)
        atomic_write_bytes(path, blob)
        meta: dict[str, Any] = {"arch_id": key.arch_id, "seed": key.seed, "budget": key.budget,
                                "config_key": key.config_key, "bytes": len(blob),
                                "evaluator_metadata": blob_metadata(blob)}
        atomic_write_json(path.with_suffix(".json"), meta, durable=False)
        return path

    def read(self, key: EvalKey) -> bytes | None:
        """The stored blob of ``key``; None if absent or unreadable."""
        try:
            return self.path(key).read_bytes()
        except OSError:
            return None

    def latest(self, arch_id: str, seed: int, below: int) -> tuple[int, bytes] | None:
        """``(budget, blob)`` of the highest-budget checkpoint of ``(arch_id, seed)`` below
        ``below``; None if there is none."""
        d = self.dir / arch_id
        best = None
        for p in d.glob(f"s{seed}.b*.safetensors") if d.is_dir() else ():
            try:
                b = int(p.name.split(".b", 1)[1].split(".", 1)[0])
            except (IndexError, ValueError):
                continue
            if b < below and (best is None or b > best):
                best = b
        if best is None:
            return None
        blob = self.read(EvalKey(arch_id, "", best, seed))
        return (best, blob) if blob is not None else None

    def drop(self, arch_id: str) -> None:
        """Remove every checkpoint of ``arch_id`` (its ladder is over)."""
        shutil.rmtree(self.dir / arch_id, ignore_errors=True)

    def arch_ids(self) -> list[str]:
        return sorted(p.name for p in self.dir.iterdir() if p.is_dir()) if self.dir.is_dir() else []
