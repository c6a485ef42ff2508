"""The latency-model protocol every predictor implements (see DESIGN §2 and §4).

Torch-free: predicting a trial's latency never builds a model.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from latency_models.composition import Composition
from latency_models.measurements import Measurements
from search_space.arch import ArchConfig
from search_space.backbone import BackboneSpec
from search_space.geometry import BlockSignature
from search_space.space import SearchSpace


@dataclass(frozen=True)
class LatencyEstimate:
    """Predicted latency of one denoiser call, with an interval and a per-stage breakdown.

    ``low_ms``/``high_ms`` bound the prediction interval derived from held-out residuals;
    ``per_stage_ms`` maps stage id (``stem``, ``down0`` … ``head``) to milliseconds.
    """

    mean_ms: float
    low_ms: float
    high_ms: float
    per_stage_ms: Mapping[str, float] = field(default_factory=dict)

    @classmethod
    def _make(cls, mean_ms: float, low_ms: float, high_ms: float,
              per_stage_ms: Mapping[str, float]) -> LatencyEstimate:
        """Same object as ``cls(...)``, built without the frozen-dataclass ``__init__``
        (batched prediction creates ~10^5 of them per second)."""
        self = object.__new__(cls)
        self.__dict__.update(mean_ms=mean_ms, low_ms=low_ms, high_ms=high_ms,
                             per_stage_ms=per_stage_ms)
        return self


@runtime_checkable
class LatencyModel(Protocol):
    """Predicts whole-network latency from an :class:`ArchConfig` (torch-free).

    What the CLI, the search runner, reports and benchmarks use; every registered predictor
    and every shipped device profile satisfies it (``tests/latency_models/test_lat_contract.py``).
    ``backbone`` defaults to the preset named by ``arch.backbone``.
    """

    name: str

    @property
    def metadata(self) -> Mapping[str, object]:
        """device, backend, compute_units, precision, fitted_on, heldout accuracy, kind
        (prior/calibrated), predictor, composition, interval."""
        ...

    @property
    def composition(self) -> Composition:
        """The block-sum -> network correction in use (the identity when not fitted)."""
        ...

    def fit(self, measurements: Measurements, *, folds: int = 5, seed: int = 0,
            evaluate: bool = True, progress: bool = False) -> LatencyModel:
        """Fit on one device's measurements; with ``evaluate``, cross-validate (``folds``,
        ``seed``) for ``metadata["heldout"]`` and the interval. Returns ``self``."""
        ...

    def predict(self, arch: ArchConfig, backbone: BackboneSpec | None = None) -> LatencyEstimate: ...

    def predict_many(self, archs: Sequence[ArchConfig],
                     backbone: BackboneSpec | None = None) -> list[LatencyEstimate]: ...

    def predict_mean_ms(self, archs: Sequence[ArchConfig],
                        backbone: BackboneSpec | None = None) -> np.ndarray:
        """``(len(archs),)`` mean latencies (ms), without intervals or breakdown."""
        ...

    def block_ms(self, sigs: Sequence[BlockSignature]) -> np.ndarray:
        """``(len(sigs),)`` predicted latency (ms) of standalone blocks."""
        ...

    def prepare(self, space: SearchSpace) -> int:
        """Price every stage choice of ``space`` up front; returns how many were priced."""
        ...

    def set_metadata(self, **kw: object) -> None:
        """Add or replace metadata entries (e.g. ``calibrated_from``); saved with the model."""
        ...

    def save(self, directory: str | Path) -> None:
        """Write ``model.json`` (+ ``arrays.npz``) atomically; ``load_latency_model`` reads it."""
        ...
