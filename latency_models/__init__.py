"""Latency models: probe sets, measurement backends, predictors and device profiles.

Torch-free at import. Entry points: :func:`load_latency_model` (shipped profile name or saved
model directory), :func:`create_model` (unfitted ``lut``/``roofline``/``regression``),
:func:`read_csv`/:func:`read_many` (measurement CSVs), :func:`probes` (what to measure) and
:func:`evaluate` (accuracy of a model on measurements it was not fitted on).

Modules: :mod:`~latency_models.base` (the :class:`LatencyModel` protocol),
:mod:`~latency_models.registry`, :mod:`~latency_models.measurements` (the CSV schema),
:mod:`~latency_models.probes`, :mod:`~latency_models.features` (per-operator FLOPs/bytes),
:mod:`~latency_models.composition` (block sum -> network), :mod:`~latency_models.accuracy`
(metrics, cross-validation folds), :mod:`~latency_models.report`, :mod:`~latency_models.errors`,
``backends.torch_cpu`` and ``backends.coreml_export`` (these two import torch/coremltools when
used). The predictors live in private modules (``_lut``, ``_roofline``, ``_regression`` on the
shared base ``_blockwise``) and are exported here.
"""

from latency_models._blockwise import BlockwiseModel
from latency_models._lut import LutModel
from latency_models._regression import RegressionModel
from latency_models._roofline import RooflineModel
from latency_models.accuracy import accuracy, accuracy_by_op, split_folds
from latency_models.base import LatencyEstimate, LatencyModel
from latency_models.composition import Composition, fit_composition
from latency_models.errors import MeasurementError, ModelFileError
from latency_models.measurements import (
    BlockRow,
    DeviceInfo,
    Measurements,
    NetworkRow,
    probe_id,
    read_csv,
    read_many,
)
from latency_models.probes import Probe, calibration_probes, probes, random_archs
from latency_models.registry import available, create_model, load_latency_model, profile_names
from latency_models.report import evaluate

__all__ = [
    "BlockRow", "BlockwiseModel", "Composition", "DeviceInfo", "LatencyEstimate", "LatencyModel",
    "LutModel", "MeasurementError", "Measurements", "ModelFileError", "NetworkRow", "Probe",
    "RegressionModel", "RooflineModel", "accuracy", "accuracy_by_op", "available",
    "calibration_probes", "create_model", "evaluate", "fit_composition", "load_latency_model",
    "probe_id", "probes", "profile_names", "random_archs", "read_csv", "read_many", "split_folds",
]
