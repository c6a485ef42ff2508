"""How well do Neural Engine latencies transfer across network families and chips?

Fits the cost model of ``latency_models.ane`` on the committed Apple fit set and predicts every
published number from a fit that never saw it: leave-one-family-out (LOFO), leave-one-chip-out
(LODO: phones with the same chip held out together) and all SD-2.1-base rows from one fit
without them. Also compares the analytic block features (``latency_models.features``) with the
MIL features of the same temponas blocks converted by coremltools (the ``probe:*`` programs).

    python benchmarks/prior_transfer.py [--json]

Prints one JSON object with ``--json`` (``families``, ``lofo_median_abs_pct``,
``lofo_p90_abs_pct``, ``within_family_spearman_min``, ``interval_coverage_90``,
``sd_excluded_median_abs_pct``, ...); always writes ``benchmarks/results/prior_transfer.json``,
the held-out predictions ``prior_transfer_rows.csv`` and the parity plot ``prior_transfer.png``.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

import numpy as np

from common.fsio import atomic_path, atomic_write, atomic_write_text, json_safe
from latency_models.ane.costmodel import fit
from latency_models.ane.fitset import load_fitset
from latency_models.ane.mil import totals
from latency_models.ane.priors import probe_programs
from latency_models.ane.validate import validate
from latency_models.features import op_table

RESULTS = Path(__file__).resolve().parent / "results"


def feature_check(fs) -> dict:
    """MIL vs analytic features of temponas' own blocks: ratios per feature (median, range)."""
    names, sigs = probe_programs(fs)
    ratios: dict[str, list[float]] = {}
    for name, sig in zip(names, sigs):
        mil = totals(_counter(fs.programs[name]))
        ana = op_table(sig).totals()
        for k in ("conv_gflop", "conv3d_gflop", "linear_gflop", "attn_gflop", "weight_melem",
                  "act_melem", "n_ops"):
            if ana[k] > 0:
                ratios.setdefault(k, []).append(mil[k] / ana[k])
    return {k: {"blocks": len(v), "median": float(np.median(v)), "min": float(np.min(v)),
                "max": float(np.max(v))} for k, v in ratios.items()}


def _counter(p):
    from collections import Counter

    from latency_models.ane.mil import MilOp

    c = Counter()
    for cl, f, a, w, b, n in zip(p.cls, p.flops, p.act, p.weights, p.weight_bits, p.count):
        c[MilOp(int(cl), float(f), float(a), float(w), int(b), "")] += int(n)
    return c


def parity_plot(held: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 5.4))
    for ax, (what, h) in zip(axes, held.items()):
        fams = sorted({r.family for r in h.rows})
        cmap = plt.get_cmap("tab20")
        for i, f in enumerate(fams):
            m = np.array([r.family == f for r in h.rows])
            ax.errorbar(h.measured[m], h.pred[m], yerr=[h.pred[m] - h.low[m], h.high[m] - h.pred[m]],
                        fmt="o", ms=4, lw=0.6, color=cmap(i % 20), label=f)
        lo, hi = 0.8 * min(h.measured.min(), h.low.min()), 1.25 * max(h.measured.max(), h.high.max())
        xs = np.array([lo, hi])
        ax.plot(xs, xs, "k-", lw=0.8)
        ax.fill_between(xs, xs / 1.25, xs * 1.25, color="grey", alpha=0.15, label="±25 %")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("published latency (ms)")
        ax.set_ylabel("predicted (held out), 90 % interval")
        s = h.summary()
        ax.set_title(f"{what}: median |err| {s['median_abs_pct']:.1f} %, cover {s['interval_coverage_90']:.2f}")
        ax.legend(fontsize=6, loc="upper left", ncol=2)
    fig.tight_layout()
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=110, format="png")
    finally:
        plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="print the result as one JSON object")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    fs = load_fitset()
    t1 = time.perf_counter()
    model = fit(fs)
    full_fit_s = time.perf_counter() - t1
    val = validate(fs, progress=lambda g: print(f"hold out {g}", file=sys.stderr, flush=True))
    held = val.pop("_held")
    out = {**val, "full_fit_s": round(full_fit_s, 2), "wall_time_s": round(time.perf_counter() - t0, 1),
           "sigma_log": model.sigma, "tau_family_log": model.taus["family"],
           "tau_source_log": model.taus["source"],
           "excluded": [{"row_id": r.row_id, "model": r.model, "device": r.device, "latency_ms": r.latency_ms,
                         "reason": r.reason} for r in fs.excluded],
           "feature_check_mil_over_analytic": feature_check(fs),
           "parameters": {n: float(v) for n, v in zip(model.par.names, model.theta)}}
    RESULTS.mkdir(parents=True, exist_ok=True)
    atomic_write_text(RESULTS / "prior_transfer.json", json.dumps(json_safe(out), indent=1, sort_keys=True) + "\n")
    rows = [{"split": k, **r} for k, h in held.items() for r in h.to_rows()]

    def write_rows(f) -> None:
        w = csv.DictWriter(f, list(rows[0]), lineterminator="\n")
        w.writeheader()
        w.writerows(rows)

    atomic_write(RESULTS / "prior_transfer_rows.csv", write_rows)
    parity_plot(held, RESULTS / "prior_transfer.png")
    if args.json:
        print(json.dumps(json_safe(out), indent=1, sort_keys=True))
    else:
        for k in ("families", "lofo_median_abs_pct", "lofo_p90_abs_pct", "within_family_spearman_min",
                  "interval_coverage_90", "lodo_median_abs_pct", "sd_excluded_median_abs_pct",
                  "n_families_meeting_target", "full_fit_s", "wall_time_s"):
            print(f"{k:32s} {out[k]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
