"""Predictor registry and loading of saved models / shipped device profiles (torch-free).

``create_model(name, **options)`` builds an unfitted predictor (``lut``, ``roofline``,
``regression``); ``load_latency_model(spec)`` returns a fitted one from a shipped device profile
name (``iphone14pm``), a profile/model JSON file, or a directory written by ``model.save()``.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import import_module
from pathlib import Path
from typing import Any

import numpy as np

from common.errors import ConfigError
from common.loaders import load_json
from latency_models._blockwise import FORMAT, BlockwiseModel
from latency_models.base import LatencyModel
from latency_models.errors import ModelFileError

PROFILE_DIR = Path(__file__).resolve().parent / "profiles"

# name -> "module:Class" (imported lazily; one private module per predictor)
_PREDICTORS: dict[str, str] = {
    "lut": "latency_models._lut:LutModel",
    "roofline": "latency_models._roofline:RooflineModel",
    "regression": "latency_models._regression:RegressionModel",
}


def available() -> list[str]:
    """Names of the registered predictors."""
    return list(_PREDICTORS)


def predictor_class(name: str) -> Callable[..., BlockwiseModel]:
    try:
        target = _PREDICTORS[name]
    except KeyError:
        raise ModelFileError(f"unknown latency predictor {name!r} (known: {', '.join(_PREDICTORS)})") from None
    mod, cls = target.split(":")
    return getattr(import_module(mod), cls)


def create_model(name: str, **options: Any) -> LatencyModel:
    """An unfitted predictor ``name`` (see :func:`available`)."""
    return predictor_class(name)(**options)


def profile_names() -> list[str]:
    """Shipped device profiles (``latency_models/profiles/*.json``)."""
    return sorted(p.stem for p in PROFILE_DIR.glob("*.json") if not p.stem.startswith("_"))


def _read_doc(path: Path) -> dict[str, Any]:
    try:
        doc = load_json(path)
    except ConfigError as e:
        raise ModelFileError(str(e)) from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ModelFileError(f"{path}: not a temponas latency model (key 'format' must be {FORMAT!r})")
    if "predictor" not in doc:
        raise ModelFileError(f"{path}: missing key 'predictor'")
    return doc


def load_from_doc(doc: dict[str, Any], arrays: dict[str, np.ndarray] | None = None,
                  where: str = "model") -> BlockwiseModel:
    try:
        cls = predictor_class(str(doc["predictor"]))
    except ModelFileError as e:
        raise ModelFileError(f"{where}: {e}") from None
    model = cls()
    try:
        model._load_doc(doc, arrays or {})
    except ModelFileError as e:
        raise ModelFileError(f"{where}: {e}") from None
    return model


def load_latency_model(spec: str | Path) -> LatencyModel:
    """A fitted latency model from ``spec``.

    ``spec`` is a shipped profile name (see :func:`profile_names`), a ``model.json``/profile
    JSON file, or a directory holding ``model.json`` (+ ``arrays.npz``) from ``model.save()``.
    The result satisfies :class:`~latency_models.base.LatencyModel` (``predict(arch,
    backbone=None) -> LatencyEstimate``, ``predict_many``, ``predict_mean_ms``, ``metadata`` …);
    it never imports torch.
    """
    s = str(spec)
    p = Path(s)
    if p.is_dir():
        f = p / "model.json"
        if not f.exists():
            raise ModelFileError(f"{p}: no model.json (expected a directory written by model.save())")
        arrays: dict[str, np.ndarray] = {}
        if (p / "arrays.npz").exists():
            with np.load(p / "arrays.npz", allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
        return load_from_doc(_read_doc(f), arrays, str(f))
    if p.suffix == ".json" and p.exists():
        return load_from_doc(_read_doc(p), None, str(p))
    f = PROFILE_DIR / f"{s}.json"
    if s and "/" not in s and f.exists():
        return load_from_doc(_read_doc(f), None, str(f))
    raise ModelFileError(f"latency model {s!r}: not a shipped device profile "
                         f"({', '.join(profile_names()) or 'none'}), a model directory or a JSON file")
