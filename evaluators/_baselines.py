"""Cheap baselines every proxy must beat: parameter count and FLOPs of the full-size candidate.

Analytic (``search_space.flops``), torch-free, microseconds per call. Higher = "bigger
network"; as quality proxies they say "more temporal capacity is better".
"""

from __future__ import annotations

from collections.abc import Mapping

from evaluators._common import BuiltinEvaluator
from search_space.arch import ArchConfig


def _cost(backbone, arch: ArchConfig):
    from search_space.flops import network_cost  # lands with the foundation issue
    return network_cost(backbone, arch.task, arch)


class ParamsEvaluator(BuiltinEvaluator):
    """Total parameter count of the candidate (image backbone + temporal layers)."""

    name = "params"

    def _score(self, arch: ArchConfig, seed: int, budget: int) -> tuple[float, Mapping[str, float]]:
        c = _cost(self.backbone, arch)
        return float(c.params), {"flops": float(c.flops), "memory_mb": float(c.memory_mb)}


class FlopsEvaluator(BuiltinEvaluator):
    """FLOPs of one denoiser call of the candidate at the task's full size."""

    name = "flops"

    def _score(self, arch: ArchConfig, seed: int, budget: int) -> tuple[float, Mapping[str, float]]:
        c = _cost(self.backbone, arch)
        return float(c.flops), {"params": float(c.params), "memory_mb": float(c.memory_mb)}
