"""The evaluation cache: one JSON line per completed evaluation, in the run directory.

Keyed by ``(arch_id, evaluator config_key, budget, seed)``: many Optuna parameter vectors map to
the same architecture, and a resumed search must never repeat an evaluation that already
finished (even if the driver died before telling Optuna about it).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.fsio import append_jsonl, read_jsonl

CACHE_FILE = "evaluations.jsonl"
FSYNC_ABOVE_S = 0.5


@dataclass(frozen=True)
class EvalKey:
    arch_id: str
    config_key: str
    budget: int
    seed: int

    @property
    def text(self) -> str:
        return f"{self.arch_id}/{self.config_key}/b{self.budget}/s{self.seed}"


@dataclass(frozen=True)
class CachedEval:
    """A finished evaluation: score, extras, where and how long it ran."""

    key: EvalKey
    value: float
    extras: Mapping[str, float] = field(default_factory=dict)
    wall_time_s: float = 0.0
    node_id: str = ""
    host: str = ""
    pid: int = 0
    #: CPU seconds of the evaluation task (its process time; 0 if unknown)
    cpu_s: float = 0.0

    def to_record(self) -> dict[str, Any]:
        return {"arch_id": self.key.arch_id, "config_key": self.key.config_key,
                "budget": self.key.budget, "seed": self.key.seed, "value": self.value,
                "extras": {k: v for k, v in self.extras.items() if _finite(v)},
                "wall_time_s": self.wall_time_s, "cpu_s": self.cpu_s, "node_id": self.node_id,
                "host": self.host, "pid": self.pid}


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


class EvalCache:
    """Append-only cache file + in-memory index. A truncated last line (crash) is skipped."""

    def __init__(self, run_dir: str | Path):
        self.path = Path(run_dir) / CACHE_FILE
        self._items: dict[EvalKey, CachedEval] = {}
        for _, rec in read_jsonl(self.path):
            item = _from_record(rec) if rec is not None else None
            if item is not None:
                self._items[item.key] = item

    def get(self, key: EvalKey) -> CachedEval | None:
        return self._items.get(key)

    def __contains__(self, key: EvalKey) -> bool:
        return key in self._items

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[CachedEval]:
        return iter(self._items.values())

    def put(self, item: CachedEval) -> None:
        """Record a finished evaluation. Evaluations that took >= ``FSYNC_ABOVE_S`` are fsynced
        (they must survive even a power loss); cheaper ones are only flushed: a process crash
        keeps them, a power loss may cost re-running a sub-second evaluation."""
        if item.key in self._items:
            return
        append_jsonl(self.path, item.to_record(), durable=item.wall_time_s >= FSYNC_ABOVE_S)
        self._items[item.key] = item


def _from_record(rec: Mapping[str, Any]) -> CachedEval | None:
    try:
        key = EvalKey(str(rec["arch_id"]), str(rec["config_key"]), int(rec["budget"]),
                      int(rec["seed"]))
        value = float(rec["value"])
        if not math.isfinite(value):
            return None
        extras = {str(k): float(v) for k, v in dict(rec.get("extras") or {}).items() if _finite(v)}
        return CachedEval(key, value, extras, float(rec.get("wall_time_s", 0.0)),
                          str(rec.get("node_id", "")), str(rec.get("host", "")),
                          int(rec.get("pid", 0)), float(rec.get("cpu_s", 0.0)))
    except (KeyError, TypeError, ValueError):
        return None


def rebuild_from_study(run_dir: str | Path, trials: Iterable[Any], *, config_key: str,
                       budget: int, seeds: Sequence[int]) -> int:
    """Put back into ``evaluations.jsonl`` the evaluations of COMPLETE trials it lacks (the
    log was deleted, or lost lines a power cut took), from each trial's ``result`` attr
    (``seed_values``; a single-seed run's ``quality``): a resume then never evaluates an
    architecture the study already knows again. Extras are restored for the first seed only.
    Returns the number of evaluations restored."""
    cache = EvalCache(run_dir)
    n = 0
    for t in trials:
        res, aid = t.user_attrs.get("result") or {}, t.user_attrs.get("arch_id")
        if t.state.name != "COMPLETE" or not aid or "quality" not in res:
            continue
        by_seed = res.get("seed_values") or (
            {str(seeds[0]): res["quality"]} if len(seeds) == 1 else {})
        node = (res.get("node_ids") or [""])[0]
        wall = float(res.get("eval_wall_time_s", 0.0)) / max(1, len(by_seed))
        for i, (seed, value) in enumerate(by_seed.items()):
            key = EvalKey(str(aid), config_key, int(budget), int(seed))
            if key not in cache and _finite(value):
                extras = dict(res.get("extras") or {}) if i == 0 else {}
                cache.put(CachedEval(key, float(value), extras, wall, node))
                n += 1
    return n


def read_records(run_dir: str | Path) -> list[dict[str, Any]]:
    """All parseable cache records in file order (for tests and reports)."""
    return [r for _, r in read_jsonl(Path(run_dir) / CACHE_FILE) if r is not None]
