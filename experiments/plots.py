"""Plots of a run (matplotlib Agg, PNG): Pareto front with latency intervals and the budget,
hypervolume over trials, per-stage latency of the front, and the latency model's parity plot."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np

from common.fsio import atomic_write_bytes
from experiments.hypervolume import hypervolume_history

STAGE_COLORS = "tab20"


def _save(fig: Any, path: Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=130, bbox_inches="tight")
    atomic_write_bytes(path, buf.getvalue())


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _objective_info(study: Any, cfg: Any) -> tuple[list[str], list[str]]:
    objs = list(study.user_attrs.get("objectives", cfg.objectives))
    dirs = [d.name.lower() for d in study.directions]
    return objs, dirs


def quality_label(cfg: Any, direction: str) -> str:
    arrow = "higher is better" if direction == "maximize" else "lower is better"
    return f"quality: {cfg.evaluator.name} ({arrow})"


def write_plots(run_dir: Path, *, study: Any, cfg: Any, latency_model: Any = None) -> list[Path]:
    from experiments.outputs import front_trials, trial_attrs, unique_by_arch

    plt = _plt()
    out = Path(run_dir) / "plots"
    written = []
    objs, dirs = _objective_info(study, cfg)
    qi, li = objs.index("quality"), objs.index("latency_ms") if "latency_ms" in objs else None
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    feasible = [t for t in complete if all(v <= 0 for v in (t.constraints or {}).values())]
    infeasible = [t for t in complete if t not in feasible]
    front = unique_by_arch(front_trials(study))
    budget = cfg.constraints.latency_budget_ms

    # 1. Pareto front ------------------------------------------------------------------------
    if li is not None:
        fig, ax = plt.subplots(figsize=(8, 5.5))
        def xy(ts):
            return (np.array([t.values[li] for t in ts]), np.array([t.values[qi] for t in ts]))
        if feasible:
            x, y = xy(feasible)
            ax.scatter(x, y, s=12, c="0.65", label=f"feasible trials ({len(feasible)})", zorder=1)
        if infeasible:
            x, y = xy(infeasible)
            ax.scatter(x, y, s=14, marker="x", c="tab:red", alpha=0.5,
                       label=f"over a budget ({len(infeasible)})", zorder=1)
        if front:
            x, y = xy(front)
            lo = np.array([trial_attrs(t).get("latency_low_ms", v) for t, v in zip(front, x)])
            hi = np.array([trial_attrs(t).get("latency_high_ms", v) for t, v in zip(front, x)])
            ax.errorbar(x, y, xerr=[np.clip(x - lo, 0, None), np.clip(hi - x, 0, None)], fmt="o",
                        c="tab:blue", ms=6, capsize=3, lw=1, zorder=3, ecolor=(0.12, 0.47, 0.71, 0.35),
                        label=f"Pareto front ({len(front)}), predicted-latency interval")
            order = np.argsort(x)
            ax.step(x[order], y[order], where="post" if dirs[qi] == "maximize" else "pre",
                    c="tab:blue", alpha=0.4, zorder=2)
            # label points whose labels do not collide (greedy, in axis-normalized units)
            xr, yr = max(np.ptp(x), 1e-12), max(np.ptp(y), 1e-12)
            placed: list[tuple[float, float]] = []
            for t, xi, yi in zip(front, x, y):
                u, v = (xi - x.min()) / xr, (yi - y.min()) / yr
                if any(abs(u - pu) < 0.09 and abs(v - pv) < 0.05 for pu, pv in placed):
                    continue
                placed.append((u, v))
                ax.annotate(t.user_attrs.get("arch_id", "")[:6], (xi, yi), textcoords="offset points",
                            xytext=(4, 4), fontsize=7, color="tab:blue")
        if budget is not None:
            ax.axvline(budget, ls="--", c="tab:red", lw=1.2, label=f"latency budget {budget:g} ms")
        ax.set_xlabel(f"predicted latency per denoiser call (ms), {cfg.latency_model}")
        ax.set_ylabel(quality_label(cfg, dirs[qi]))
        ax.set_title(f"{cfg.name}: quality vs latency ({len(complete)} complete trials)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="best")
        _save(fig, out / "pareto_front.png")
        plt.close(fig)
        written.append(out / "pareto_front.png")

    # 2. Hypervolume over trials -------------------------------------------------------------
    if complete:
        signs = np.array([1.0 if d == "minimize" else -1.0 for d in dirs])
        nums, pts = [], []
        for t in sorted(complete, key=lambda t: t.number):
            ok = all(v <= 0 for v in (t.constraints or {}).values())
            nums.append(t.number)
            pts.append(np.array(t.values) * signs if ok else np.full(len(dirs), np.inf))
        P = np.array(pts)
        finite = P[np.all(np.isfinite(P), axis=1)]
        if len(finite):
            ref = finite.max(axis=0) + 0.01 * np.maximum(np.ptp(finite, axis=0), 1e-12)
            hv = hypervolume_history(np.where(np.isfinite(P), P, ref + 1), ref)
            fig, ax = plt.subplots(figsize=(7, 4))
            ax.plot(nums, hv / hv[-1] if hv[-1] > 0 else hv, c="tab:green")
            ax.set_xlabel("trial number")
            ax.set_ylabel("hypervolume (fraction of final)")
            ax.set_title(f"{cfg.name}: hypervolume of the feasible front over trials ({cfg.search.sampler})")
            ax.grid(alpha=0.3)
            _save(fig, out / "hypervolume.png")
            plt.close(fig)
            written.append(out / "hypervolume.png")

    # 3. Per-stage latency of the front ------------------------------------------------------
    if front and any(trial_attrs(t).get("per_stage_ms") for t in front):
        stages: list[str] = []
        for t in front:
            for s in trial_attrs(t).get("per_stage_ms", {}):
                if s not in stages:
                    stages.append(s)
        fig, ax = plt.subplots(figsize=(8, 0.45 * len(front) + 1.8))
        cmap = plt.get_cmap(STAGE_COLORS)
        left = np.zeros(len(front))
        labels = [f"{t.user_attrs.get('arch_id', '')[:6]} (#{t.number})" for t in front]
        for i, s in enumerate(stages):
            w = np.array([float(trial_attrs(t).get("per_stage_ms", {}).get(s, 0.0)) for t in front])
            ax.barh(labels, w, left=left, color=cmap(i % 20), label=s)
            left += w
        if budget is not None:
            ax.axvline(budget, ls="--", c="tab:red", lw=1.2)
        ax.set_xlabel("predicted latency (ms)")
        ax.set_title(f"{cfg.name}: per-stage latency of the Pareto front")
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), title="stage",
                  title_fontsize=8)
        ax.invert_yaxis()
        _save(fig, out / "stage_latency.png")
        plt.close(fig)
        written.append(out / "stage_latency.png")

    # 4. Latency-model parity: the plot `temponas latency report` wrote next to a fitted model
    src = latency_parity_png(cfg.latency_model)
    if src is not None:
        atomic_write_bytes(out / "latency_parity.png", src.read_bytes())
        written.append(out / "latency_parity.png")
    return written


def latency_parity_png(spec: str) -> Path | None:
    """``parity.png`` of a fitted latency model directory (or its ``report/``), if any.

    Shipped device profiles are priors without device measurements: no parity plot."""
    d = Path(spec)
    if not d.is_dir():
        return None
    for cand in (d / "parity.png", d / "report" / "parity.png"):
        if cand.is_file():
            return cand
    return None
