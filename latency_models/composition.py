"""The composition correction: from the sum of standalone block latencies to a network's.

``network_ms = alpha * sum(block_ms) + beta + gamma * n_temporal_blocks``, fitted on
whole-network measurements with its form chosen by leave-one-out relative error (identity
without them). Torch-free.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Composition:
    """``network_ms = alpha * sum(block_ms) + beta + gamma * n_temporal_blocks``.

    ``gamma`` prices what a temporal block costs inside a network beyond its standalone time
    (layout changes between neighbours, cache state); ``form`` says which terms were fitted.
    """

    alpha: float = 1.0
    beta: float = 0.0
    fitted_on: int = 0
    gamma: float = 0.0
    form: str = "identity"

    def to_dict(self) -> dict[str, Any]:
        return {"alpha": self.alpha, "beta": self.beta, "gamma": self.gamma, "form": self.form,
                "fitted_on": self.fitted_on}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Composition:
        """Inverse of :meth:`to_dict` (missing keys: the identity's values)."""
        return cls(float(d.get("alpha", 1.0)), float(d.get("beta", 0.0)), int(d.get("fitted_on", 0)),
                   float(d.get("gamma", 0.0)), str(d.get("form", "identity")))


#: fitted form -> columns of ``(raw, n_temporal, 1)`` it uses
FORMS = {"ratio": (0,), "affine": (0, 2), "affine+count": (0, 1, 2)}


def _solve_form(x: np.ndarray, y: np.ndarray, cols: tuple[int, ...]) -> np.ndarray:
    """Relative-error least squares of ``y ~ x[:, cols]`` (x columns: raw, n_temporal, 1)."""
    w = np.zeros(3)
    sol, *_ = np.linalg.lstsq(x[:, cols] / y[:, None], np.ones_like(y), rcond=None)
    w[list(cols)] = sol
    return w


def fit_composition(raw_ms: np.ndarray, measured_ms: np.ndarray,
                    n_temporal: np.ndarray | None = None) -> Composition:
    """Fit the composition correction on whole-network rows, choosing its form by
    leave-one-out relative error: ``ratio`` (alpha), ``affine`` (alpha, beta; >= 4 networks),
    ``affine+count`` (alpha, beta, gamma; >= 8 networks). Forms giving a non-positive alpha or
    prediction are rejected.

    ``raw_ms`` (n,): sums of block predictions; ``measured_ms`` (n,); ``n_temporal`` (n,).
    """
    raw = np.asarray(raw_ms, float)
    y = np.asarray(measured_ms, float)
    n = len(y)
    if n == 0:
        return Composition()
    nt = np.zeros(n) if n_temporal is None else np.asarray(n_temporal, float)
    x = np.stack([raw, nt, np.ones(n)], 1)
    cands = ["ratio"] + (["affine"] if n >= 4 else []) + (["affine+count"] if n >= 8 and np.ptp(nt) > 0 else [])
    best: tuple[float, str, np.ndarray] | None = None
    for form in cands:
        cols = FORMS[form]
        w = _solve_form(x, y, cols)
        if w[0] <= 0 or np.any(x @ w <= 0):
            continue
        if n >= 4:
            errs = []
            for i in range(n):
                keep = np.arange(n) != i
                wi = _solve_form(x[keep], y[keep], cols)
                errs.append(abs(x[i] @ wi / y[i] - 1))
            score = float(np.mean(errs))
        else:
            score = 0.0
        if best is None or score < best[0] - 1e-12:
            best = (score, form, w)
    if best is None:
        return Composition(1.0, 0.0, n, 0.0, "identity")
    _, form, w = best
    return Composition(float(w[0]), float(w[2]), n, float(w[1]), form)


__all__ = ["FORMS", "Composition", "fit_composition"]
