"""The evaluation scheduler: evaluations as Ray tasks, submitted, de-duplicated, polled, timed
out and cancelled, apart from the ask/tell loop that decides what to evaluate
(:mod:`experiments.runner`), as Archai's ``evaluators/ray.py`` wraps an evaluator.

One task per :class:`~experiments.cache.EvalKey`: a key submitted while it is in flight is not
submitted again; its *waiters* (the numbers of the trials that need it) are collected and
handed back with the outcome. Ray is imported lazily (only a search needs it).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from experiments.cache import CachedEval, EvalKey
from experiments.distributed import failure_reason

#: the driver cancels an evaluation that has not returned ``timeout_s + max(this, timeout_s)``
#: after submission (see :attr:`EvaluationScheduler.backstop_s`)
BACKSTOP_GRACE_S = 30.0


@dataclass(frozen=True)
class Outcome:
    """A finished evaluation: its result, or why it failed, and the trials waiting on it."""

    key: EvalKey
    waiters: tuple[int, ...]
    result: CachedEval | None = None
    failure: str | None = None
    #: the evaluator's training state at ``key.budget`` (a rung of a budget ladder), if any
    checkpoint: bytes | None = None


class EvaluationScheduler:
    """Runs ``remote`` (a Ray remote function, see :func:`experiments.distributed.remote_evaluate`)
    for each submitted key and reports what finished.

    ``spec`` is the evaluator spec every task gets; ``threads`` and ``timeout_s`` the per-task
    torch threads and time limit (the worker stops an evaluation ``timeout_s`` after it starts;
    :attr:`backstop_s` is the driver's own limit from submission).
    """

    def __init__(self, remote: Any, spec: Mapping[str, Any], *, threads: int, timeout_s: float):
        self._remote = remote
        self._spec = spec
        self._threads = threads
        self.timeout_s = timeout_s
        self._inflight: dict[Any, tuple[EvalKey, float]] = {}  # ref -> (key, submitted at)
        self._pending: dict[EvalKey, Any] = {}  # key -> ref
        self._waiters: dict[EvalKey, list[int]] = {}  # key -> trial numbers

    def __len__(self) -> int:
        """Evaluations in flight."""
        return len(self._inflight)

    @property
    def backstop_s(self) -> float:
        """The worker stops an evaluation at ``timeout_s`` after it STARTS; the scheduler
        cancels one that has not returned this long after SUBMISSION (worker start-up and
        queueing included), e.g. a hang in native code that the worker's alarm cannot
        interrupt."""
        return self.timeout_s + max(BACKSTOP_GRACE_S, self.timeout_s)

    def submit(self, key: EvalKey, arch_json: str, waiter: int, *, resumable: bool = False,
               checkpoint: bytes | None = None, val_fraction: float = 1.0) -> bool:
        """Evaluate ``key`` for trial ``waiter``. False if it was already in flight (the
        waiter is added to it, nothing new runs). ``resumable``: a rung of a budget ladder,
        continuing from ``checkpoint`` (None = from the start); its outcome carries the new
        checkpoint; ``val_fraction``: scored on that part of the held-out data."""
        self._waiters.setdefault(key, []).append(waiter)
        if key in self._pending:
            return False
        ref = self._remote.remote(self._spec, arch_json, key.seed, key.budget, self._threads,
                                  self.timeout_s, checkpoint, resumable, val_fraction)
        self._pending[key] = ref
        self._inflight[ref] = (key, time.monotonic())
        return True

    def forget(self, waiter: int, keys: Iterable[EvalKey]) -> None:
        """Trial ``waiter`` no longer waits on ``keys`` (it finished or failed); the
        evaluations go on for the other trials that share them."""
        for key in keys:
            lst = self._waiters.get(key)
            if lst and waiter in lst:
                lst.remove(waiter)

    def poll(self, max_wait_s: float = 1.0) -> list[Outcome]:
        """Wait up to ``max_wait_s`` (less if a backstop expires sooner) for a result; return
        every evaluation that finished, failed or was cancelled past its backstop."""
        if not self._inflight:
            return []
        import ray

        deadline = min(t + self.backstop_s for _, t in self._inflight.values())
        wait_s = max(0.0, min(max_wait_s, deadline - time.monotonic()))
        ready, _ = ray.wait(list(self._inflight), num_returns=1, timeout=wait_s)
        return [self._collect(ref) for ref in ready] + self._expire()

    def cancel_all(self) -> None:
        """Cancel every evaluation in flight and forget all waiters (a stopped search)."""
        if self._inflight:
            import ray

            for ref in list(self._inflight):
                try:
                    ray.cancel(ref, force=True)
                except Exception:
                    pass
        self._inflight.clear()
        self._pending.clear()
        self._waiters.clear()

    # ---- internals ------------------------------------------------------------------------
    def _pop(self, ref: Any) -> tuple[EvalKey, tuple[int, ...]]:
        key, _ = self._inflight.pop(ref)
        self._pending.pop(key, None)
        return key, tuple(self._waiters.pop(key, []))

    def _collect(self, ref: Any) -> Outcome:
        import ray

        key, waiters = self._pop(ref)
        try:
            out = ray.get(ref)
        except Exception as e:  # RayTaskError, WorkerCrashedError, ...
            return Outcome(key, waiters, failure=failure_reason(e))
        value = out.get("value")
        if not isinstance(value, float) or not math.isfinite(value):
            return Outcome(key, waiters, failure=f"evaluator returned a non-finite value ({value!r})")
        item = CachedEval(key, value, out.get("extras", {}), float(out.get("wall_time_s", 0.0)),
                          str(out.get("node_id", "")), str(out.get("host", "")),
                          int(out.get("pid", 0)), float(out.get("cpu_s", 0.0)))
        return Outcome(key, waiters, result=item, checkpoint=out.get("checkpoint"))

    def _expire(self) -> list[Outcome]:
        import ray

        limit = self.backstop_s
        now = time.monotonic()
        expired = []
        for ref, (_, t_sub) in list(self._inflight.items()):
            if now - t_sub > limit:
                ray.cancel(ref, force=True, recursive=True)
                key, waiters = self._pop(ref)
                expired.append(Outcome(key, waiters, failure=(
                    f"timeout: no result {limit:g} s after submission (evaluator.timeout_s="
                    f"{self.timeout_s:g} plus start-up/queueing grace); cancelled")))
        return expired
