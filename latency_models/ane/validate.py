"""Validation of the cost model that cannot flatter: every number is predicted by a fit that
never saw it.

* leave-one-family-out (LOFO): each family's rows from a fit without that family;
* leave-one-device-out (LODO): each chip's rows from a fit without that chip (phones with the
  same chip are the same Neural Engine, so they are held out together);
* SD excluded: every SD-2.1-base row from one fit without any of them.

Metrics: median and 90th-percentile |error| (%), Spearman within each family (LOFO, families
with >= 3 distinct measured values), coverage of the 90 % intervals.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from latency_models.ane.costmodel import DEFAULT_HYPER, CostModel, Hyper, fit
from latency_models.ane.fitset import FitSet, Row

SD_FAMILY = "sd21_unet"


@dataclass
class Held:
    """Held-out predictions: rows, measured and predicted ms with their 90 % interval."""

    rows: list[Row]
    measured: np.ndarray
    pred: np.ndarray
    low: np.ndarray
    high: np.ndarray

    @classmethod
    def empty(cls) -> Held:
        z = np.zeros(0)
        return cls([], z, z, z, z)

    def extend(self, rows: Sequence[Row], out: dict[str, np.ndarray]) -> None:
        self.rows += list(rows)
        self.measured = np.concatenate([self.measured, [r.latency_ms for r in rows]])
        self.pred = np.concatenate([self.pred, out["mean_ms"]])
        self.low = np.concatenate([self.low, out["low_ms"]])
        self.high = np.concatenate([self.high, out["high_ms"]])

    @property
    def abs_pct(self) -> np.ndarray:
        return 100.0 * np.abs(self.pred / self.measured - 1.0)

    def summary(self) -> dict[str, float]:
        if not self.rows:
            return {"n": 0}
        e = self.abs_pct
        cover = (self.measured >= self.low) & (self.measured <= self.high)
        return {"n": len(self.rows), "median_abs_pct": float(np.median(e)),
                "p90_abs_pct": float(np.percentile(e, 90)), "mean_abs_pct": float(np.mean(e)),
                "interval_coverage_90": float(np.mean(cover))}

    def to_rows(self) -> list[dict]:
        return [{"row_id": r.row_id, "family": r.family, "model": r.model, "device": r.device,
                 "chip": r.chip, "precision": r.precision, "source": r.source,
                 "measured_ms": float(m), "predicted_ms": float(p), "low_ms": float(lo),
                 "high_ms": float(hi)}
                for r, m, p, lo, hi in zip(self.rows, self.measured, self.pred, self.low, self.high)]


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy import stats

    if len(a) < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return math.nan
    return float(stats.spearmanr(a, b).statistic)


def hold_out(fs: FitSet, key: Callable[[Row], str], h: Hyper = DEFAULT_HYPER,
             progress: Callable[[str], None] | None = None) -> Held:
    """Predict every group of ``key`` from a fit on the other groups."""
    held = Held.empty()
    for g in sorted({key(r) for r in fs.included}):
        if progress:
            progress(g)
        train = [r for r in fs.included if key(r) != g]
        test = [r for r in fs.included if key(r) == g]
        held.extend(test, fit(fs, train, h).predict(test))
    return held


def per_family(held: Held) -> dict[str, dict[str, float]]:
    """Per family: n, median |error| %, Spearman of predicted vs measured."""
    out = {}
    fams = np.array([r.family for r in held.rows])
    for f in sorted(set(fams)):
        m = fams == f
        sub = Held([r for r, k in zip(held.rows, m) if k], held.measured[m], held.pred[m],
                   held.low[m], held.high[m])
        s = sub.summary()
        s["spearman"] = spearman(sub.measured, sub.pred) if len(set(sub.measured)) >= 3 else math.nan
        out[f] = s
    return out


def sd_excluded(fs: FitSet, h: Hyper = DEFAULT_HYPER) -> tuple[Held, CostModel]:
    train = [r for r in fs.included if r.family != SD_FAMILY]
    test = [r for r in fs.included if r.family == SD_FAMILY]
    model = fit(fs, train, h)
    held = Held.empty()
    held.extend(test, model.predict(test))
    return held, model


def validate(fs: FitSet, h: Hyper = DEFAULT_HYPER, progress: Callable[[str], None] | None = None,
             spearman_min_rows: int = 3) -> dict:
    """All validation numbers (the ``benchmarks/prior_transfer.py`` JSON, minus timings)."""
    lofo = hold_out(fs, lambda r: r.family, h, progress)
    lodo = hold_out(fs, lambda r: r.chip, h, progress)
    sd, _ = sd_excluded(fs, h)
    fam = per_family(lofo)
    rho = {f: v["spearman"] for f, v in fam.items() if not math.isnan(v.get("spearman", math.nan))}
    good = sorted(f for f, v in fam.items() if v.get("median_abs_pct", 1e9) <= 25.0
                  and v.get("spearman", -1) >= 0.9)
    s_lofo, s_lodo, s_sd = lofo.summary(), lodo.summary(), sd.summary()
    return {
        "families": len(fam), "rows_included": len(fs.included), "rows_excluded": len(fs.excluded),
        "lofo_median_abs_pct": s_lofo["median_abs_pct"], "lofo_p90_abs_pct": s_lofo["p90_abs_pct"],
        "within_family_spearman_min": min(rho.values()) if rho else math.nan,
        "within_family_spearman": rho,
        "interval_coverage_90": s_lofo["interval_coverage_90"],
        "lodo_median_abs_pct": s_lodo["median_abs_pct"], "lodo_p90_abs_pct": s_lodo["p90_abs_pct"],
        "lodo_interval_coverage_90": s_lodo["interval_coverage_90"],
        "sd_excluded_median_abs_pct": s_sd.get("median_abs_pct", math.nan),
        "sd_excluded_interval_coverage_90": s_sd.get("interval_coverage_90", math.nan),
        "families_meeting_target": good, "n_families_meeting_target": len(good),
        "per_family_lofo": fam, "lofo": s_lofo, "lodo": s_lodo, "sd_excluded": s_sd,
        "_held": {"lofo": lofo, "lodo": lodo, "sd_excluded": sd},
    }
