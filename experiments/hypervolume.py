"""Hypervolume of a set of points under minimization (exact in 2-D, Optuna's WFG beyond)."""

from __future__ import annotations

import numpy as np


def pareto_mask(points: np.ndarray) -> np.ndarray:
    """Boolean mask of the non-dominated rows of ``points`` (n, m), all objectives minimized.
    Duplicates of a non-dominated point are all kept."""
    pts = np.asarray(points, dtype=float)
    n = len(pts)
    mask = np.ones(n, dtype=bool)
    for i in range(n):
        if not mask[i]:
            continue
        dominated = np.all(pts <= pts[i], axis=1) & np.any(pts < pts[i], axis=1)
        if dominated.any():
            mask[i] = False
    return mask


def hypervolume(points: np.ndarray, ref: np.ndarray) -> float:
    """Volume dominated by ``points`` (n, m) and bounded by ``ref`` (m,), minimization."""
    pts = np.asarray(points, dtype=float).reshape(-1, len(ref))
    ref = np.asarray(ref, dtype=float)
    pts = pts[np.all(pts < ref, axis=1)]
    if len(pts) == 0:
        return 0.0
    if pts.shape[1] == 2:
        order = np.lexsort((pts[:, 1], pts[:, 0]))
        hv, best_y = 0.0, ref[1]
        for x, y in pts[order]:
            if y < best_y:
                hv += (ref[0] - x) * (best_y - y)
                best_y = y
        return float(hv)
    from optuna._hypervolume import compute_hypervolume

    return float(compute_hypervolume(pts, ref))


def hypervolume_history(points: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Hypervolume after each of the first 1..n points (n,), minimization (2-D incremental)."""
    pts = np.asarray(points, dtype=float).reshape(-1, len(ref))
    out = np.zeros(len(pts))
    front = np.empty((0, pts.shape[1]))
    for i, p in enumerate(pts):
        if not (np.all(front <= p, axis=1).any() if len(front) else False):
            front = np.vstack([front[~np.all(p <= front, axis=1)], p])
        out[i] = hypervolume(front, ref)
    return out
