"""Ray side of a search: starting/joining Ray and the evaluation task.

Ray is imported lazily (only a search needs it). A local Ray binds to loopback with its
dashboard off and token authentication on, with a per-run token, its session folder in a private
temporary directory removed at shutdown (:mod:`experiments.ray_access`); ``address`` joins an
existing cluster instead (probed first, so a wrong address fails in seconds), with the job's
runtime environment (:mod:`experiments.runtime_env`).

Errors that every further evaluation would hit too (the evaluator cannot be built on a worker,
its runtime environment cannot be set up, no node can grant its resources) stop the search
as :class:`SearchAborted` instead of failing trial after trial.
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
from experiments.ray_access import (
    RayAccessError,
    local_session,
    probe_gcs,
    remove_private_temp_dir,
)
from search_space.arch import ArchConfig
from search_space.backbone import BackboneSpec

_LOCAL_ENV = {"RAY_USAGE_STATS_ENABLED": "0"}


class RayError(TemponasError):
    """Ray could not be started or joined."""


class SearchAborted(TemponasError):
    """A running search cannot go on: every further evaluation would fail the same way."""


class EvaluatorUnavailable(SearchAborted):
    """The evaluator cannot be built on a Ray worker (e.g. its plug-in module is missing there)."""


def ensure_ray(address: str | None, num_cpus: int,
               runtime_env: Mapping[str, Any] | None = None) -> bool:
    """Start a local Ray (``num_cpus``) or join ``address``, with the job-level
    ``runtime_env``. True if this call started/joined it (so the caller shuts it down with
    :func:`shutdown_ray`); False if Ray was already initialized in this process (then
    ``runtime_env`` is not applied)."""
    for k, v in _LOCAL_ENV.items():
        os.environ.setdefault(k, v)
    if address:  # before anything else: a wrong address fails in seconds, in one line
        try:
            probe_gcs(address)
        except RayAccessError as e:
            raise RayError(str(e)) from None
    import ray

    if ray.is_initialized():
        return False
    kw: dict[str, Any] = dict(include_dashboard=False, log_to_driver=True, logging_level="warning",
                              configure_logging=True)
    if runtime_env:
        kw["runtime_env"] = dict(runtime_env)
    try:
        if address:
            host = address.split("://")[-1].rsplit(":", 1)[0]
            if host in ("127.0.0.1", "localhost"):
                # a cluster on this machine bound to loopback: without this Ray rewrites
                # 127.0.0.1 to the routable IP and cannot reach the GCS
                with loopback_only():
                    ray.init(address=address, **kw)
            else:
                ray.init(address=address, **kw)
        else:
            # address="local": always a NEW local instance. Without it ray.init() joins whatever
            # cluster RAY_ADDRESS or /tmp/ray/ray_current_cluster names (another user's Ray on a
            # shared machine) and then refuses num_cpus.
            with local_session() as temp_dir, loopback_only():
                ray.init(address="local", num_cpus=num_cpus, _node_ip_address="127.0.0.1",
                         _temp_dir=str(temp_dir), **kw)
    except Exception as e:  # ray raises ConnectionError/RuntimeError/ValueError
        where = f"address {address!r}" if address else "a local Ray instance"
        raise RayError(f"--ray-address: cannot join {where} ({type(e).__name__}: {e})"
                       if address else f"cannot start {where} ({type(e).__name__}: {e})") from None
    return True


@contextlib.contextmanager
def loopback_only():
    """Make a local Ray (or ``ray.cluster_utils.Cluster`` nodes started inside) bind to
    loopback only.

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
    """Disconnect (and stop a local Ray this process started; its temporary directory goes)."""
    import ray

    ray.shutdown()
    remove_private_temp_dir()


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
    (and ``weights``, safetensors bytes, when the evaluator kept them).
    """
    key = json.dumps(spec, sort_keys=True)
    ev = _EVALUATORS.get(key)
    if ev is None:
        try:
            ev = create_evaluator(spec["name"], BackboneSpec.from_dict(spec["backbone"]),
                                  spec.get("options") or {})
        except Exception as e:  # noqa: BLE001 - ImportError of a plug-in, a missing extra, ...
            node, host = _where()
            msg = _one_line(str(e) if isinstance(e, TemponasError) else f"{type(e).__name__}: {e}")
            raise EvaluatorUnavailable(
                f"{msg}, on Ray node {node[:12]} ({host}): the evaluator cannot be built on the "
                f"workers; ship its module (runtime_env, docs/clusters.md) or install it on "
                f"every node") from None
        _EVALUATORS[key] = ev
    import torch  # after the evaluator: a plug-in that cannot be built fails without it

    torch.set_num_threads(max(1, int(threads)))
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
    node_id, host = _where()
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
           "host": host, "pid": os.getpid()}
    if new_checkpoint is not None:
        out["checkpoint"] = bytes(new_checkpoint)
    weights = getattr(res, "weights", None)
    if isinstance(weights, bytes):  # kept weights travel with the result (any node)
        out["weights"] = weights
    return out


def _where() -> tuple[str, str]:
    """``(Ray node id, host name)`` of this process."""
    node_id = ""
    try:
        import ray

        node_id = ray.get_runtime_context().get_node_id() or ""
    except Exception:  # noqa: BLE001 - outside Ray
        pass
    return node_id, socket.gethostname()


def evaluate_task_gpu(spec: Mapping[str, Any], arch_json: str, seed: int, budget: int,
                      threads: int, timeout_s: float | None = None, checkpoint: bytes | None = None,
                      resumable: bool = False, val_fraction: float = 1.0) -> dict[str, Any]:
    """:func:`evaluate_task` for evaluations that hold a GPU (its own Ray function: those run
    in a fresh worker process each, see :func:`remote_evaluate`)."""
    return evaluate_task(spec, arch_json, seed, budget, threads, timeout_s, checkpoint,
                         resumable, val_fraction)


_REMOTE: dict[bool, Any] = {}


def remote_evaluate(gpu: bool = False) -> Any:
    """``evaluate_task`` as a Ray remote function (created once per driver process).

    ``gpu``: for tasks that reserve GPUs. Ray points ``CUDA_VISIBLE_DEVICES`` at the GPUs of
    each task, but a worker process keeps the CUDA context of its first task; such tasks
    therefore get a fresh worker each (``max_calls=1``, what Ray does for ``@ray.remote(
    num_gpus=...)``), which also returns every byte of GPU memory after the evaluation."""
    if gpu not in _REMOTE:
        import ray

        _REMOTE[gpu] = (ray.remote(max_calls=1)(evaluate_task_gpu) if gpu
                        else ray.remote(evaluate_task))
    return _REMOTE[gpu]


def fatal_cause(exc: BaseException) -> SearchAborted | None:
    """The :class:`SearchAborted` an evaluation's failure means for the whole search, if any:
    the evaluator could not be built on the worker, or Ray could not set up the runtime
    environment there."""
    import ray.exceptions as rex

    cause = getattr(exc, "cause", None)
    if isinstance(cause, SearchAborted):
        return cause
    if isinstance(exc, rex.RuntimeEnvSetupError):  # its last line says why (pip's error, ...)
        last = ([ln for ln in str(exc).splitlines() if ln.strip()] or [""])[-1]
        return SearchAborted(f"runtime_env: Ray could not set up the evaluations' runtime "
                             f"environment on a node: {_one_line(last, 300)}")
    return None


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
