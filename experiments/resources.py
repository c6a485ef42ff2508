"""Ray resources of the evaluations: what one evaluation asks for, and whether any node of the
cluster can ever grant it.

A request no node can satisfy (``num_gpus: 1`` on a cluster without GPUs, a custom resource no
node has, more CPUs than the biggest node) would otherwise sit in Ray's queue until the
driver's backstop cancels it (``timeout_s`` plus grace: minutes). :func:`check_feasible` runs
before the first submission; :class:`FeasibilityWatch` re-checks the alive nodes' totals while
the search runs (nodes may leave), so either way the search stops within seconds with one line
naming the resource. Ray is imported lazily.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from typing import Any

from common.limits import OPTION_RANGES
from evaluators import ray_remote_options
from experiments.distributed import SearchAborted

#: Ray's ``.options()`` names -> the node resource names of ``ray.nodes()``
RAY_NAMES = {"num_cpus": "CPU", "num_gpus": "GPU", "memory": "memory"}
#: how long no alive node may be able to run an evaluation before a running search stops. Ray
#: itself declares a node dead only after its health checks fail (~10-15 s after a crash; at
#: once when it leaves gracefully), and a restarted node joins under a new id, so a short
#: grace only rides over one inconsistent read
INFEASIBLE_GRACE_S = 3.0
#: how often a running search re-reads the nodes' totals
WATCH_INTERVAL_S = 2.0
#: more evaluations in flight than this is refused before anything starts (a typo, not a
#: cluster): each one is a Ray task and a trial the driver keeps open
MAX_WORKERS = int(OPTION_RANGES["workers"][1])  # one place for limits: common/limits.py


class ResourceError(SearchAborted):
    """No node of the Ray cluster can ever grant what one evaluation requests."""


def task_resources(ev: Any, node_totals: list[Mapping[str, float]]) -> dict[str, Any]:
    """``.options(**this)`` of one evaluation of ``ev``: its declared resources, plus one GPU
    when it uses a GPU if it gets one (``gpu_if_available``, e.g. ``device: auto``) and some
    node of the cluster has a GPU."""
    opts = ray_remote_options(ev)
    if getattr(ev, "gpu_if_available", False) and "num_gpus" not in opts and any(
            n.get("GPU", 0.0) > 0 for n in node_totals):
        opts["num_gpus"] = 1.0
    return opts


def request_of(options: Mapping[str, Any]) -> dict[str, float]:
    """The node resources (``CPU``, ``GPU``, ``memory``, custom) of ``.options(**options)``;
    zero amounts left out."""
    req = {RAY_NAMES[k]: float(v) for k, v in options.items() if k in RAY_NAMES}
    req.update({k: float(v) for k, v in dict(options.get("resources") or {}).items()})
    return {k: v for k, v in req.items() if v > 0}


def node_totals() -> list[dict[str, float]]:
    """Total resources of every alive node of the connected Ray cluster."""
    import ray

    return [{k: float(v) for k, v in n.get("Resources", {}).items()}
            for n in ray.nodes() if n.get("Alive")]


def _amount(name: str, v: float) -> str:
    if name == "memory":
        return f"{v / 2**30:.3g} GiB of memory"
    if name in ("CPU", "GPU"):
        return f"{v:g} {name}{'s' if v != 1 and name == 'CPU' else ''}"
    return f"{v:g} {name!r}"


def infeasible_reason(request: Mapping[str, float], nodes: list[Mapping[str, float]],
                      key_of: Callable[[str], str]) -> str | None:
    """Why no node in ``nodes`` can grant ``request``, naming the resource through ``key_of``
    (node resource name -> config key); None if one can."""
    eps = 1e-9
    if any(all(n.get(k, 0.0) + eps >= v for k, v in request.items()) for n in nodes):
        return None
    where = f"{len(nodes)} node(s) alive" if nodes else "no node is alive"
    for k, v in request.items():
        best = max((n.get(k, 0.0) for n in nodes), default=0.0)
        if best + eps >= v:
            continue
        if best == 0.0:
            has = sorted({r for n in nodes for r in n if not r.startswith("node:")
                          and r != "object_store_memory"})
            what = {"GPU": "a GPU", "CPU": "a CPU"}.get(k, f"the resource {k!r}")
            return (f"{key_of(k)}: {_amount(k, v)} per evaluation, but no node of the Ray "
                    f"cluster has {what} ({where}; they have: {', '.join(has) or 'nothing'})")
        return (f"{key_of(k)}: {_amount(k, v)} per evaluation, but the largest node of the Ray "
                f"cluster has {_amount(k, best)} ({where})")
    asked = ", ".join(_amount(k, v) for k, v in request.items())
    return (f"{key_of(next(iter(request)))}: no single node of the Ray cluster has {asked} "
            f"together ({where})")


def check_workers(workers: int, where: str) -> None:
    """Refuse an absurd number of evaluations in flight (``where`` names the flag/key)."""
    from common.errors import ConfigError

    if workers > MAX_WORKERS:
        raise ConfigError(f"{where}: {workers} evaluations in flight is more than the "
                          f"{MAX_WORKERS} allowed; the search runs at most as many as the Ray "
                          f"cluster has CPUs for anyway")


def capacity(request: Mapping[str, float], nodes: list[Mapping[str, float]]) -> int:
    """How many evaluations asking ``request`` the alive ``nodes`` can run at once (0 if
    none; a request of nothing counts as one CPU)."""
    req = dict(request) or {"CPU": 1.0}
    total = 0
    for n in nodes:
        fits = min(math.floor(n.get(k, 0.0) / v + 1e-9) for k, v in req.items())
        total += max(0, fits)
    return total


def capacity_note(where: str, workers: int, cap: int, request: Mapping[str, float]) -> str:
    """One line: ``workers`` evaluations in flight capped at ``cap`` (the cluster's)."""
    asked = ", ".join(_amount(k, v) for k, v in (dict(request) or {"CPU": 1.0}).items())
    return (f"{where} {workers}: at most {cap} evaluation(s) in flight, what the Ray cluster "
            f"can run at once ({asked} each)")


def local_cpus(workers: int, per_task_cpus: float) -> int:
    """CPUs of a local Ray for ``workers`` evaluations of ``per_task_cpus`` each: never more
    than this machine has (a Ray told it has more starts more worker processes than cores),
    never fewer than one evaluation needs."""
    import os

    try:
        have = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        have = os.cpu_count() or 1
    want = math.ceil(workers * max(per_task_cpus, 1.0))
    return max(1, math.ceil(per_task_cpus), min(want, have))


def check_feasible(request: Mapping[str, float], key_of: Callable[[str], str],
                   nodes: list[Mapping[str, float]] | None = None) -> None:
    """Raise :class:`ResourceError` if no alive node can ever grant ``request``."""
    reason = infeasible_reason(request, node_totals() if nodes is None else nodes, key_of)
    if reason:
        raise ResourceError(reason)


class FeasibilityWatch:
    """Re-checks, at most every ``interval_s``, that some alive node can still grant the
    request; :meth:`check` raises :class:`ResourceError` once none could for ``grace_s``."""

    def __init__(self, request: Mapping[str, float], key_of: Callable[[str], str],
                 interval_s: float = WATCH_INTERVAL_S, grace_s: float = INFEASIBLE_GRACE_S,
                 nodes: Callable[[], list[Mapping[str, float]]] = node_totals):
        self.request, self.key_of = dict(request), key_of
        self.interval_s, self.grace_s, self._nodes = interval_s, grace_s, nodes
        self._last = -math.inf
        self._since: float | None = None

    def check(self) -> None:
        now = time.monotonic()
        if now - self._last < self.interval_s:
            return
        self._last = now
        reason = infeasible_reason(self.request, self._nodes(), self.key_of)
        if reason is None:
            self._since = None
            return
        if self._since is None:
            self._since = now
        if now - self._since >= self.grace_s:
            raise ResourceError(f"{reason}: nodes left the cluster during the search; finished "
                                f"trials are saved, --resume once the cluster has them again")
