"""Held-out fidelity audit: choose a proxy on one sample of architectures, report on another.

:func:`run_heldout_audit` runs :func:`evaluators.audit.run_audit` on two samples drawn with
different sample seeds (the *choose* sample and the *report* sample) and
:func:`heldout_summary` compares them: each proxy's Kendall tau against short training on
both samples, the proxy the choose sample would pick (optionally only among proxies whose
estimated search cost fits a :class:`SearchBudget`) and how that choice does on the report
sample. Reporting the chosen proxy's tau on the sample it was chosen on would overstate it
(winner's curse); the report sample's number is the honest one.
"""

from __future__ import annotations

import dataclasses
import io
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from common.fsio import atomic_path, atomic_write_json, atomic_write_text, json_safe
from evaluators.audit import AuditSpec, _fmt, markdown, run_audit, write_report
from search_space.errors import ConfigError


@dataclass(frozen=True)
class SearchBudget:
    """What a search may spend on its quality proxy: ``n_trials`` evaluations on ``workers``
    parallel workers within ``seconds``. A proxy's estimated cost is its one-time CPU seconds
    plus ``n_trials * cpu_s_per_arch / workers`` (CPU seconds: wall time on a shared machine
    is larger by the load factor)."""

    seconds: float
    n_trials: int = 400
    workers: int = 2

    def cost_s(self, entry: Mapping[str, Any]) -> float:
        per = entry.get("cpu_s_per_arch")
        if per is None or not math.isfinite(per):
            per = entry.get("s_per_arch", math.nan)
        one = (entry.get("one_time") or {}).get("cpu_s", 0.0)
        return float(one + self.n_trials * per / self.workers)


def run_heldout_audit(spec: AuditSpec, choose_seed: int, report_seed: int,
                      budget: SearchBudget | None = None, progress: bool = True) -> dict[str, Any]:
    """Audit ``spec`` on the choose sample and on the report sample (same space, proxies,
    budgets and seeds): ``{"choose": audit, "report": audit, "heldout": summary}``."""
    if choose_seed == report_seed:
        raise ConfigError(f"--report-sample-seed: must differ from the choose sample seed "
                          f"({choose_seed}), or the report sample is not held out")
    choose = run_audit(dataclasses.replace(spec, sample_seed=choose_seed), progress)
    report = run_audit(dataclasses.replace(spec, sample_seed=report_seed), progress)
    return {"choose": choose, "report": report,
            "heldout": heldout_summary(choose, report, choose_seed, report_seed, budget)}


def _tau(res: Mapping[str, Any], name: str) -> tuple[float, list[float]]:
    c = res["proxies"][name]["vs_short_train"]
    return c["kendall"], list(c["kendall_ci"])


def _best(names: list[str], tau: Mapping[str, float]) -> str | None:
    ok = [n for n in names if tau[n] is not None and math.isfinite(tau[n])]
    return max(ok, key=lambda n: tau[n]) if ok else None


def heldout_summary(choose: Mapping[str, Any], report: Mapping[str, Any], choose_seed: int,
                    report_seed: int, budget: SearchBudget | None = None) -> dict[str, Any]:
    """Per proxy: tau (95% CI) on both samples and estimated search cost; the proxy chosen on
    the choose sample (among those within ``budget``) and its tau on the report sample."""
    names = [n for n in choose["proxies"] if n in report["proxies"]]
    rows: dict[str, Any] = {}
    for n in names:
        (tc, cc), (tr, cr) = _tau(choose, n), _tau(report, n)
        e = choose["proxies"][n]
        cost = budget.cost_s(e) if budget else math.nan
        rows[n] = {"choose_kendall": tc, "choose_kendall_ci": cc, "report_kendall": tr,
                   "report_kendall_ci": cr, "cpu_s_per_arch": e.get("cpu_s_per_arch"),
                   "one_time": e.get("one_time"), "search_cost_s": cost,
                   "within_budget": bool(budget is None or cost <= budget.seconds)}
    eligible = [n for n in names if rows[n]["within_budget"]]
    chosen = _best(eligible, {n: rows[n]["choose_kendall"] for n in names})
    best_report = _best(eligible, {n: rows[n]["report_kendall"] for n in names})
    out = {"choose_sample_seed": choose_seed, "report_sample_seed": report_seed,
           "n_archs": [choose["n_archs"], report["n_archs"]],
           "budget": dataclasses.asdict(budget) if budget else None, "proxies": rows,
           "chosen": chosen, "best_on_report": best_report,
           "choice_holds": chosen is not None and chosen == best_report}
    if chosen:
        out.update(chosen_choose_kendall=rows[chosen]["choose_kendall"],
                   chosen_report_kendall=rows[chosen]["report_kendall"],
                   chosen_report_kendall_ci=rows[chosen]["report_kendall_ci"])
    return out


def heldout_markdown(h: Mapping[str, Any]) -> str:
    """The held-out comparison as markdown."""
    out = io.StringIO()
    w = out.write
    a, b = h["choose_sample_seed"], h["report_sample_seed"]
    w(f"# Held-out proxy audit: choose on sample seed {a} ({h['n_archs'][0]} archs), "
      f"report on sample seed {b} ({h['n_archs'][1]} archs)\n\n")
    if h.get("budget"):
        bd = h["budget"]
        w(f"Budget: {bd['n_trials']} evaluations on {bd['workers']} workers within "
          f"{bd['seconds']:.0f} s (one-time CPU-s + evaluations).\n\n")
    w("| proxy | tau choose | 95% CI | tau report | 95% CI | CPU-s/arch | one-time CPU-s "
      "| est. search s | in budget |\n|---|---|---|---|---|---|---|---|---|\n")
    rows = h["proxies"]
    for n in sorted(rows, key=lambda k: -(rows[k]["report_kendall"] if rows[k]["report_kendall"]
                                          is not None and math.isfinite(rows[k]["report_kendall"])
                                          else -9)):
        r = rows[n]
        one = (r.get("one_time") or {}).get("cpu_s")
        per, cost = r.get("cpu_s_per_arch"), r["search_cost_s"]
        per_s = "—" if per is None or not math.isfinite(per) else f"{per:.3f}"
        one_s = "—" if one is None else f"{one:.0f}"
        cost_s = "—" if cost is None or not math.isfinite(cost) else f"{cost:.0f}"
        w(f"| {n} | {_fmt(r['choose_kendall'])} | [{_fmt(r['choose_kendall_ci'][0])}, "
          f"{_fmt(r['choose_kendall_ci'][1])}] | {_fmt(r['report_kendall'])} | "
          f"[{_fmt(r['report_kendall_ci'][0])}, {_fmt(r['report_kendall_ci'][1])}] | "
          f"{per_s} | {one_s} | {cost_s} | {'yes' if r['within_budget'] else 'no'} |\n")
    c = h.get("chosen")
    if c:
        lo, hi = h["chosen_report_kendall_ci"]
        w(f"\nChosen on sample {a}: **{c}** (tau {_fmt(h['chosen_choose_kendall'])}); on the "
          f"held-out sample {b}: tau {_fmt(h['chosen_report_kendall'])} [{_fmt(lo)}, {_fmt(hi)}]. "
          f"Best on sample {b}: {h['best_on_report']} "
          f"({'the same proxy' if h['choice_holds'] else 'a different proxy'}).\n")
    return out.getvalue()


def plot_heldout(h: Mapping[str, Any], report: Mapping[str, Any], path: str) -> None:
    """Kendall tau (95% CI) of every proxy on both samples, and the chosen proxy against
    short training on the held-out sample."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    rows = h["proxies"]
    names = sorted(rows, key=lambda n: -np.nan_to_num(rows[n]["report_kendall"], nan=-9))
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5), gridspec_kw={"width_ratios": [3, 2]})
    ax, x = axes[0], np.arange(len(names))
    for off, part, label in ((-0.2, "choose", f"choose sample (seed {h['choose_sample_seed']})"),
                             (0.2, "report", f"held-out sample (seed {h['report_sample_seed']})")):
        t = np.array([np.nan_to_num(rows[n][f"{part}_kendall"]) for n in names])
        ci = np.array([rows[n][f"{part}_kendall_ci"] for n in names], dtype=float)
        err = np.nan_to_num(np.abs(np.stack([t - ci[:, 0], ci[:, 1] - t])))
        ax.bar(x + off, t, 0.4, yerr=err, capsize=2, label=label)
    ax.set_xticks(x, names, rotation=45)
    ax.axhline(0, c="k", lw=0.5)
    ax.set_ylabel("Kendall tau vs short_train")
    ax.set_title(f"chosen on the choose sample: {h.get('chosen')}")
    ax.legend(fontsize=8)
    ax = axes[1]
    c, top, seeds = h.get("chosen"), report["budgets"][-1], report["seeds"]
    if c:
        pa = report["per_arch"]
        ax.scatter([r[c] for r in pa], [np.mean([r[f"short_train_b{top}_s{s}"] for s in seeds])
                                        for r in pa], s=14)
        ax.set_xlabel(c)
        ax.set_ylabel(f"short_train @ {top}, mean of seeds")
        ax.set_title(f"held-out sample: tau {h['chosen_report_kendall']:+.2f}")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def write_heldout_report(res: Mapping[str, Any], out_dir: str) -> dict[str, str]:
    """``choose/`` and ``report/`` (each a full audit report) plus ``heldout.json``,
    ``heldout.md`` and ``heldout.png`` in ``out_dir``."""
    paths = {}
    for part in ("choose", "report"):
        for k, v in write_report(res[part], os.path.join(out_dir, part)).items():
            paths[f"{part}_{k}"] = v
    paths["json"] = os.path.join(out_dir, "heldout.json")
    paths["md"] = os.path.join(out_dir, "heldout.md")
    paths["png"] = os.path.join(out_dir, "heldout.png")
    plot_heldout(res["heldout"], res["report"], paths["png"])
    atomic_write_json(paths["json"], json_safe(res["heldout"]), indent=1)
    atomic_write_text(paths["md"], heldout_markdown(res["heldout"]) + "\n---\n\n## Choose sample\n\n"
                 + markdown(res["choose"]) + "\n---\n\n## Report sample\n\n" + markdown(res["report"]))
    return paths


def run_heldout_report(spec: AuditSpec, choose_seed: int, report_seed: int, out_dir: str,
                       budget: SearchBudget | None = None) -> tuple[str, dict[str, str]]:
    """Run the held-out audit and write its report: ``(markdown, written paths)``."""
    res = run_heldout_audit(spec, choose_seed, report_seed, budget)
    return heldout_markdown(res["heldout"]), write_heldout_report(res, out_dir)
