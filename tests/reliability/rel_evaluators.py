"""User evaluator plug-ins for the fault tests, loaded the way a user's own evaluator is:
``evaluator: {name: "rel_evaluators:Faulty", options: {...}}`` (a ``module:Class`` string).

``Faulty`` scores a candidate by its real parameter count (``search_space.flops``) and
misbehaves on a *script*: evaluation attempt ``i`` (counted across all Ray workers through
``O_EXCL`` marker files in ``script_dir``) does ``plan[i]``:

* ``ok``     return the score
* ``raise``  raise ``RuntimeError``
* ``nan`` / ``inf``  return a non-finite score
* ``hang``   sleep ``hang_s`` seconds (past the per-trial timeout)
* ``stuck``  the same with SIGALRM blocked, like native code that never returns to Python
* ``die``    SIGKILL its own Ray worker process in the middle of the evaluation

Attempts past the end of ``plan`` are ``ok``. ``sleep_s`` slows every evaluation down (so a
test can kill a driver or a node while evaluations are in flight). Every attempt appends
``<index> <mode> <pid> <arch_id>`` to ``script_dir/attempts.log``.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from evaluators.base import Direction, EvalResult
from search_space.arch import ArchConfig
from search_space.backbone import BackboneSpec
from search_space.errors import ConfigError

MODES = ("ok", "raise", "nan", "inf", "hang", "stuck", "die")


class Faulty:
    name = "faulty"
    direction = Direction.MAXIMIZE

    def __init__(self, backbone: BackboneSpec, script_dir: str = "", plan: Sequence[str] = (),
                 sleep_s: float = 0.0, hang_s: float = 60.0,
                 resources: Mapping[str, float] | None = None):
        for i, m in enumerate(plan):
            if m not in MODES:
                raise ConfigError(f"plan[{i}]: {m!r} is not one of {', '.join(MODES)}")
        if plan and not script_dir:
            raise ConfigError("script_dir: required with a plan")
        self.backbone = backbone
        self.script_dir = script_dir
        self.plan = list(plan)
        self.sleep_s = float(sleep_s)
        self.hang_s = float(hang_s)
        self._resources = dict(resources or {"num_cpus": 1.0})

    @property
    def config_key(self) -> str:
        blob = json.dumps({"name": self.name, "backbone": self.backbone.to_dict()}, sort_keys=True)
        return "faulty-" + hashlib.sha256(blob.encode()).hexdigest()[:10]

    @property
    def resources(self) -> Mapping[str, float]:
        return self._resources

    def _claim(self) -> int:
        d = Path(self.script_dir)
        i = 0
        while True:
            try:
                os.close(os.open(d / f"attempt-{i:04d}", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
                return i
            except FileExistsError:
                i += 1

    def evaluate(self, arch: ArchConfig, *, seed: int = 0, budget: int = 0) -> EvalResult:
        from search_space.flops import network_cost

        t0 = time.perf_counter()
        mode = "ok"
        if self.script_dir:
            i = self._claim()
            mode = self.plan[i] if i < len(self.plan) else "ok"
            with open(Path(self.script_dir) / "attempts.log", "a") as f:
                f.write(f"{i} {mode} {os.getpid()} {arch.arch_id}\n")
        if self.sleep_s:
            time.sleep(self.sleep_s)
        if mode == "raise":
            raise RuntimeError(f"injected failure for {arch.arch_id}")
        if mode == "die":
            time.sleep(0.2)  # mid-evaluation
            os.kill(os.getpid(), signal.SIGKILL)
        if mode == "hang":
            time.sleep(self.hang_s)
        if mode == "stuck":
            signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGALRM])
            time.sleep(self.hang_s)
        if mode == "nan":
            return EvalResult(float("nan"), {}, time.perf_counter() - t0)
        if mode == "inf":
            return EvalResult(float("inf"), {}, time.perf_counter() - t0)
        cost = network_cost(self.backbone, arch.task, arch)
        return EvalResult(float(cost.params), {"flops": float(cost.flops)}, time.perf_counter() - t0)


def attempts(script_dir: str | Path) -> list[tuple[int, str, int, str]]:
    """The attempts log: (index, mode, worker pid, arch_id) per evaluation attempt."""
    p = Path(script_dir) / "attempts.log"
    if not p.exists():
        return []
    out = []
    for line in p.read_text().splitlines():
        i, mode, pid, aid = line.split()
        out.append((int(i), mode, int(pid), aid))
    return out
