"""``regression``: features -> log latency (private).

``log t = log roofline(x) + w . phi(x) + b + trees(phi(x))``: a roofline fitted by NNLS gives the
physics; a ridge regression on standardized features ``phi`` (log FLOPs per class, log bytes per
class, log weights, op counts, T, heads, head dim, kernels, tokens per sequence, attention
scores, one-hot block type) learns the smooth part of what it misses, with its strength chosen
by closed-form leave-one-out error (few or uninformative features shrink it back to the
roofline); gradient-boosted trees on the ridge's residuals learn the rest (kernel efficiencies
that jump with shape, e.g. attention with 8-wide heads costing 3x the 16-wide ones on a CPU).
The trees need data: they are fitted from ``MIN_TREE_SIGNATURES`` distinct signatures on, and
are what calibration probes (``latency_models.probes.calibration_probes``) feed. Everything is
stored as JSON + ``.npz`` arrays.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from latency_models._blockwise import BlockwiseModel
from latency_models._roofline import RooflineModel
from latency_models._trees import TREE_ARRAYS, BoostedTrees
from latency_models.errors import ModelFileError
from latency_models.features import COMPUTE_CLASSES, OpClass, op_table
from latency_models.measurements import NetworkRow
from search_space.arch import TemporalKind
from search_space.geometry import BlockOp, BlockSignature

OP_NAMES: tuple[str, ...] = tuple(
    [o.value for o in BlockOp if o is not BlockOp.TEMPORAL]
    + [f"temporal:{k.value}" for k in TemporalKind if k is not TemporalKind.NONE])
ALPHAS = np.logspace(-3, 3, 25)
MIN_TREE_SIGNATURES = 40
TREES = {"n_trees": 2000, "depth": 4, "learning_rate": 0.05, "subsample": 0.8, "min_leaf": 3}


def feature_names() -> list[str]:
    names = [f"log_{c.name.lower()}_gflop" for c in COMPUTE_CLASSES]
    names += [f"log_{c.name.lower()}_mact" for c in OpClass]
    names += ["log_mweight", "log_n_ops", "log_frames", "log_heads", "kernel_t", "kernel_s",
              "log_seq_tokens", "log_channels", "log_hw", "log_head_dim", "log_sequences",
              "log_mflop", "log_kact", "log_kscores"]
    return names + [f"op={o}" for o in OP_NAMES]


def features(sig: BlockSignature) -> np.ndarray:
    t = op_table(sig)
    f = []
    for c in COMPUTE_CLASSES:
        f.append(np.log1p(t.flops[t.cls == c].sum() / 1e6))
    for c in OpClass:
        f.append(np.log1p(t.act[t.cls == c].sum() / 1e3))
    f.append(np.log1p(t.weights.sum() / 1e3))
    f.append(np.log1p(t.n_ops))
    attn = sig.op is BlockOp.TEMPORAL and sig.kind.is_attention
    seq = (sig.frames * sig.height * sig.width if sig.kind.is_3d else sig.frames) \
        if attn else sig.height * sig.width
    seqs = (sig.batch if sig.kind.is_3d else sig.batch * sig.height * sig.width) if attn \
        else sig.images
    head_dim = sig.in_channels / sig.heads if sig.heads else 0.0
    scores = seqs * sig.heads * seq * seq if attn else 0.0
    f += [np.log(sig.frames), np.log1p(sig.heads), sig.kernel_t, sig.kernel_s, np.log(seq),
          np.log1p(sig.in_channels + sig.skip_channels), np.log(sig.height * sig.width),
          np.log1p(head_dim), np.log(seqs), np.log1p(t.flops.sum() / 1e6),
          np.log1p(t.act.sum() / 1e3), np.log1p(scores / 1e3)]
    f += [1.0 if sig.op_name == o else 0.0 for o in OP_NAMES]
    return np.asarray(f, dtype=float)


class RegressionModel(BlockwiseModel):
    """Roofline times a ridge-regression correction in log space; see the module docstring."""

    name = "regression"

    def __init__(self, alphas: Sequence[float] | None = None) -> None:
        super().__init__()
        self.base = RooflineModel()
        self.alphas = np.asarray(ALPHAS if alphas is None else alphas, float)
        self.mu = np.zeros(len(feature_names()))
        self.sd = np.ones(len(feature_names()))
        self.w = np.zeros(len(feature_names()))
        self.b = 0.0
        self.alpha = 0.0
        self.trees = BoostedTrees(**TREES)

    def _design(self, sigs: Sequence[BlockSignature]) -> np.ndarray:
        return np.stack([features(s) for s in sigs]) if sigs else np.zeros((0, len(self.w)))

    def _predict_sigs(self, sigs: Sequence[BlockSignature]) -> np.ndarray:
        base = self.base.block_ms(list(sigs))
        x = self._design(sigs)
        z = (x - self.mu) / self.sd
        return base * np.exp(np.clip(z @ self.w + self.b + self.trees.predict(x), -5, 5))

    def _fit_core(self, sigs: list[BlockSignature], y_ms: np.ndarray,
                  nets: list[NetworkRow], net_ms: np.ndarray) -> bool:
        if not sigs:
            raise ModelFileError("regression: needs block measurements (scope=block rows)")
        self.base = RooflineModel()
        self.base._fit_core(sigs, y_ms, [], np.zeros(0))
        self.base._reset_cache()
        r = np.log(np.asarray(y_ms, float) / self.base.block_ms(sigs))
        x = self._design(sigs)
        self.mu = x.mean(0)
        sd = x.std(0)
        self.sd = np.where(sd > 1e-12, sd, 1.0)
        z = (x - self.mu) / self.sd
        self.b = float(r.mean())
        rc = r - self.b
        # closed-form leave-one-out error of ridge for each alpha (SVD of z)
        u, s, vt = np.linalg.svd(z, full_matrices=False)
        uty = u.T @ rc
        best = (np.inf, 0.0, np.zeros(z.shape[1]))
        for a in self.alphas:
            d = s / (s ** 2 + a)
            w = vt.T @ (d * uty)
            h = np.einsum("ij,j,ij->i", u, s * d, u)  # diagonal of the hat matrix
            # robust LOO criterion: a one-of-a-kind block (h ~ 1) cannot be predicted by any
            # alpha and must not force the correction off for all others
            e = np.abs((rc - z @ w) / np.maximum(1 - h - 1.0 / len(rc), 1e-6))
            loo = float(np.mean(np.minimum(e, 0.5)))
            if loo < best[0]:
                best = (loo, float(a), w)
        self.alpha, self.w = best[1], best[2]
        self.trees = BoostedTrees(**TREES)
        if len(sigs) >= MIN_TREE_SIGNATURES:
            self.trees.fit(x, rc - z @ self.w)
        return False

    def _fit_metadata(self) -> dict[str, Any]:
        return {"ridge_alpha": self.alpha, "ridge_correction_rms": float(np.sqrt(np.mean(self.w ** 2))),
                "trees": self.trees.n_trees if self.trees.fitted else 0}

    def _spawn(self) -> RegressionModel:
        return RegressionModel(self.alphas)

    def _state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        base, _ = self.base._state()
        tree_params, tree_arrays = self.trees.state()
        return ({"base": base, "features": feature_names(), "intercept": self.b,
                 "alpha": self.alpha, "trees": tree_params},
                {"mu": self.mu, "sd": self.sd, "w": self.w, "alphas": self.alphas,
                 **{f"tree_{k}": v for k, v in tree_arrays.items()}})

    def _set_state(self, params: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> None:
        if list(params.get("features") or []) != feature_names():
            raise ModelFileError("regression: the saved feature list differs from this temponas "
                                 "version's; refit the model")
        try:
            self.mu, self.sd, self.w = (np.asarray(arrays[k], float) for k in ("mu", "sd", "w"))
        except KeyError as e:
            raise ModelFileError(f"regression: arrays.npz lacks {e.args[0]!r}") from None
        self.alphas = np.asarray(arrays.get("alphas", ALPHAS), float)
        self.b = float(params.get("intercept", 0.0))
        self.alpha = float(params.get("alpha", 0.0))
        self.trees = BoostedTrees.from_state(
            params.get("trees") or TREES,
            {k: arrays[f"tree_{k}"] for k in TREE_ARRAYS if f"tree_{k}" in arrays})
        self.base = RooflineModel()
        self.base._set_state(params.get("base") or {"constants": {}}, {})
