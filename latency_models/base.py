"""The latency-model protocol every predictor implements (see DESIGN §2 and §4).

Torch-free: predicting a trial's latency never builds a model.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

from search_space.arch import ArchConfig
from search_space.backbone import BackboneSpec


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
    """Predicts whole-network latency from an :class:`ArchConfig`.

    ``backbone`` defaults to the preset named by ``arch.backbone``.
    """

    name: str

    @property
    def metadata(self) -> Mapping[str, object]:
        """device, backend, compute_units, precision, fitted_on, heldout accuracy, kind (prior/calibrated)."""
        ...

    def fit(self, measurements: object) -> LatencyModel: ...

    def predict(self, arch: ArchConfig, backbone: BackboneSpec | None = None) -> LatencyEstimate: ...

    def predict_many(self, archs: Sequence[ArchConfig],
                     backbone: BackboneSpec | None = None) -> list[LatencyEstimate]: ...

    def save(self, directory: str | Path) -> None: ...
