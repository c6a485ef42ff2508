"""The block-sum predictor base (private; public as :class:`latency_models.BlockwiseModel`).

A predictor only has to say how long one block signature takes (``_predict_sigs``) and how to
fit that from measurements (``_fit_core``). This base class turns it into a network model:

* network latency = ``alpha * sum(block predictions) + beta [+ gamma * n_temporal_blocks]``
  (the composition correction, :mod:`latency_models.composition`);
* a prediction interval from held-out (cross-validated) log residuals
  (:mod:`latency_models.accuracy` computes the held-out metrics);
* a per-stage breakdown (stage ids ``stem``, ``down0`` … ``head``);
* fast prediction: per (backbone, task) a :class:`~latency_models._price_table.PriceTable`
  sums the image blocks once per stage and prices each ``(stage, StageChoice)`` once, so
  predicting an arch is a few dict look-ups;
* save/load as ``model.json`` + ``arrays.npz`` (no pickle).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from common.fsio import atomic_path, atomic_write_text, jsonable
from latency_models._price_table import PriceTable
from latency_models.accuracy import accuracy, accuracy_by_op, split_folds
from latency_models.base import LatencyEstimate
from latency_models.composition import Composition, fit_composition
from latency_models.measurements import Measurements, NetworkRow
from search_space.arch import NO_TEMPORAL, ArchConfig, StageChoice
from search_space.backbone import BackboneSpec
from search_space.errors import TemponasError
from search_space.geometry import BlockSignature, network_blocks
from search_space.presets import get_backbone
from search_space.space import SearchSpace

FORMAT = "temponas-latency-model"
FORMAT_VERSION = 1


class BlockwiseModel:
    """Base of ``lut``/``roofline``/``regression``: see the module docstring."""

    name = "blockwise"

    def __init__(self) -> None:
        self._composition = Composition()
        self.interval_log = (math.log(0.9), math.log(1.1))
        self.interval_source = "default ±10% (not estimated)"
        self._meta: dict[str, Any] = {"kind": "unfitted"}
        self._sig_ms: dict[BlockSignature, float] = {}
        self._tables: dict[Any, PriceTable] = {}
        self._tables_by_id: dict[tuple[int, int], tuple[Any, Any, str, PriceTable]] = {}
        self._last: tuple[Any, Any, str, PriceTable] | None = None

    @property
    def composition(self) -> Composition:
        return self._composition

    @composition.setter
    def composition(self, comp: Composition) -> None:
        self._composition = comp
        for tab in getattr(self, "_tables", {}).values():
            tab.rescale(comp)

    # ---- to implement -----------------------------------------------------------------------
    def _predict_sigs(self, sigs: Sequence[BlockSignature]) -> np.ndarray:
        raise NotImplementedError

    def _fit_core(self, sigs: list[BlockSignature], y_ms: np.ndarray,
                  nets: list[NetworkRow], net_ms: np.ndarray) -> bool:
        """Fit the block predictor. Return True if it was fitted on network rows (then the
        composition correction stays the identity)."""
        raise NotImplementedError

    def _spawn(self) -> BlockwiseModel:
        """A fresh unfitted model with the same hyper-parameters (and prior)."""
        raise NotImplementedError

    def _fit_metadata(self) -> dict[str, Any]:
        """Predictor-specific metadata entries of a fit (e.g. the lookup table's size)."""
        return {}

    def _state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """JSON-able parameters and numpy arrays to save."""
        raise NotImplementedError

    def _set_state(self, params: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> None:
        raise NotImplementedError

    # ---- block level ----------------------------------------------------------------------------
    def block_ms(self, sigs: Sequence[BlockSignature]) -> np.ndarray:
        """Predicted latency (ms) of each block signature (memoized)."""
        todo = [s for s in dict.fromkeys(sigs) if s not in self._sig_ms]
        if todo:
            for s, t in zip(todo, self._predict_sigs(todo)):
                self._sig_ms[s] = float(t)
        return np.array([self._sig_ms[s] for s in sigs], dtype=float)

    def _reset_cache(self) -> None:
        self._sig_ms.clear()
        self._tables.clear()
        self._tables_by_id.clear()
        self._last = None

    # ---- network level ------------------------------------------------------------------------
    def _table(self, arch: ArchConfig, backbone: BackboneSpec | None) -> PriceTable:
        last = self._last
        if last is not None and last[0] is backbone and last[1] is arch.task and (
                backbone is not None or last[2] == arch.backbone):
            return last[3]
        # identity-keyed (holding the objects keeps their ids unique), then value-keyed
        key_id = (id(backbone), id(arch.task))
        ent = self._tables_by_id.get(key_id)
        if ent is not None and ent[0] is backbone and ent[1] is arch.task and (
                backbone is not None or ent[2] == arch.backbone):
            tab = ent[3]
        else:
            bb = get_backbone(arch.backbone) if backbone is None else backbone
            key = (bb, arch.task)  # by value: a preset name and its spec share one table
            tab = self._tables.get(key)
            if tab is None:
                tab = PriceTable(self.block_ms, bb, arch.task, self.composition)
                self._tables[key] = tab
            if len(self._tables_by_id) > 10_000:
                self._tables_by_id.clear()
            self._tables_by_id[key_id] = (backbone, arch.task, arch.backbone, tab)
        self._last = (backbone, arch.task, arch.backbone, tab)
        return tab

    def prepare(self, space: SearchSpace) -> int:
        """Price every (stage, choice) of a :class:`~search_space.space.SearchSpace` at once
        (one vectorized block prediction), so no later ``predict`` pays a first-time cost.
        Returns the number of (stage, choice) entries priced."""
        bb, task = space.backbone, space.task
        probe = ArchConfig(bb.name, task, tuple((s, NO_TEMPORAL) for s in bb.stage_ids))
        tab = self._table(probe, bb)
        todo: list[tuple[str, StageChoice, tuple[BlockSignature, ...]]] = []
        for sid in bb.stage_ids:
            for c in space.stage_choices(sid):
                if c.count and c not in tab.choice_ms[sid]:
                    todo.append((sid, c, tab.temporal_sigs(sid, c)))
        self.block_ms([sig for _, _, sigs in todo for sig in sigs])  # one batch, memoized
        for sid, c, sigs in todo:
            tab.choice_ms[sid][c] = float(np.sum(self.block_ms(list(sigs))))
        return len(todo)

    def raw_ms(self, arch: ArchConfig, backbone: BackboneSpec | None = None) -> float:
        """Sum of block predictions (before the composition correction)."""
        tab = self._table(arch, backbone)
        return tab.image_ms + sum(tab.raw_price(s, c) for s, c in arch.stages if c.count)

    def predict(self, arch: ArchConfig, backbone: BackboneSpec | None = None) -> LatencyEstimate:
        return self.predict_many((arch,), backbone)[0]

    @property
    def _lo_f(self) -> float:
        return math.exp(self.interval_log[0])

    @property
    def _hi_f(self) -> float:
        return math.exp(self.interval_log[1])

    def predict_many(self, archs: Sequence[ArchConfig],
                     backbone: BackboneSpec | None = None) -> list[LatencyEstimate]:
        """Estimates for many archs (tables and per-choice prices are shared).

        ``per_stage_ms`` holds ``stem``, every stage, ``head`` (and ``overhead`` when the
        composition correction has a constant term); it sums to ``mean_ms``.
        """
        lo_f, hi_f = self._lo_f, self._hi_f
        make = LatencyEstimate._make
        out = []
        append = out.append
        tab: PriceTable | None = None
        last_task, last_name = None, None
        for a in archs:
            if a.task is not last_task or a.backbone != last_name or tab is None:
                tab = self._table(a, backbone)
                last_task, last_name = a.task, a.backbone
            per = tab.base_per.copy()
            mean = tab.base_mean
            by_id = tab.by_id
            for s, c in a.stages:
                if c.count:
                    cache = by_id.get(s)
                    ent = cache.get(id(c)) if cache is not None else None
                    t = ent[1] if ent is not None and ent[0] is c else tab.price(s, c)
                    per[s] += t
                    mean += t
            if mean < 1e-6:
                mean = 1e-6
            append(make(mean, mean * lo_f, mean * hi_f, per))
        return out

    def predict_mean_ms(self, archs: Sequence[ArchConfig],
                        backbone: BackboneSpec | None = None) -> np.ndarray:
        """Vectorized mean latency (ms) of many archs, without the per-stage breakdown."""
        out = np.empty(len(archs))
        for i, a in enumerate(archs):
            tab = self._table(a, backbone)
            by_id = tab.by_id
            m = tab.base_mean
            for s, c in a.stages:
                if c.count:
                    cache = by_id.get(s)
                    ent = cache.get(id(c)) if cache is not None else None
                    m += ent[1] if ent is not None and ent[0] is c else tab.price(s, c)
            out[i] = m
        return np.maximum(out, 1e-6)

    def network_sigs(self, row: NetworkRow) -> list[BlockSignature]:
        return [b.sig for b in network_blocks(row.backbone, row.arch.task, row.arch)]

    def raw_network_ms(self, nets: Sequence[NetworkRow]) -> np.ndarray:
        return np.array([self.raw_ms(r.arch, r.backbone) for r in nets], dtype=float)

    # ---- fitting --------------------------------------------------------------------------------
    def fit(self, measurements: Measurements, *, folds: int = 5, seed: int = 0,
            evaluate: bool = True, progress: bool = False) -> BlockwiseModel:
        """Fit on ``measurements`` (one device); with ``evaluate``, cross-validate to get
        held-out accuracy and the prediction interval; ``progress``: a tqdm bar over the fits."""
        from tqdm import tqdm

        sigs, y = measurements.block_latencies()
        nets, ny = measurements.network_latencies()
        if not sigs and not nets:
            raise TemponasError(f"{measurements.source or 'measurements'}: nothing to fit on")
        with tqdm(total=1 + (2 * folds if evaluate else 0), desc=f"fit {self.name}", unit="fit",
                  disable=not progress, dynamic_ncols=True, leave=False) as bar:
            return self._fit(measurements, sigs, y, nets, ny, folds, seed, evaluate, bar.update)

    def _fit(self, measurements: Measurements, sigs, y, nets, ny, folds: int, seed: int,
             evaluate: bool, tick) -> BlockwiseModel:
        self._reset_cache()
        used_nets = self._fit_core(sigs, y, nets, ny)
        tick()
        self._reset_cache()
        self.composition = Composition()
        if nets and not used_nets:
            self.composition = fit_composition(self.raw_network_ms(nets), ny,
                                               np.array([r.arch.num_temporal_blocks for r in nets]))
        info = measurements.info
        self._meta = {"kind": "calibrated", "device": info.device, "backend": info.backend,
                      "compute_units": info.compute_units, "precision": info.precision,
                      "os": info.os, "chip": info.chip, "versions": info.versions,
                      "threads": info.threads,
                      "fitted_on": {"source": measurements.source, "blocks": len(sigs),
                                    "networks": len(nets)},
                      "noise_floor_pct": measurements.noise_floor_pct(),
                      **self._fit_metadata()}
        if evaluate:
            self._meta["heldout"] = self._cross_validate(measurements, sigs, y, nets, ny, used_nets,
                                                         folds, seed, tick)
        return self

    def _cross_validate(self, m: Measurements, sigs, y, nets, ny, used_nets: bool, folds: int,
                        seed: int, tick=lambda: None) -> dict[str, Any]:
        out: dict[str, Any] = {"folds": folds}
        log_res: np.ndarray | None = None
        if len(sigs) >= max(folds, 3) and not used_nets:
            pred = np.empty(len(sigs))
            for test in split_folds(len(sigs), folds, seed):
                test_set = {sigs[i] for i in test}
                keep = [i for i, r in enumerate(m.blocks) if r.sig not in test_set]
                sub = self._spawn()
                sub.fit(m.subset(blocks=keep, networks=[]), evaluate=False)
                pred[test] = sub.block_ms([sigs[i] for i in test])
                tick()
            out["block"] = accuracy(pred, y)
            log_res = np.log(y / pred)
            out["by_op"] = accuracy_by_op(sigs, pred, y)
        if len(nets) >= max(folds, 3):
            pred = np.empty(len(nets))
            ids = [r.arch.arch_id for r in nets]
            for test in split_folds(len(nets), folds, seed + 1):
                test_ids = {ids[i] for i in test}
                keep = [i for i, r in enumerate(m.networks) if r.arch.arch_id not in test_ids]
                sub = self._spawn()
                sub.fit(m.subset(networks=keep), evaluate=False)
                pred[test] = [sub.predict(nets[i].arch, nets[i].backbone).mean_ms for i in test]
                tick()
            out["network"] = accuracy(pred, ny)
            log_res = np.log(ny / pred)
            self.interval_source = f"5-95% of {len(nets)} cross-validated network residuals"
        elif log_res is not None:
            self.interval_source = (f"5-95% of {len(sigs)} cross-validated block residuals "
                                    f"(no whole-network rows)")
        if log_res is not None and len(log_res) >= 3:
            lo, hi = np.quantile(log_res, [0.05, 0.95])
            # the interval brackets the prediction: measured = predicted * exp(residual)
            self.interval_log = (float(min(lo, 0.0)), float(max(hi, 0.0)))
        out["interval_log"] = list(self.interval_log)
        return out

    # ---- metadata and persistence -------------------------------------------------------------
    @property
    def metadata(self) -> Mapping[str, object]:
        return {**self._meta, "predictor": self.name, "composition": self.composition.to_dict(),
                "interval": {"low_factor": math.exp(self.interval_log[0]),
                             "high_factor": math.exp(self.interval_log[1]),
                             "source": self.interval_source}}

    def set_metadata(self, **kw: Any) -> None:
        self._meta.update(kw)

    def to_json_dict(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        params, arrays = self._state()
        doc = {"format": FORMAT, "format_version": FORMAT_VERSION, "predictor": self.name,
               "metadata": dict(self._meta), "composition": self.composition.to_dict(),
               "interval": {"log_low": self.interval_log[0], "log_high": self.interval_log[1],
                            "source": self.interval_source},
               "params": params}
        return doc, arrays

    def save(self, directory: str | Path) -> None:
        """Write ``model.json`` (+ ``arrays.npz`` when the predictor has arrays) atomically."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        doc, arrays = self.to_json_dict()
        atomic_write_text(d / "model.json",
                          json.dumps(doc, indent=2, sort_keys=True, default=jsonable) + "\n")
        if arrays:
            with atomic_path(d / "arrays.npz") as tmp:
                np.savez(tmp, **arrays)

    def _load_doc(self, doc: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> None:
        self._meta = dict(doc.get("metadata") or {})
        self.composition = Composition.from_dict(doc.get("composition") or {})
        iv = doc.get("interval") or {}
        self.interval_log = (float(iv.get("log_low", math.log(0.9))),
                             float(iv.get("log_high", math.log(1.1))))
        self.interval_source = str(iv.get("source", ""))
        self._set_state(doc.get("params") or {}, arrays)
        self._reset_cache()


__all__ = ["FORMAT", "FORMAT_VERSION", "BlockwiseModel"]
