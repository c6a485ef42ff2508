"""Evaluators used only by benchmarks/overhead.py (plugged in as ``module:Class`` strings).

``ConstantEvaluator``: a trivial score (number of temporal blocks): measures pure driver cost.
``BusyEvaluator``: a fixed amount of CPU-bound work (``iterations`` of a pure-Python loop,
calibrated by the benchmark to ~1 s on an idle core): measures parallel speed-up.
"""

from __future__ import annotations

import time

from evaluators.base import Direction, EvalResult


class ConstantEvaluator:
    name = "constant"
    direction = Direction.MAXIMIZE

    def __init__(self, backbone, **options):
        self.backbone = backbone

    @property
    def config_key(self) -> str:
        return "constant-1"

    @property
    def resources(self):
        return {"num_cpus": 1.0}

    def evaluate(self, arch, *, seed: int = 0, budget: int = 0) -> EvalResult:
        return EvalResult(float(arch.num_temporal_blocks), {}, 0.0)


def spin(iterations: int) -> int:
    acc = 0
    for i in range(iterations):
        acc = (acc + i * i) % 1_000_003
    return acc


class BusyEvaluator:
    name = "busy"
    direction = Direction.MAXIMIZE

    def __init__(self, backbone, iterations: int = 10_000_000):
        self.backbone = backbone
        self.iterations = int(iterations)

    @property
    def config_key(self) -> str:
        return f"busy-{self.iterations}"

    @property
    def resources(self):
        return {"num_cpus": 1.0}

    def evaluate(self, arch, *, seed: int = 0, budget: int = 0) -> EvalResult:
        t0 = time.perf_counter()
        spin(self.iterations)
        return EvalResult(float(arch.num_temporal_blocks), {}, time.perf_counter() - t0)
