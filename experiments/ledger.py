"""Every evaluation counts once: the outcome of each architecture's first trial.

Many Optuna parameter vectors map to one architecture, and samplers propose architectures
they have already seen (NSGA-II's crossover of two parents that agree, TPE's mode). The driver
keeps one :class:`ArchLedger` per study: when a suggested architecture already has an outcome,
the new trial is told that outcome again (same values and constraints, so the sampler still
sees the point it proposed), marked ``duplicate_of`` the first trial, and does not count
toward ``n_trials``. A :class:`DuplicateGuard` stops a search whose sampler proposes nothing
new for a long stretch (a space smaller than ``n_trials``, or a converged sampler).

Pure bookkeeping: no storage, Ray or evaluator. ``benchmarks/search_efficiency.py`` runs the
same loop.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

#: user attr of a trial told the outcome of an earlier trial of the same architecture
DUPLICATE_OF = "duplicate_of"
#: user attr of a trial whose architecture was never evaluated (over the memory budget): its
#: quality value is a placeholder (the worst possible), the reason is this attr's value
NOT_EVALUATED = "not_evaluated"


@dataclass(frozen=True)
class ArchOutcome:
    """How the first (counted) trial of an architecture ended.

    ``state``: ``COMPLETE``, ``PRUNED`` or ``FAIL``; ``values``: what it was told (COMPLETE
    only); ``attrs``: user attrs a repeat copies (reason, rung reached, not evaluated ...).
    """

    trial_number: int
    state: str
    values: tuple[float, ...] | None = None
    attrs: Mapping[str, Any] = field(default_factory=dict)


#: user attrs of the first trial that a duplicate repeats (and of its ``result``: the quality,
#: and the rung/budget it was measured at; not the compute it spent)
_COPIED = ("failure_reason", NOT_EVALUATED)
_RESULT_COPIED = ("quality", "rung", "budget")


def is_duplicate(t: Any) -> bool:
    """True for a trial told the outcome of an earlier trial of its architecture."""
    return t.user_attrs.get(DUPLICATE_OF) is not None


class ArchLedger:
    """arch_id -> :class:`ArchOutcome` of its first counted trial."""

    def __init__(self) -> None:
        self._first: dict[str, ArchOutcome] = {}

    def __len__(self) -> int:
        return len(self._first)

    def __contains__(self, arch_id: str) -> bool:
        return arch_id in self._first

    def get(self, arch_id: str) -> ArchOutcome | None:
        return self._first.get(arch_id)

    def record(self, arch_id: str, outcome: ArchOutcome) -> None:
        """Keep the first outcome of ``arch_id`` (later ones are ignored)."""
        self._first.setdefault(arch_id, outcome)

    def record_trial(self, t: Any) -> None:
        """Record a finished Optuna trial (FrozenTrial or Trial) of the driver."""
        aid = t.user_attrs.get("arch_id")
        if aid is None or is_duplicate(t):
            return
        values = tuple(float(v) for v in t.values) if t.values is not None else None
        attrs: dict[str, Any] = {k: t.user_attrs[k] for k in _COPIED if k in t.user_attrs}
        result = {k: v for k, v in dict(t.user_attrs.get("result") or {}).items()
                  if k in _RESULT_COPIED}
        if result:
            attrs["result"] = result
        self.record(aid, ArchOutcome(t.number, t.state.name, values, attrs))

    @classmethod
    def from_trials(cls, trials: Iterable[Any], counted: Any) -> ArchLedger:
        """The ledger of a (resumed) study: the first trial of each architecture among those
        ``counted(t)`` says count toward ``n_trials`` (finished, not interrupted)."""
        led = cls()
        for t in sorted(trials, key=lambda t: t.number):
            if counted(t):
                led.record_trial(t)
        return led


class DuplicateGuard:
    """Counts consecutive duplicate proposals; :meth:`exhausted` once there were ``limit``
    in a row (the sampler has nothing new to offer)."""

    def __init__(self, limit: int):
        self.limit = max(1, int(limit))
        self.streak = 0
        self.total = 0

    def duplicate(self) -> None:
        self.streak += 1
        self.total += 1

    def fresh(self) -> None:
        self.streak = 0

    @property
    def exhausted(self) -> bool:
        return self.streak >= self.limit


def duplicate_limit(n_trials: int) -> int:
    """Consecutive duplicates after which a search stops: generous (a converging NSGA-II may
    repeat itself for a generation or two), but bounded so a space smaller than ``n_trials``
    cannot spin forever."""
    return max(200, 2 * int(n_trials))


def not_evaluated_values(objectives: Iterable[str], quality_direction: str,
                         predicted: Mapping[str, float]) -> list[float]:
    """What a trial over the memory budget is told (never evaluated): the worst quality
    (``-inf`` maximized, ``+inf`` minimized) and its predicted latency/memory. With its violated
    memory constraint the samplers rank it below every feasible trial."""
    worst = -math.inf if quality_direction == "maximize" else math.inf
    return [worst if o == "quality" else float(predicted[o]) for o in objectives]
