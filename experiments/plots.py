"""Plots of a run (matplotlib Agg, PNG): Pareto front with latency intervals and the budget,
hypervolume over trials, per-stage latency of the front, and the latency model's parity plot.

Drawn from the study with :mod:`experiments.trials` (the front is :func:`pareto_front`: one
point per architecture); written with :mod:`common.fsio`."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np

from common.fsio import atomic_write_bytes
from experiments.hypervolume import hypervolume_history
from experiments.trials import is_feasible, pareto_front, trial_attrs

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
    """Draw ``plots/*.png`` of a run from its study; returns the files written."""
    plt = _plt()
    out = Path(run_dir) / "plots"
    objs, dirs = _objective_info(study, cfg)
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    front = pareto_front(study, trials)
    written = []
    for name, draw in (("pareto_front", lambda: _front_figure(plt, cfg, objs, dirs, complete, front)),
                       ("hypervolume", lambda: _hypervolume_figure(plt, cfg, dirs, complete)),
                       ("stage_latency", lambda: _stage_latency_figure(plt, cfg, front))):
        fig = draw()
        if fig is None:
            continue
        _save(fig, out / f"{name}.png")
        plt.close(fig)
        written.append(out / f"{name}.png")
    # the latency model's parity plot, as `temponas latency report` wrote it next to the model
    src = latency_parity_png(cfg.latency_model)
    if src is not None:
        atomic_write_bytes(out / "latency_parity.png", src.read_bytes())
        written.append(out / "latency_parity.png")
    return written


def _front_figure(plt: Any, cfg: Any, objs: list[str], dirs: list[str], complete: list[Any],
                  front: list[Any]) -> Any:
    """Quality vs predicted latency: every complete trial, the front with latency intervals,
    the latency budget. None without a latency objective."""
    if "latency_ms" not in objs:
        return None
    qi, li = objs.index("quality"), objs.index("latency_ms")
    feasible = [t for t in complete if is_feasible(t)]
    infeasible = [t for t in complete if not is_feasible(t)]
    budget = cfg.constraints.latency_budget_ms
    fig, ax = plt.subplots(figsize=(8, 5.5))

    def xy(ts: list[Any]) -> tuple[np.ndarray, np.ndarray]:
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
        _label_points(ax, front, x, y)
    if budget is not None:
        ax.axvline(budget, ls="--", c="tab:red", lw=1.2, label=f"latency budget {budget:g} ms")
    ax.set_xlabel(f"predicted latency per denoiser call (ms), {cfg.latency_model}")
    ax.set_ylabel(quality_label(cfg, dirs[qi]))
    ax.set_title(f"{cfg.name}: quality vs latency ({len(complete)} complete trials)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    return fig


def _label_points(ax: Any, front: list[Any], x: np.ndarray, y: np.ndarray) -> None:
    """Label front points with their arch_id where labels do not collide (greedy, in
    axis-normalized units)."""
    xr, yr = max(np.ptp(x), 1e-12), max(np.ptp(y), 1e-12)
    placed: list[tuple[float, float]] = []
    for t, xi, yi in zip(front, x, y):
        u, v = (xi - x.min()) / xr, (yi - y.min()) / yr
        if any(abs(u - pu) < 0.09 and abs(v - pv) < 0.05 for pu, pv in placed):
            continue
        placed.append((u, v))
        ax.annotate(t.user_attrs.get("arch_id", "")[:6], (xi, yi), textcoords="offset points",
                    xytext=(4, 4), fontsize=7, color="tab:blue")


def _hypervolume_figure(plt: Any, cfg: Any, dirs: list[str], complete: list[Any]) -> Any:
    """Hypervolume of the feasible front after each trial, as a fraction of the final one."""
    if not complete:
        return None
    signs = np.array([1.0 if d == "minimize" else -1.0 for d in dirs])
    done = sorted(complete, key=lambda t: t.number)
    P = np.array([np.array(t.values) * signs if is_feasible(t) else np.full(len(dirs), np.inf)
                  for t in done])
    finite = P[np.all(np.isfinite(P), axis=1)]
    if not len(finite):
        return None
    ref = finite.max(axis=0) + 0.01 * np.maximum(np.ptp(finite, axis=0), 1e-12)
    hv = hypervolume_history(np.where(np.isfinite(P), P, ref + 1), ref)
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot([t.number for t in done], hv / hv[-1] if hv[-1] > 0 else hv, c="tab:green")
    ax.set_xlabel("trial number")
    ax.set_ylabel("hypervolume (fraction of final)")
    ax.set_title(f"{cfg.name}: hypervolume of the feasible front over trials ({cfg.search.sampler})")
    ax.grid(alpha=0.3)
    return fig


def _stage_latency_figure(plt: Any, cfg: Any, front: list[Any]) -> Any:
    """Stacked per-stage predicted latency of each front member."""
    per_stage = [dict(trial_attrs(t).get("per_stage_ms") or {}) for t in front]
    if not any(per_stage):
        return None
    stages = list(dict.fromkeys(s for ps in per_stage for s in ps))
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(front) + 1.8))
    cmap = plt.get_cmap(STAGE_COLORS)
    left = np.zeros(len(front))
    labels = [f"{t.user_attrs.get('arch_id', '')[:6]} (#{t.number})" for t in front]
    for i, s in enumerate(stages):
        w = np.array([float(ps.get(s, 0.0)) for ps in per_stage])
        ax.barh(labels, w, left=left, color=cmap(i % 20), label=s)
        left += w
    budget = cfg.constraints.latency_budget_ms
    if budget is not None:
        ax.axvline(budget, ls="--", c="tab:red", lw=1.2)
    ax.set_xlabel("predicted latency (ms)")
    ax.set_title(f"{cfg.name}: per-stage latency of the Pareto front")
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), title="stage",
              title_fontsize=8)
    ax.invert_yaxis()
    return fig


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
