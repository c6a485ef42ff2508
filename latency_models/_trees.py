"""Gradient-boosted regression trees as plain arrays (private).

Fitted with scikit-learn's ``GradientBoostingRegressor`` and exported to flat numpy arrays
(``feature``, ``threshold``, ``left``, ``right``, ``value`` of every node, trees concatenated;
``roots`` gives each tree's first node), so that a model saves as ``.npz`` (never pickle) and
predicts with numpy alone. ``predict`` walks all trees for all rows at once: ``depth`` vectorized
steps per tree.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

TREE_ARRAYS = ("feature", "threshold", "left", "right", "value", "roots")


class BoostedTrees:
    """``f(x) = init + lr * sum_t tree_t(x)`` for ``x`` of shape ``(n, d)``."""

    def __init__(self, n_trees: int = 300, depth: int = 3, learning_rate: float = 0.05,
                 subsample: float = 0.8, min_leaf: int = 3, seed: int = 0):
        self.n_trees, self.depth, self.learning_rate = n_trees, depth, learning_rate
        self.subsample, self.min_leaf, self.seed = subsample, min_leaf, seed
        self.init = 0.0
        self.arrays: dict[str, np.ndarray] = {}

    @property
    def fitted(self) -> bool:
        return bool(self.arrays)

    def fit(self, x: np.ndarray, y: np.ndarray) -> BoostedTrees:
        """Least-squares boosting of ``y`` (n,) on ``x`` (n, d)."""
        from sklearn.ensemble import GradientBoostingRegressor

        gbr = GradientBoostingRegressor(n_estimators=self.n_trees, max_depth=self.depth,
                                        learning_rate=self.learning_rate, subsample=self.subsample,
                                        min_samples_leaf=self.min_leaf, random_state=self.seed)
        gbr.fit(x, y)
        self.init = float(np.ravel(gbr.init_.predict(x[:1]))[0])
        feats, thr, left, right, val, roots = [], [], [], [], [], []
        off = 0
        for est in gbr.estimators_[:, 0]:
            t = est.tree_
            roots.append(off)
            leaf = t.children_left < 0
            feats.append(np.where(leaf, 0, t.feature))
            thr.append(np.where(leaf, 0.0, t.threshold))
            left.append(np.where(leaf, np.arange(t.node_count), t.children_left) + off)
            right.append(np.where(leaf, np.arange(t.node_count), t.children_right) + off)
            val.append(t.value[:, 0, 0] * self.learning_rate)
            off += t.node_count
        self.arrays = {"feature": np.concatenate(feats).astype(np.int32),
                       "threshold": np.concatenate(thr).astype(np.float64),
                       "left": np.concatenate(left).astype(np.int32),
                       "right": np.concatenate(right).astype(np.int32),
                       "value": np.concatenate(val).astype(np.float64),
                       "roots": np.asarray(roots, np.int32)}
        return self

    def predict(self, x: np.ndarray) -> np.ndarray:
        """``(n, d) -> (n,)``; zeros when unfitted."""
        x = np.asarray(x, float)
        if not self.fitted:
            return np.zeros(len(x))
        a = self.arrays
        node = np.repeat(a["roots"][None, :], len(x), axis=0)  # (n, trees)
        rows = np.arange(len(x))[:, None]
        for _ in range(self.depth + 1):
            go_left = x[rows, a["feature"][node]] <= a["threshold"][node]
            node = np.where(go_left, a["left"][node], a["right"][node])
        return self.init + a["value"][node].sum(axis=1)

    # ---- persistence ------------------------------------------------------------------------
    def state(self) -> tuple[dict, dict[str, np.ndarray]]:
        params = {"n_trees": self.n_trees, "depth": self.depth,
                  "learning_rate": self.learning_rate, "subsample": self.subsample,
                  "min_leaf": self.min_leaf, "seed": self.seed, "init": self.init}
        return params, dict(self.arrays)

    @classmethod
    def from_state(cls, params: Mapping, arrays: Mapping[str, np.ndarray]) -> BoostedTrees:
        t = cls(int(params.get("n_trees", 0)), int(params.get("depth", 3)),
                float(params.get("learning_rate", 0.05)), float(params.get("subsample", 1.0)),
                int(params.get("min_leaf", 1)), int(params.get("seed", 0)))
        t.init = float(params.get("init", 0.0))
        if all(k in arrays for k in TREE_ARRAYS):
            t.arrays = {k: np.asarray(arrays[k]) for k in TREE_ARRAYS}
        return t
