"""Apple Neural Engine priors from public Core ML measurements (torch-free at import).

* :mod:`.fitset`: the fit set as data (published latencies, sources, device facts, recipes and
  the committed MIL features of every converted network);
* :mod:`.mil`: per-operator features of any converted Core ML program, in the block roofline's
  operator classes; :mod:`.recipes` / :mod:`.extract`: the one-time conversions;
* :mod:`.costmodel`: the cross-family cost model (fit, predict with intervals);
* :mod:`.validate`: leave-one-family-out / leave-one-chip-out / SD-excluded validation;
* :mod:`.priors`: the shipped device profiles built from the fitted model.
"""

from latency_models.ane.costmodel import CostModel, Hyper, fit
from latency_models.ane.fitset import FitSet, Row, load_fitset
from latency_models.ane.mil import MilOp, program_ops
from latency_models.ane.validate import validate

__all__ = ["CostModel", "FitSet", "Hyper", "MilOp", "Row", "fit", "load_fitset", "program_ops",
           "validate"]
