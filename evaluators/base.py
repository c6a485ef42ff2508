"""The evaluator protocol every quality proxy implements (see DESIGN §2 and §5)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Protocol, runtime_checkable

from search_space.arch import ArchConfig


class Direction(str, Enum):
    MAXIMIZE = "maximize"
    MINIMIZE = "minimize"


@dataclass(frozen=True)
class EvalResult:
    """One evaluation: the score, named side numbers, and how long it took.

    ``weights``: safetensors bytes of the weights the evaluation trained, when it was asked to
    keep them (``short_train``'s ``keep_weights``); the search driver writes them into the run
    folder (``<run>/weights/<arch_id>/s<seed>.safetensors``), so they travel with the result
    from a worker on any node.
    """

    value: float
    extras: Mapping[str, float] = field(default_factory=dict)
    wall_time_s: float = 0.0
    weights: bytes | None = field(default=None, repr=False, compare=False)


@runtime_checkable
class Evaluator(Protocol):
    """Scores a candidate. Must be deterministic for a given ``seed``.

    ``config_key`` identifies everything that changes the score besides (arch, seed, budget)
    (evaluator options, proxy scale, data, code version): it is part of every cache key.
    ``resources`` are Ray resources one evaluation needs (e.g. ``{"num_cpus": 1, "num_gpus": 1}``).
    Optional: ``setup(task, progress) -> dict``, called once by the search driver before the
    first evaluation to build what every evaluation shares (the built-in torch evaluators
    encode and cache the data there), so bad input stops a search before it starts.
    """

    name: str
    direction: Direction

    @property
    def config_key(self) -> str: ...

    @property
    def resources(self) -> Mapping[str, float]: ...

    def evaluate(self, arch: ArchConfig, *, seed: int, budget: int) -> EvalResult: ...


@runtime_checkable
class ResumableEvaluator(Evaluator, Protocol):
    """An evaluator whose budget is training that can go on from a checkpoint (multi-fidelity
    search: each rung of the budget ladder continues the previous rung's run).

    ``evaluate_resumable(arch, seed=, budget=, checkpoint=)`` trains from ``checkpoint`` (bytes
    returned by an earlier call for the same arch and seed at a lower budget, or None) to
    ``budget`` and returns ``(result, checkpoint at budget)``; the result must equal
    ``evaluate(arch, seed=seed, budget=budget)``. The checkpoint is opaque bytes (a safetensors
    blob for the built-ins), so it can travel back from a Ray task on any node.
    ``val_fraction < 1`` asks for a cheaper score on part of the held-out data (a lower rung's
    prune/continue decision; not the evaluator's score, never cached as one).
    """

    def evaluate_resumable(self, arch: ArchConfig, *, seed: int, budget: int,
                           checkpoint: bytes | None = None, val_fraction: float = 1.0
                           ) -> tuple[EvalResult, bytes]: ...
