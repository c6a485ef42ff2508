"""Ray side of a search: starting/joining Ray and the evaluation task.

Ray is imported lazily (only a search needs it). A local Ray binds to loopback with its
dashboard off and token auth disabled; ``address`` joins an existing cluster instead.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import socket
import time
from collections.abc import Mapping
from typing import Any

from common.errors import TemponasError
from evaluators.registry import create_evaluator
from search_space.arch import ArchConfig
from search_space.backbone import BackboneSpec

_LOCAL_ENV = {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}


class RayError(TemponasError):
    """Ray could not be started or joined."""


def ensure_ray(address: str | None, num_cpus: int) -> bool:
    """Start a local Ray (``num_cpus``) or join ``address``. True if this call started/joined
    it (so the caller shuts it down); False if Ray was already initialized in this process."""
    for k, v in _LOCAL_ENV.items():
        os.environ.setdefault(k, v)
    if address:
        _check_reachable(address)
    import ray

    if ray.is_initialized():
        return False
    kw: dict[str, Any] = dict(include_dashboard=False, log_to_driver=True, logging_level="warning",
                              configure_logging=True)
    try:
        if address:
            host = address.split("://")[-1].rsplit(":", 1)[0]
            if host in ("127.0.0.1", "localhost"):
                # a cluster on this machine bound to loopback: without this Ray rewrites
                # 127.0.0.1 to the routable IP and cannot reach the GCS
                with _loopback_only():
                    ray.init(address=address, **kw)
            else:
                ray.init(address=address, **kw)
        else:
            # address="local": always a NEW local instance. Without it ray.init() joins whatever
            # cluster RAY_ADDRESS or /tmp/ray/ray_current_cluster names (another user's Ray on a
            # shared machine) and then refuses num_cpus.
            with _loopback_only():
                ray.init(address="local", num_cpus=num_cpus, _node_ip_address="127.0.0.1", **kw)
    except Exception as e:  # ray raises ConnectionError/RuntimeError/ValueError
        where = f"address {address!r}" if address else "a local Ray instance"
        raise RayError(f"--ray-address: cannot join {where} ({type(e).__name__}: {e})"
                       if address else f"cannot start {where} ({type(e).__name__}: {e})") from None
    return True


def _check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """Fail fast on an address nothing listens on: ``ray.init`` would retry for minutes."""
    hostport = address.split("://")[-1].split("/")[0]
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit():  # "auto", "local", a bare host: let Ray resolve it
        return
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
            pass
    except OSError as e:
        raise RayError(f"--ray-address {address}: nothing answers there "
                       f"({e.strerror or type(e).__name__}); start the cluster (`ray start "
                       f"--head`) or check the address") from None


@contextlib.contextmanager
def _loopback_only():
    """Make a local Ray bind to loopback only.

    On Linux Ray maps ``_node_ip_address="127.0.0.1"`` to the routable IP and its GCS, raylet
    and workers listen on all interfaces (``::``) -- with token auth disabled that lets anyone
    on the network submit tasks. With ``ray_constants.ENABLE_RAY_CLUSTER`` off (what Ray does on
    macOS/Windows) it keeps 127.0.0.1 and every socket is on loopback (checked by
    tests/reliability/test_rel_faults.py::test_local_ray_binds_loopback_with_dashboard_off).
    """
    try:
        import ray._private.ray_constants as rc
    except ImportError:  # a Ray without that module: the test above tells
        yield
        return
    prev = getattr(rc, "ENABLE_RAY_CLUSTER", True)
    rc.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        rc.ENABLE_RAY_CLUSTER = prev


def shutdown_ray() -> None:
    import ray

    ray.shutdown()


# ---- the evaluation task ---------------------------------------------------------------------

_EVALUATORS: dict[str, Any] = {}  # per worker process: evaluator spec json -> Evaluator


class EvaluationTimeout(TimeoutError):
    """An evaluation ran longer than ``evaluator.timeout_s`` (raised inside the worker)."""


@contextlib.contextmanager
def _time_limit(timeout_s: float | None):
    """Raise :class:`EvaluationTimeout` in this (main) thread after ``timeout_s`` seconds.

    The clock starts when the evaluation starts, so worker start-up and queueing do not count.
    A hang in native code that never returns to Python is caught by the driver's backstop.
    """
    import signal
    import threading

    if not timeout_s or threading.current_thread() is not threading.main_thread():
        yield
        return

    def _alarm(signum: int, frame: Any) -> None:
        raise EvaluationTimeout(f"timeout: the evaluation ran longer than {timeout_s:g} s "
                                f"(evaluator.timeout_s) and was stopped")

    old = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, float(timeout_s))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def evaluate_task(spec: Mapping[str, Any], arch_json: str, seed: int, budget: int,
                  threads: int, timeout_s: float | None = None, checkpoint: bytes | None = None,
                  resumable: bool = False, val_fraction: float = 1.0) -> dict[str, Any]:
    """Run one evaluation (body of the Ray task).

    ``spec`` = ``{"name", "backbone" (BackboneSpec dict), "options"}``. Returns the score,
    where it ran and its CPU seconds. Evaluators are built once per worker process and reused.
    ``resumable``: a rung of a budget ladder; an evaluator with ``evaluate_resumable`` trains
    on from ``checkpoint`` (None = from the start) and the result carries the checkpoint at
    ``budget`` (bytes, so it comes back to the driver from any node). Other evaluators
    evaluate ``budget`` from scratch and return no checkpoint. ``val_fraction < 1``: a lower
    rung scored on part of the held-out data (resumable evaluators only).
    """
    import torch

    torch.set_num_threads(max(1, int(threads)))
    key = json.dumps(spec, sort_keys=True)
    ev = _EVALUATORS.get(key)
    if ev is None:
        ev = create_evaluator(spec["name"], BackboneSpec.from_dict(spec["backbone"]),
                              spec.get("options") or {})
        _EVALUATORS[key] = ev
    arch = ArchConfig.from_json(arch_json)
    resume = getattr(ev, "evaluate_resumable", None) if resumable else None
    t0, c0 = time.perf_counter(), time.process_time()
    new_checkpoint = None
    with _time_limit(timeout_s):
        if callable(resume):
            kw = {"val_fraction": float(val_fraction)} if val_fraction < 1 else {}
            res, new_checkpoint = resume(arch, seed=int(seed), budget=int(budget),
                                         checkpoint=checkpoint, **kw)
        else:
            res = ev.evaluate(arch, seed=int(seed), budget=int(budget))
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    node_id = ""
    try:
        import ray

        node_id = ray.get_runtime_context().get_node_id()
    except Exception:
        pass
    extras = {}
    for k, v in dict(res.extras or {}).items():
        try:
            fv = float(v)
        except (TypeError, ValueError):
            continue
        if math.isfinite(fv):
            extras[str(k)] = fv
    out = {"value": float(res.value), "extras": extras,
           "wall_time_s": float(res.wall_time_s or wall), "cpu_s": cpu, "node_id": node_id,
           "host": socket.gethostname(), "pid": os.getpid()}
    if new_checkpoint is not None:
        out["checkpoint"] = bytes(new_checkpoint)
    return out


_REMOTE: Any = None


def remote_evaluate() -> Any:
    """``evaluate_task`` as a Ray remote function (created once per driver process)."""
    global _REMOTE
    if _REMOTE is None:
        import ray

        _REMOTE = ray.remote(evaluate_task)
    return _REMOTE


def failure_reason(exc: BaseException) -> str:
    """One line saying why an evaluation failed (the evaluator's own exception if it raised)."""
    import ray.exceptions as rex

    if isinstance(exc, rex.RayTaskError):
        cause = getattr(exc, "cause", None)
        if isinstance(cause, EvaluationTimeout):
            return str(cause)
        if cause is not None and not isinstance(cause, rex.RayTaskError):
            return f"evaluator raised {type(cause).__name__}: {_one_line(str(cause))}"
        return f"evaluator raised: {_one_line(str(exc).splitlines()[-1] if str(exc) else '')}"
    if isinstance(exc, (rex.WorkerCrashedError, getattr(rex, "NodeDiedError", rex.WorkerCrashedError))):
        return f"worker died ({type(exc).__name__}) after all retries"
    if isinstance(exc, rex.TaskCancelledError):
        return "cancelled"
    return f"{type(exc).__name__}: {_one_line(str(exc))}"


def _one_line(s: str, limit: int = 300) -> str:
    s = " ".join(s.split())
    return s if len(s) <= limit else s[: limit - 3] + "..."
