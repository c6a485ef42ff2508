"""Accuracy metrics of latency predictions and the cross-validation folds (torch-free).

Used by the predictors' own cross-validation (``metadata["heldout"]``), by
:func:`latency_models.report.evaluate` and by ``benchmarks/latency_accuracy.py``, so every
number the project reports is computed the same way.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from common.stats import kendall, spearman
from search_space.geometry import BlockSignature


def split_folds(n: int, folds: int, seed: int) -> list[np.ndarray]:
    """``min(folds, n)`` disjoint index arrays covering ``range(n)`` (a seeded permutation,
    dealt round-robin)."""
    idx = np.random.default_rng(seed).permutation(n)
    return [idx[i::folds] for i in range(min(folds, n))]


def accuracy(pred: np.ndarray, meas: np.ndarray) -> dict[str, float]:
    """±5/±10 % hit rates, MAPE, RMSPE (%), Spearman/Kendall of predicted vs measured (n,)."""
    pred, meas = np.asarray(pred, float), np.asarray(meas, float)
    rel = (pred - meas) / meas
    out = {"n": len(meas),
           "within_5pct": float(np.mean(np.abs(rel) <= 0.05)) if len(meas) else math.nan,
           "within_10pct": float(np.mean(np.abs(rel) <= 0.10)) if len(meas) else math.nan,
           "mape_pct": 100 * float(np.mean(np.abs(rel))) if len(meas) else math.nan,
           "rmspe_pct": 100 * float(np.sqrt(np.mean(rel ** 2))) if len(meas) else math.nan}
    out["spearman"] = spearman(pred, meas)
    out["kendall"] = kendall(pred, meas)
    return out


def accuracy_by_op(sigs: Sequence[BlockSignature], pred: np.ndarray,
                   meas: np.ndarray) -> dict[str, Any]:
    """Per block type (``op_name``): count, median signed relative error (%) and MAPE (%)."""
    groups: dict[str, list[int]] = {}
    for i, s in enumerate(sigs):
        groups.setdefault(s.op_name, []).append(i)
    return {op: {"n": len(ix),
                 "median_rel_error_pct": 100 * float(np.median((pred[ix] - meas[ix]) / meas[ix])),
                 "mape_pct": 100 * float(np.mean(np.abs(pred[ix] - meas[ix]) / meas[ix]))}
            for op, ix in sorted(groups.items())}


__all__ = ["accuracy", "accuracy_by_op", "split_folds"]
