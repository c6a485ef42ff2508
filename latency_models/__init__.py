"""Latency models: probe sets, measurement backends, predictors and device profiles.

Torch-free at import. Entry points: :func:`load_latency_model` (shipped profile name or saved
model directory), :func:`create_model` (unfitted ``lut``/``roofline``/``regression``).
"""

from latency_models.base import LatencyEstimate, LatencyModel
from latency_models.registry import available, create_model, load_latency_model, profile_names

__all__ = ["LatencyEstimate", "LatencyModel", "available", "create_model", "load_latency_model",
           "profile_names"]
