"""``roofline``: a handful of per-operator-class constants over FLOPs and bytes moved (private).

Each operator of a block (see :mod:`latency_models.features`) costs

    t_op = (compute^p + memory^p)^(1/p) + ms_per_op
    compute = gflop * ms_per_gflop[class]            (conv, linear, attention)
    memory  = mact * ms_per_mact[class] + mweight * ms_per_mweight

and a block adds ``ms_per_block`` (dispatch). ``p = 1`` adds compute and memory (a CPU that does
not overlap them; the model is then linear in its constants and is fitted by non-negative least
squares in relative error); a large ``p`` is the classic roofline ``max`` (an accelerator).

Fitting from scratch: NNLS (``p = 1``), then a log-space refinement. Few-shot calibration: start
from a prior (a shipped device profile or another device's fit) and fit the log-constants by
MAP, i.e. relative-error least squares plus a Gaussian penalty ``(log k - log k_prior)/prior_log_sd``,
so 5–20 measurements (blocks or whole networks) move the constants only as far as the data
demands.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from latency_models._blockwise import BlockwiseModel
from latency_models.errors import ModelFileError
from latency_models.features import COMPUTE_CLASSES, OpClass, op_table
from latency_models.measurements import NetworkRow
from search_space.geometry import BlockSignature

_COMPUTE = tuple(COMPUTE_CLASSES)
PARAMS: tuple[str, ...] = (
    tuple(f"{c.name.lower()}_ms_per_gflop" for c in _COMPUTE)
    + tuple(f"{c.name.lower()}_ms_per_mact" for c in OpClass)
    + ("ms_per_mweight", "ms_per_op", "ms_per_block"))
_N_CLS = len(OpClass)
_NC = len(_COMPUTE)
_I_ACT = _NC                 # first per-class activation constant
_I_W = _NC + _N_CLS          # weights, then per-op, then per-block
SCALE_LOG_SD = 3.0  # prior on the device-wide speed factor: e^3 = 20x either way


class _OpBatch:
    """The operators of many signatures, concatenated (``seg`` = signature index)."""

    def __init__(self, sigs: Sequence[BlockSignature]):
        tabs = [op_table(s) for s in sigs]
        self.n = len(sigs)
        self.seg = np.concatenate([np.full(t.n_ops, i) for i, t in enumerate(tabs)]) if tabs else np.zeros(0, int)

        def cat(a):
            return np.concatenate(a) if a else np.zeros(0)

        self.cls = cat([t.cls for t in tabs]).astype(int)
        self.gflop = cat([t.flops for t in tabs]) / 1e9
        self.mact = cat([t.act for t in tabs]) / 1e6
        self.mweight = cat([t.weights for t in tabs]) / 1e6
        self._lin: np.ndarray | None = None

    def linear_features(self) -> np.ndarray:
        """(n_sigs, len(PARAMS)) design matrix of the ``p = 1`` model."""
        if self._lin is not None:
            return self._lin
        f = np.zeros((self.n, len(PARAMS)))
        c = self.cls
        for j, cl in enumerate(_COMPUTE):
            m = c == cl
            f[:, j] = np.bincount(self.seg[m], self.gflop[m], self.n)
        for cl in OpClass:
            m = c == cl
            f[:, _I_ACT + int(cl)] = np.bincount(self.seg[m], self.mact[m], self.n)
        f[:, _I_W] = np.bincount(self.seg, self.mweight, self.n)
        f[:, _I_W + 1] = np.bincount(self.seg, None, self.n)
        f[:, _I_W + 2] = 1.0
        self._lin = f
        return f

    def times(self, k: np.ndarray, p: float) -> np.ndarray:
        """Per-signature ms for constants ``k`` (ordered as :data:`PARAMS`)."""
        if p == 1.0:
            return self.linear_features() @ k
        per_cls_flop = np.zeros(_N_CLS)
        per_cls_flop[list(_COMPUTE)] = k[:_NC]
        per_cls_act = k[_I_ACT:_I_ACT + _N_CLS]
        comp = self.gflop * per_cls_flop[self.cls]
        mem = self.mact * per_cls_act[self.cls] + self.mweight * k[_I_W]
        hi = np.maximum(comp, mem)
        safe = np.where(hi > 0, hi, 1.0)
        t = np.where(hi > 0, safe * ((comp / safe) ** p + (mem / safe) ** p) ** (1.0 / p), 0.0)
        return np.bincount(self.seg, t + k[_I_W + 1], self.n) + k[_I_W + 2]


class RooflineModel(BlockwiseModel):
    """Per-class efficiency constants; see the module docstring."""

    name = "roofline"

    def __init__(self, p: float = 1.0, prior: Mapping[str, float] | None = None,
                 prior_log_sd: float = 0.5, prior_p: float | None = None):
        super().__init__()
        self.p = float(p if prior_p is None else prior_p)
        self.k = np.zeros(len(PARAMS))
        self.prior = None if prior is None else np.array([float(prior.get(n, 0.0)) for n in PARAMS])
        self.prior_log_sd = float(prior_log_sd)

    @classmethod
    def calibrating(cls, prior_model: RooflineModel, prior_log_sd: float = 0.5) -> RooflineModel:
        """An unfitted model whose fit starts from (and is regularized toward) ``prior_model``."""
        return cls(p=prior_model.p, prior=prior_model.constants, prior_log_sd=prior_log_sd)

    @property
    def constants(self) -> dict[str, float]:
        return {n: float(v) for n, v in zip(PARAMS, self.k)}

    def set_constants(self, constants: Mapping[str, float], p: float | None = None) -> None:
        unknown = sorted(set(constants) - set(PARAMS))
        if unknown:
            raise ModelFileError(f"roofline constant {unknown[0]!r} is unknown (known: {', '.join(PARAMS)})")
        self.k = np.array([float(constants.get(n, 0.0)) for n in PARAMS])
        if p is not None:
            self.p = float(p)
        self._reset_cache()

    def _predict_sigs(self, sigs: Sequence[BlockSignature]) -> np.ndarray:
        return np.maximum(_OpBatch(sigs).times(self.k, self.p), 1e-9)

    def _spawn(self) -> RooflineModel:
        m = RooflineModel(self.p, None, self.prior_log_sd)
        m.prior = None if self.prior is None else self.prior.copy()
        return m

    # ---- fitting ----------------------------------------------------------------------------
    def _fit_core(self, sigs: list[BlockSignature], y_ms: np.ndarray,
                  nets: list[NetworkRow], net_ms: np.ndarray) -> bool:
        use_nets = not sigs
        if use_nets:
            # networks only: each network is a count-weighted sum of its blocks' signatures
            uniq: dict[BlockSignature, int] = {}
            rows = []
            for r in nets:
                cnt: dict[int, int] = {}
                for s in self.network_sigs(r):
                    j = uniq.setdefault(s, len(uniq))
                    cnt[j] = cnt.get(j, 0) + 1
                rows.append(cnt)
            batch = _OpBatch(list(uniq))
            counts = np.zeros((len(nets), len(uniq)))
            for i, cnt in enumerate(rows):
                for j, v in cnt.items():
                    counts[i, j] = v
            y = np.asarray(net_ms, float)
        else:
            batch = _OpBatch(sigs)
            counts = None
            y = np.asarray(y_ms, float)

        def predict(k: np.ndarray) -> np.ndarray:
            t = batch.times(k, self.p)
            return t if counts is None else counts @ t

        if self.prior is not None:
            self.k = self._fit_map(predict, y)
        else:
            f = batch.linear_features()
            if counts is not None:
                f = counts @ f
            self.k = self._fit_scratch(f, y, predict)
        return use_nets

    def _fit_scratch(self, f: np.ndarray, y: np.ndarray, predict) -> np.ndarray:
        from scipy.optimize import least_squares, nnls

        w = 1.0 / y
        scale = np.maximum(np.abs(f).max(0), 1e-12)
        k, _ = nnls(f * w[:, None] / scale, np.ones_like(y), maxiter=50 * f.shape[1])
        k = k / scale
        if k[-1] <= 0:
            k[-1] = 1e-3 * float(np.min(y))
        # refine in relative (log) error, which is what the accuracy targets measure
        x0 = np.maximum(k, 0.0)
        bound_lo = np.zeros_like(x0)
        bound_lo[-1] = 1e-9

        def res(kk: np.ndarray) -> np.ndarray:
            return np.log(np.maximum(predict(kk), 1e-12) / y)

        try:
            sol = least_squares(res, np.maximum(x0, bound_lo + 1e-15),
                                bounds=(bound_lo, np.full_like(x0, np.inf)),
                                x_scale=np.maximum(x0, 1e-6 * (x0.max() or 1.0)), max_nfev=200)
            if np.sum(sol.fun ** 2) <= np.sum(res(x0) ** 2):
                return sol.x
        except ValueError:
            pass
        return x0

    def _fit_map(self, predict, y: np.ndarray) -> np.ndarray:
        """MAP fit around the prior: one device-wide log scale ``s`` (weak prior, sd
        ``SCALE_LOG_SD``) plus per-constant log deviations ``d`` (sd ``prior_log_sd``):
        ``k = k_prior * exp(s + d)``. A few measurements mostly move ``s`` (a new device is
        mainly faster or slower); more data also reshapes the ratios."""
        from scipy.optimize import least_squares

        prior = self.prior
        assert prior is not None
        free = prior > 0
        nf = int(free.sum())

        def unpack(z: np.ndarray) -> np.ndarray:
            k = prior.copy()
            k[free] = prior[free] * np.exp(z[0] + z[1:])
            return k

        def res(z: np.ndarray) -> np.ndarray:
            pred = predict(unpack(z))
            return np.concatenate([np.log(np.maximum(pred, 1e-12) / y), [z[0] / SCALE_LOG_SD],
                                   z[1:] / self.prior_log_sd])

        z0 = np.zeros(nf + 1)
        z0[0] = float(np.median(np.log(y / np.maximum(predict(prior), 1e-12))))
        sol = least_squares(res, z0, max_nfev=400)
        return unpack(sol.x)

    # ---- persistence -------------------------------------------------------------------------
    def _state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        params: dict[str, Any] = {"p": self.p, "constants": self.constants,
                                  "prior_log_sd": self.prior_log_sd}
        if self.prior is not None:
            params["prior"] = {n: float(v) for n, v in zip(PARAMS, self.prior)}
        return params, {}

    def _set_state(self, params: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> None:
        try:
            self.set_constants(params["constants"], float(params.get("p", 1.0)))
        except (KeyError, TypeError, ValueError) as e:
            raise ModelFileError(f"roofline params: bad or missing constants ({e})") from None
        self.prior_log_sd = float(params.get("prior_log_sd", 0.5))
        pr = params.get("prior")
        self.prior = None if pr is None else np.array([float(pr.get(n, 0.0)) for n in PARAMS])
        if not np.all(np.isfinite(self.k)) or np.any(self.k < 0) or not math.isfinite(self.p):
            raise ModelFileError("roofline params: constants must be finite and >= 0")
