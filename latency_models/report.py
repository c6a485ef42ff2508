"""Accuracy report of a latency model against measurements it was NOT fitted on.

``evaluate(model, measurements)`` compares predictions with the measured latencies (geometric
mean over repeats) of every block and network row: ±5 %/±10 % hit rates, MAPE, RMSPE, Spearman
and Kendall, residuals by block type, and the measurement noise floor from repeats (no
predictor can beat it). ``parity_plot`` draws predicted vs measured (matplotlib Agg, PNG).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from common.fsio import atomic_path
from latency_models.accuracy import accuracy, accuracy_by_op
from latency_models.base import LatencyModel
from latency_models.measurements import Measurements


def evaluate(model: LatencyModel, m: Measurements) -> dict[str, Any]:
    """Metrics of ``model`` on every row of ``m`` (see the module docstring)."""
    out: dict[str, Any] = {"model": {k: model.metadata.get(k) for k in ("device", "predictor", "kind")},
                           "measurements": {"source": m.source, "device": m.info.device,
                                            "backend": m.info.backend},
                           "noise_floor_pct": m.noise_floor_pct()}
    if model.metadata.get("device") and model.metadata.get("device") != m.info.device:
        out["warning"] = (f"model was fitted on device {model.metadata.get('device')!r}, "
                          f"measurements come from {m.info.device!r}")
    sigs, y = m.block_latencies()
    if sigs:
        pred = model.block_ms(sigs)
        out["block"] = accuracy(pred, y)
        out["by_op"] = accuracy_by_op(sigs, pred, y)
        out["_block_pairs"] = (pred.tolist(), y.tolist(), [s.op_name for s in sigs])
    nets, ny = m.network_latencies()
    if nets:
        pred = np.array([model.predict(r.arch, r.backbone).mean_ms for r in nets])
        lows = np.array([model.predict(r.arch, r.backbone).low_ms for r in nets])
        highs = np.array([model.predict(r.arch, r.backbone).high_ms for r in nets])
        acc = accuracy(pred, ny)
        acc["interval_coverage"] = float(np.mean((ny >= lows) & (ny <= highs)))
        out["network"] = acc
        out["_network_pairs"] = (pred.tolist(), ny.tolist(), [r.arch.arch_id for r in nets])
    return out


def parity_plot(result: dict[str, Any], path: str | Path, title: str = "") -> None:
    """Predicted vs measured latency, log-log, with ±10 % bands; blocks and networks."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(k, result[f"_{k}_pairs"]) for k in ("block", "network") if f"_{k}_pairs" in result]
    fig, axes = plt.subplots(1, max(1, len(panels)), figsize=(5.5 * max(1, len(panels)), 5),
                             squeeze=False)
    for ax, (kind, (pred, meas, labels)) in zip(axes[0], panels):
        pred, meas = np.asarray(pred), np.asarray(meas)
        if kind == "block":
            ops = sorted(set(labels))
            cmap = plt.get_cmap("tab20")
            for i, op in enumerate(ops):
                ix = [j for j, lab in enumerate(labels) if lab == op]
                ax.scatter(meas[ix], pred[ix], s=16, color=cmap(i % 20), label=op)
            ax.legend(fontsize=6, loc="upper left")
        else:
            ax.scatter(meas, pred, s=16, color="tab:blue")
        lo, hi = min(meas.min(), pred.min()) * 0.8, max(meas.max(), pred.max()) * 1.25
        xs = np.array([lo, hi])
        ax.plot(xs, xs, "k-", lw=1)
        ax.fill_between(xs, xs * 0.9, xs * 1.1, color="gray", alpha=0.2, label="±10%")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlim(lo, hi)
        ax.set_ylim(lo, hi)
        ax.set_xlabel("measured latency (ms)")
        ax.set_ylabel("predicted latency (ms)")
        acc = result[kind]
        ax.set_title(f"{kind}s: ±10% {acc['within_10pct']:.0%}, MAPE {acc['mape_pct']:.1f}%, "
                     f"ρ {acc['spearman']:.3f}", fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=120, format="png")
    finally:
        plt.close(fig)


def public(result: dict[str, Any]) -> dict[str, Any]:
    """The result without the raw prediction pairs (for JSON output)."""
    return {k: v for k, v in result.items() if not k.startswith("_")}

