"""Rank statistics with bootstrap intervals (proxy audits, predictor accuracy, benchmarks).

Non-finite values are ranked as +/- infinity rather than dropped, so a proxy that returns
``-inf`` for a degenerate network is ranked last, not ignored. A statistic of fewer than 3
points or of a constant vector is ``nan``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np


def _finite(x: Sequence[float]) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    return np.where(np.isfinite(a), a, np.where(a > 0, 1e300, -1e300))


def kendall(x: Sequence[float], y: Sequence[float]) -> float:
    """Kendall tau-b of ``x`` and ``y``."""
    from scipy.stats import kendalltau

    a, b = _finite(x), _finite(y)
    if len(a) < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(kendalltau(a, b).statistic)


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman rank correlation of ``x`` and ``y``."""
    from scipy.stats import spearmanr

    a, b = _finite(x), _finite(y)
    if len(a) < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(spearmanr(a, b).statistic)


def bootstrap_ci(x: Sequence[float], y: Sequence[float], stat: Callable, n: int, seed: int = 0,
                 level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of ``stat(x, y)`` over ``n`` resamples of the (x, y) pairs."""
    a, b = _finite(x), _finite(y)
    rng = np.random.default_rng(seed)
    vals = []
    for _ in range(n):
        idx = rng.integers(0, len(a), len(a))
        v = stat(a[idx], b[idx])
        if math.isfinite(v):
            vals.append(v)
    if not vals:
        return float("nan"), float("nan")
    lo, hi = np.quantile(vals, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(lo), float(hi)


def correlation(x: Sequence[float], y: Sequence[float], n_boot: int) -> dict[str, Any]:
    """Kendall and Spearman of ``x`` vs ``y`` with 95% bootstrap intervals."""
    return {"kendall": kendall(x, y), "kendall_ci": bootstrap_ci(x, y, kendall, n_boot),
            "spearman": spearman(x, y), "spearman_ci": bootstrap_ci(x, y, spearman, n_boot, seed=1)}
