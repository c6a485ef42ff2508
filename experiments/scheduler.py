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
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from evaluators import ray_remote_options
from experiments.cache import CachedEval, EvalKey
from experiments.distributed import (
    ensure_ray,
    failure_reason,
    fatal_cause,
    remote_evaluate,
    shutdown_ray,
)
from experiments.resources import (
    RAY_NAMES,
    FeasibilityWatch,
    capacity,
    check_feasible,
    local_cpus,
    node_totals,
    request_of,
    task_resources,
)
from experiments.runtime_env import job_env, task_env

#: the driver cancels an evaluation that has not returned ``timeout_s + max(this, timeout_s)``
#: after submission (see :attr:`EvaluationScheduler.backstop_s`)
BACKSTOP_GRACE_S = 30.0
#: a poll that returns this much later than it asked to (or comes this much later after the
#: previous one) means the driver was not running (SIGSTOP, Ctrl-Z, a laptop lid): that time
#: does not count towards the backstop of the evaluations in flight
STALL_S = 5.0


@dataclass(frozen=True)
class Outcome:
    """A finished evaluation: its result, or why it failed, and the trials waiting on it."""

    key: EvalKey
    waiters: tuple[int, ...]
    result: CachedEval | None = None
    failure: str | None = None
    #: the evaluator's training state at ``key.budget`` (a rung of a budget ladder), if any
    checkpoint: bytes | None = None
    #: safetensors bytes of the weights the evaluation kept (``evaluator.keep_weights``)
    weights: bytes | None = None
    #: the failure may be the driver's doing (it was suspended while the evaluation was in
    #: flight): run it again rather than fail the trial for good
    requeue: bool = False


class EvaluationScheduler:
    """Runs ``remote`` (a Ray remote function, see :func:`experiments.distributed.remote_evaluate`)
    for each submitted key and reports what finished.

    ``spec`` is the evaluator spec every task gets; ``threads`` and ``timeout_s`` the per-task
    torch threads and time limit (the worker stops an evaluation ``timeout_s`` after it starts;
    :attr:`backstop_s` is the driver's own limit from submission). ``watch`` (e.g. a
    :class:`~experiments.resources.FeasibilityWatch`) is checked on every poll while
    evaluations are in flight. :meth:`poll` raises
    :class:`~experiments.distributed.SearchAborted` when a failure means every further
    evaluation would fail too (``watch`` raised, the evaluator cannot be built on a worker).
    """

    def __init__(self, remote: Any, spec: Mapping[str, Any], *, threads: int, timeout_s: float,
                 watch: Any = None):
        #: evaluations the cluster can run at once (set by :func:`start_scheduler`)
        self.capacity: int | None = None
        self.request: dict[str, float] = {}
        self._remote = remote
        self._spec = spec
        self._threads = threads
        self.timeout_s = timeout_s
        self._watch = watch
        self._inflight: dict[Any, tuple[EvalKey, float]] = {}  # ref -> (key, clock at submission)
        self._clock = 0.0  # seconds the driver was running (see _tick)
        self._t_last: float | None = None
        self._last_stall: float | None = None  # _clock when the driver last resumed from a stall
        #: seconds the driver was found not running (suspended) since the scheduler started
        self.stalled_s = 0.0
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
        self._inflight[ref] = (key, self._tick(0.0))
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

        if self._watch is not None:
            self._watch.check()
        deadline = min(t + self.backstop_s for _, t in self._inflight.values())
        wait_s = max(0.0, min(max_wait_s, deadline - self._tick(0.0)))
        refs = list(self._inflight)
        ready, rest = ray.wait(refs, num_returns=1, timeout=wait_s)
        self._tick(wait_s)
        if ready and rest:  # everything else that is done too (after a stall: all of them)
            ready += ray.wait(rest, num_returns=len(rest), timeout=0)[0]
        return [self._collect(ref) for ref in ready] + self._expire()

    def _tick(self, expected_s: float) -> float:
        """Advance and return the driver's running clock: wall time since the last tick, but
        a gap ``STALL_S`` longer than ``expected_s`` counts as ``expected_s`` (the driver was
        suspended, not the evaluations slow)."""
        now = time.monotonic()
        if self._t_last is not None:
            dt = now - self._t_last
            if dt > expected_s + STALL_S:
                self.stalled_s += dt - expected_s
                dt = expected_s
                self._last_stall = self._clock + dt
            self._clock += dt
        self._t_last = now
        return self._clock

    def cancel_all(self) -> None:
        """Cancel every evaluation in flight and forget all waiters (a stopped search)."""
        if self._inflight:
            import ray

            refs = list(self._inflight)
            for ref in refs:
                try:
                    ray.cancel(ref, force=True)
                except Exception:
                    pass
            # collect what already ended: an error nobody retrieves is printed by Ray
            # ("Unhandled error ...") when its reference is dropped
            ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0.5)
            for ref in ready:
                try:
                    ray.get(ref, timeout=0)
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
            fatal = fatal_cause(e)
            if fatal is not None:
                raise fatal from None
            return Outcome(key, waiters, failure=failure_reason(e))
        value = out.get("value")
        if not isinstance(value, float) or not math.isfinite(value):
            return Outcome(key, waiters, failure=f"evaluator returned a non-finite value ({value!r})")
        item = CachedEval(key, value, out.get("extras", {}), float(out.get("wall_time_s", 0.0)),
                          str(out.get("node_id", "")), str(out.get("host", "")),
                          int(out.get("pid", 0)), float(out.get("cpu_s", 0.0)))
        weights = out.get("weights")
        return Outcome(key, waiters, result=item, checkpoint=out.get("checkpoint"),
                       weights=weights if isinstance(weights, bytes) else None)

    def _expire(self) -> list[Outcome]:
        """Cancel what has not returned ``backstop_s`` (driver running time) after submission
        -- unless it finished meanwhile. One in flight while the driver was suspended is
        re-queued rather than failed."""
        import ray

        limit = self.backstop_s
        now = self._tick(0.0)
        expired = []
        for ref, (_, t_sub) in list(self._inflight.items()):
            if now - t_sub <= limit:
                continue
            if ray.wait([ref], num_returns=1, timeout=0)[0]:  # it did finish
                expired.append(self._collect(ref))
                continue
            ray.cancel(ref, force=True, recursive=True)
            key, waiters = self._pop(ref)
            stalled = self._last_stall is not None and self._last_stall >= t_sub
            expired.append(Outcome(key, waiters, requeue=stalled, failure=(
                f"timeout: no result {limit:g} s after submission (evaluator.timeout_s="
                f"{self.timeout_s:g} plus start-up/queueing grace); cancelled"
                + ("; the driver was suspended meanwhile, so it is run again" if stalled else ""))))
        return expired


# ---- starting: Ray, the runtime environment, the resources of one evaluation ----------------

def start_scheduler(cfg: Any, evaluator: Any, spec: Mapping[str, Any], *,
                    ray_address: str | None, workers: int) -> tuple[EvaluationScheduler, bool]:
    """Start a local Ray (or join ``ray_address``) with the runtime environment of ``cfg``
    (an :class:`~experiments.config.ExperimentConfig`), check that some node can grant the
    resources of one evaluation of ``evaluator`` (:class:`~experiments.resources.ResourceError`
    within seconds if none can), and return the scheduler (which keeps checking) and whether
    this call started/joined Ray (then the caller shuts it down)."""
    joined = bool(ray_address)
    src = cfg.source or "config"
    job = job_env(cfg.runtime_env, cfg.evaluator.name, joined=joined, where=f"{src}: runtime_env")
    per_task = float(ray_remote_options(evaluator).get("num_cpus", 1.0))
    started = ensure_ray(ray_address, local_cpus(workers, per_task), runtime_env=job)
    try:
        if job and not started:
            warnings.warn("Ray was initialized before the search started: its job's runtime "
                          "environment is used as is (runtime_env not shipped)", stacklevel=2)
        nodes = node_totals()
        options = task_resources(evaluator, nodes)
        request = request_of(options)

        def key_of(resource: str) -> str:
            return resource_key(cfg, evaluator, resource)

        check_feasible(request, key_of, nodes)
        task = task_env(cfg.runtime_env, cfg.evaluator.name, joined=joined)
        remote = remote_evaluate(gpu=options.get("num_gpus", 0) > 0).options(
            max_retries=cfg.evaluator.retries, retry_exceptions=False, **options,
            **({"runtime_env": task} if task else {}))
        sched = EvaluationScheduler(remote, spec, threads=cfg.evaluator.threads,
                                    timeout_s=cfg.evaluator.timeout_s,
                                    watch=FeasibilityWatch(request, key_of))
        sched.capacity, sched.request = capacity(request, nodes), request
    except BaseException:
        if started:
            shutdown_ray()
        raise
    return sched, started


def resource_key(cfg: Any, evaluator: Any, resource: str) -> str:
    """The config key behind Ray resource ``resource`` of an evaluation (for error messages)."""
    src, ev = cfg.source or "config", cfg.evaluator
    opt = {v: k for k, v in RAY_NAMES.items()}.get(resource, resource)
    if "resources" in (ev.options or {}):
        return f"{src}: evaluator.options.resources.{opt}"
    device = getattr(getattr(evaluator, "options", None), "device", None)
    if resource == "GPU" and isinstance(device, str) and device != "cpu":
        return f"{src}: evaluator.options.device ({device}: one GPU per evaluation)"
    return f"{src}: evaluator {ev.name!r}: resources.{opt}"
