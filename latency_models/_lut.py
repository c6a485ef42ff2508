"""``lut``: a lookup table of measured block latencies (private).

Exact signatures return their measured latency (geometric mean over repeats) — the
ProxylessNAS/FBNet/SnapGen-V table. Signatures that were never measured fall back to a roofline
fitted on the same rows, and the model says how many table entries it holds
(``metadata["table_size"]``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from latency_models._blockwise import BlockwiseModel
from latency_models._roofline import RooflineModel
from latency_models.errors import ModelFileError
from latency_models.measurements import NetworkRow
from search_space.geometry import BlockSignature


class LutModel(BlockwiseModel):
    """Measured latency (geometric mean of the repeats) per exact signature; roofline fallback
    for unseen signatures."""

    name = "lut"

    def __init__(self) -> None:
        super().__init__()
        self.table: dict[BlockSignature, float] = {}
        self.fallback = RooflineModel()

    def _predict_sigs(self, sigs: Sequence[BlockSignature]) -> np.ndarray:
        out = np.empty(len(sigs))
        missing = [i for i, s in enumerate(sigs) if s not in self.table]
        for i, s in enumerate(sigs):
            if s in self.table:
                out[i] = self.table[s]
        if missing:
            out[missing] = self.fallback.block_ms([sigs[i] for i in missing])
        return out

    def _fit_core(self, sigs: list[BlockSignature], y_ms: np.ndarray,
                  nets: list[NetworkRow], net_ms: np.ndarray) -> bool:
        if not sigs:
            raise ModelFileError("lut: needs block measurements (scope=block rows)")
        self.table = {s: float(v) for s, v in zip(sigs, y_ms)}
        self.fallback = RooflineModel()
        self.fallback._fit_core(sigs, y_ms, [], np.zeros(0))
        self.fallback._reset_cache()
        return False

    def _fit_metadata(self) -> dict[str, Any]:
        return {"table_size": len(self.table)}

    def _spawn(self) -> LutModel:
        return LutModel()

    def _state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        sigs = list(self.table)
        fb, _ = self.fallback._state()
        return ({"signatures": [s.to_dict() for s in sigs], "fallback": fb},
                {"latency_ms": np.array([self.table[s] for s in sigs], dtype=np.float64)})

    def _set_state(self, params: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> None:
        raw = params.get("signatures") or []
        lat = arrays.get("latency_ms", np.zeros(0))
        if len(raw) != len(lat):
            raise ModelFileError(f"lut: {len(raw)} signatures but {len(lat)} latencies in arrays.npz")
        self.table = {BlockSignature.from_dict(d, f"params.signatures[{i}]"): float(v)
                      for i, (d, v) in enumerate(zip(raw, lat))}
        self.fallback = RooflineModel()
        self.fallback._set_state(params.get("fallback") or {"constants": {}}, {})


__all__ = ["LutModel"]
