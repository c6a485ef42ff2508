"""Proxy fidelity audit: how far can each proxy be trusted?

For ``n`` architectures sampled from a search space, runs every proxy (cheap baselines,
zero-cost proxies) and ``short_train`` at several budgets and seeds, then reports rank
correlations with bootstrap intervals:

* each proxy vs short training at the largest budget (mean over seeds) — the reference;
* short training seed vs seed, and budget A vs budget B (is the reference reproducible?);
* each proxy vs parameter count (a proxy that mostly measures size is flagged);
* the image-only model vs the best candidate, with the seed noise of short training.

``run_audit`` returns a JSON-ready dict; ``write_report`` writes ``audit.json``,
``audit.md``, ``archs.csv`` and ``audit.png``.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import math
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from common.fsio import atomic_path, atomic_write_json, atomic_write_text, json_safe
from common.stats import correlation, kendall
from evaluators.registry import create_evaluator
from search_space.arch import ArchConfig
from search_space.backbone import BackboneSpec
from search_space.errors import ConfigError
from search_space.space import SearchSpace

ZERO_COST = ("grad_norm", "snip", "synflow", "naswot", "zico", "meco")
BASELINES = ("params", "flops")
#: proxies that train once per configuration (their one-time cost is reported separately)
WEIGHT_SHARING = ("supernet",)
DEFAULT_PROXIES = BASELINES + ZERO_COST + WEIGHT_SHARING
REFERENCE = "short_train"
#: a proxy whose |tau| with parameter count is at least this and above its |tau| with the
#: reference is flagged as "mostly measures size"
SIZE_FLAG_TAU = 0.5


@dataclass
class AuditSpec:
    """What to audit. ``proxy_options``/``short_train_options`` go to ``create_evaluator``."""

    backbone: BackboneSpec
    space: SearchSpace
    n_archs: int = 24
    budgets: tuple[int, ...] = (15, 30)
    seeds: tuple[int, ...] = (0, 1)
    proxies: tuple[str, ...] = DEFAULT_PROXIES
    proxy_options: Mapping[str, Any] = field(default_factory=dict)
    short_train_options: Mapping[str, Any] = field(default_factory=dict)
    sample_seed: int = 0
    bootstrap: int = 1000
    workers: int = 1

    def validate(self) -> None:
        if self.n_archs < 4:
            raise ConfigError(f"--n-archs: need at least 4 architectures, got {self.n_archs}")
        if len(self.budgets) < 1 or any(b < 1 for b in self.budgets):
            raise ConfigError(f"--budgets: positive step counts required, got {list(self.budgets)}")
        if len(self.seeds) < 1:
            raise ConfigError("--seeds: at least one seed required")
        if self.workers < 1:
            raise ConfigError(f"--workers: must be >= 1, got {self.workers}")


def proxy_options(spec: AuditSpec, name: str) -> dict[str, Any]:
    """Options of proxy ``name`` in the audit: none for the analytic baselines; the shared
    proxy options otherwise, plus the audited space for a weight-sharing proxy."""
    if name in BASELINES:
        return {}
    opts = dict(spec.proxy_options)
    if name in WEIGHT_SHARING:
        opts.setdefault("space", spec.space.to_dict()["stages"])
    return opts


def sample_archs(space: SearchSpace, n: int, seed: int) -> list[ArchConfig]:
    """``n`` distinct architectures drawn uniformly from ``space`` (fewer if it is smaller)."""
    return space.sample_distinct(n, seed)


# ---- running --------------------------------------------------------------------------------------
def _short_train_job(args: tuple) -> dict[str, Any]:
    """One (arch, seed) short-training run at every budget (a worker-process entry point)."""
    backbone_dict, options, arch_json, seed, budgets = args
    import torch
    torch.set_num_threads(1)
    ev = create_evaluator(REFERENCE, BackboneSpec.from_dict(backbone_dict), options)
    arch = ArchConfig.from_json(arch_json)
    t0 = time.perf_counter()
    res = ev.evaluate_budgets(arch, seed=seed, budgets=budgets)
    return {"arch_id": arch.arch_id, "seed": seed, "wall_time_s": time.perf_counter() - t0,
            "run_wall_time_s": max(r.wall_time_s for r in res.values()),
            "run_cpu_time_s": max(float(r.extras.get("cpu_s", math.nan)) for r in res.values()),
            "cache_hit": all(r.extras.get("cache_hit") for r in res.values()),
            "results": {str(b): {"value": r.value, "extras": dict(r.extras)} for b, r in res.items()}}


def run_audit(spec: AuditSpec, progress: bool = True) -> dict[str, Any]:
    """Run the audit and return the JSON-ready result (see module docstring)."""
    from tqdm import tqdm

    spec.validate()
    archs = sample_archs(spec.space, spec.n_archs, spec.sample_seed)
    budgets = sorted(set(spec.budgets))
    top = budgets[-1]
    t_start = time.perf_counter()

    # 1) short training (the reference): pretrain once here, then (arch, seed) jobs
    st = create_evaluator(REFERENCE, spec.backbone, spec.short_train_options)
    if progress:
        print("pretraining the scaled image backbone (cached after the first run)...",
              file=__import__("sys").stderr, flush=True)
    image_loss = st.image_only_loss(archs[0].task.latent_channels)
    jobs = [(spec.backbone.to_dict(), dict(spec.short_train_options), a.to_json(), s, budgets)
            for a in archs for s in spec.seeds]
    runs: list[dict[str, Any]] = []
    bar = tqdm(total=len(jobs), desc="short_train", disable=not progress, mininterval=1.0)
    if spec.workers > 1:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor, as_completed
        with ProcessPoolExecutor(spec.workers, mp_context=mp.get_context("spawn")) as ex:
            futs = [ex.submit(_short_train_job, j) for j in jobs]
            for f in as_completed(futs):
                runs.append(f.result())
                bar.update()
    else:
        for j in jobs:
            runs.append(_short_train_job(j))
            bar.update()
    bar.close()

    # 2) proxies: timed after one warm-up call (data and pretrained weights are cached)
    proxy_vals: dict[str, dict[int, list[float]]] = {}
    proxy_time: dict[str, list[float]] = {}
    proxy_cpu: dict[str, list[float]] = {}
    proxy_seeds = spec.seeds[:2]
    bar = tqdm(total=len(spec.proxies) * len(archs) * len(proxy_seeds), desc="proxies",
               disable=not progress, mininterval=1.0)
    describe: dict[str, Any] = {REFERENCE: st.describe()}
    for name in spec.proxies:
        ev = create_evaluator(name, spec.backbone, proxy_options(spec, name))
        describe[name] = ev.describe() if hasattr(ev, "describe") else {"name": name}
        ev.evaluate(archs[0], seed=proxy_seeds[0], budget=0)  # warm-up (and one-time training)
        if hasattr(ev, "one_time_cost"):
            describe[name]["one_time"] = ev.one_time_cost(archs[0].task.latent_channels)
        proxy_vals[name] = {}
        proxy_time[name] = []
        proxy_cpu[name] = []
        for s in proxy_seeds:
            vals = []
            for a in archs:
                t0, c0 = time.perf_counter(), time.process_time()
                vals.append(float(ev.evaluate(a, seed=s, budget=0).value))
                proxy_time[name].append(time.perf_counter() - t0)
                proxy_cpu[name].append(time.process_time() - c0)
                bar.update()
            proxy_vals[name][s] = vals
    bar.close()

    return _analyse(spec, archs, budgets, top, runs, proxy_vals, proxy_time, image_loss,
                    describe, time.perf_counter() - t_start, proxy_cpu)


def _reference_runs(spec, archs, budgets, top, runs) -> tuple[dict, dict, list, list]:
    """``st[budget][seed]`` short-training values per arch (in ``archs`` order), the val loss at
    the top budget ``vloss[seed]``, and the wall/CPU time of every run."""
    pos = {a.arch_id: k for k, a in enumerate(archs)}
    st = {b: {s: [math.nan] * len(archs) for s in spec.seeds} for b in budgets}
    vloss = {s: [math.nan] * len(archs) for s in spec.seeds}
    run_time, run_cpu = [], []
    for r in runs:
        for b, res in r["results"].items():
            st[int(b)][r["seed"]][pos[r["arch_id"]]] = res["value"]
            if int(b) == top:
                vloss[r["seed"]][pos[r["arch_id"]]] = res["extras"].get("val_loss", math.nan)
        # a cached result carries the wall/CPU time measured when it was computed
        run_time.append(r["run_wall_time_s"])
        if math.isfinite(r.get("run_cpu_time_s", math.nan)):
            run_cpu.append(r["run_cpu_time_s"])
    return st, vloss, run_time, run_cpu


def _proxy_entries(spec, proxy_vals, proxy_time, proxy_cpu, ref, nb, describe) -> dict[str, Any]:
    """Per proxy: correlation with the reference (and with parameter count), time per arch,
    seed agreement, and the flags ``beats_params``/``ci_above_params``/``size_dominated``."""
    params = proxy_vals.get("params", {}).get(spec.seeds[0])
    proxies: dict[str, Any] = {}
    for name, by_seed in proxy_vals.items():
        v = by_seed[spec.seeds[0]]
        entry = {"vs_short_train": correlation(v, ref, nb),
                 "s_per_arch": float(np.mean(proxy_time[name])) if proxy_time[name] else math.nan,
                 "cpu_s_per_arch": (float(np.mean(proxy_cpu[name])) if proxy_cpu and proxy_cpu.get(name)
                                    else math.nan)}
        if params is not None and name != "params":
            entry["vs_params"] = correlation(v, params, nb)
        if len(by_seed) >= 2:
            s1, s2 = list(by_seed)[:2]
            entry["seed_kendall"] = kendall(by_seed[s1], by_seed[s2])
        if describe.get(name, {}).get("one_time"):
            entry["one_time"] = describe[name]["one_time"]
        proxies[name] = entry
    p_tau = proxies.get("params", {}).get("vs_short_train", {}).get("kendall", math.nan)
    for name, e in proxies.items():
        tau = e["vs_short_train"]["kendall"]
        e["beats_params"] = bool(name != "params" and math.isfinite(tau) and math.isfinite(p_tau)
                                 and tau > p_tau)
        e["ci_above_params"] = bool(name != "params" and math.isfinite(p_tau)
                                    and e["vs_short_train"]["kendall_ci"][0] > p_tau)
        tp = abs(e.get("vs_params", {}).get("kendall", 0.0) or 0.0)
        e["size_dominated"] = bool(name != "params" and tp >= SIZE_FLAG_TAU and tp > abs(tau))
    return proxies


def _improvement(spec, archs, st, vloss, top, ref, image_loss) -> dict[str, Any]:
    """The image-only model vs the best candidate, with the seed noise of short training."""
    top_runs = np.array([st[top][s] for s in spec.seeds])  # (S, N)
    best = int(np.nanargmax(ref))
    if len(spec.seeds) >= 2:
        diffs = np.concatenate([top_runs[i] - top_runs[j] for i, j in
                                itertools.combinations(range(len(spec.seeds)), 2)])
        seed_sd = float(np.nanstd(diffs) / math.sqrt(2))  # sd of one run around its mean
    else:
        seed_sd = math.nan
    best_vals = top_runs[:, best]
    return {
        "image_only_val_loss": image_loss,
        "best_arch_id": archs[best].arch_id,
        "best_val_loss_per_seed": [vloss[s][best] for s in spec.seeds],
        "best_improvement_per_seed": [float(v) for v in best_vals],
        "best_improvement_mean": float(np.mean(best_vals)),
        "best_rel_improvement_mean": float(np.mean(best_vals) / image_loss),
        "seed_noise_sd": seed_sd,
        "best_over_noise": float(np.mean(best_vals) / seed_sd) if seed_sd and seed_sd > 0 else math.nan,
        "candidates_better_than_image_only": int(np.sum(np.array(ref) > 0)),
        "n_archs": len(archs),
    }


def _per_arch(spec, archs, budgets, st, proxy_vals) -> list[dict[str, Any]]:
    rows = []
    for k, a in enumerate(archs):
        row = {"arch_id": a.arch_id, "temporal_blocks": a.num_temporal_blocks,
               "stages": {sid: c.to_dict() for sid, c in a.stages}}
        for b in budgets:
            for s in spec.seeds:
                row[f"short_train_b{b}_s{s}"] = st[b][s][k]
        for name, by_seed in proxy_vals.items():
            row[name] = by_seed[spec.seeds[0]][k]
        rows.append(row)
    return rows


def _analyse(spec, archs, budgets, top, runs, proxy_vals, proxy_time, image_loss, describe,
             wall, proxy_cpu=None) -> dict[str, Any]:
    st, vloss, run_time, run_cpu = _reference_runs(spec, archs, budgets, top, runs)
    mean = {b: list(np.mean([st[b][s] for s in spec.seeds], axis=0)) for b in budgets}
    ref = mean[top]
    nb = spec.bootstrap

    seed_pairs = list(itertools.combinations(spec.seeds, 2))
    seed_corr = {f"{s1}-{s2}": correlation(st[top][s1], st[top][s2], nb) for s1, s2 in seed_pairs}
    seed_kendall = float(np.mean([c["kendall"] for c in seed_corr.values()])) if seed_corr else math.nan
    budget_corr = {}
    if len(budgets) >= 2:
        b0 = budgets[0]
        for s in spec.seeds:
            budget_corr[f"seed{s}"] = correlation(st[b0][s], st[top][s], nb)
        budget_corr["seed_mean"] = correlation(mean[b0], mean[top], nb)
    per_seed = [c["kendall"] for k, c in budget_corr.items() if k != "seed_mean"]
    budget_kendall = float(np.mean(per_seed)) if per_seed else math.nan

    proxies = _proxy_entries(spec, proxy_vals, proxy_time, proxy_cpu, ref, nb, describe)
    p_tau = proxies.get("params", {}).get("vs_short_train", {}).get("kendall", math.nan)
    zero_cost = [n for n in proxies if n not in BASELINES + WEIGHT_SHARING]
    ranked = sorted((n for n in zero_cost if math.isfinite(proxies[n]["vs_short_train"]["kendall"])),
                    key=lambda n: -proxies[n]["vs_short_train"]["kendall"])
    zc_times = [proxies[n]["s_per_arch"] for n in proxies if n in ZERO_COST]
    zc_cpu = [proxies[n]["cpu_s_per_arch"] for n in proxies if n in ZERO_COST]
    return {
        "backbone": spec.backbone.name,
        "n_archs": len(archs), "budgets": budgets, "seeds": list(spec.seeds),
        "evaluators": describe,
        "seed_kendall": seed_kendall, "seed_correlations": seed_corr,
        "budget_kendall": budget_kendall, "budget_correlations": budget_corr,
        "params_kendall_vs_short_train": p_tau,
        "proxies": proxies,
        "best_zero_cost_proxy": ranked[0] if ranked else None,
        "zero_cost_ranking": ranked,
        "improvement": _improvement(spec, archs, st, vloss, top, ref, image_loss),
        "short_train_s_per_arch": float(np.mean(run_time)) if run_time else math.nan,
        "short_train_runs_timed": len(run_time),
        "short_train_runs_from_cache": sum(bool(r["cache_hit"]) for r in runs),
        "short_train_cpu_s_per_arch": float(np.mean(run_cpu)) if run_cpu else math.nan,
        "zero_cost_cpu_s_per_arch": float(np.nanmean(zc_cpu)) if zc_cpu else math.nan,
        "zero_cost_s_per_arch": float(np.mean(zc_times)) if zc_times else math.nan,
        "wall_time_s": wall,
        "per_arch": _per_arch(spec, archs, budgets, st, proxy_vals),
    }


# ---- reporting ------------------------------------------------------------------------------------
def _fmt(v: float, nd: int = 3) -> str:
    return "nan" if v is None or not math.isfinite(v) else f"{v:+.{nd}f}"


def markdown(res: Mapping[str, Any]) -> str:
    """The audit as a markdown report (tables with numbers and a verdict per proxy)."""
    b = res["budgets"]
    out = io.StringIO()
    w = out.write
    w(f"# Proxy fidelity audit: {res['backbone']}, {res['n_archs']} architectures\n\n")
    w(f"Reference: `short_train` at {b[-1]} steps, mean over seeds {res['seeds']}.\n\n")
    w("## Is the reference reproducible?\n\n| comparison | Kendall tau | 95% CI | Spearman |\n|---|---|---|---|\n")
    for k, c in res["seed_correlations"].items():
        w(f"| seed {k} at {b[-1]} steps | {_fmt(c['kendall'])} | [{_fmt(c['kendall_ci'][0])}, "
          f"{_fmt(c['kendall_ci'][1])}] | {_fmt(c['spearman'])} |\n")
    for k, c in res["budget_correlations"].items():
        w(f"| {b[0]} vs {b[-1]} steps ({k}) | {_fmt(c['kendall'])} | [{_fmt(c['kendall_ci'][0])}, "
          f"{_fmt(c['kendall_ci'][1])}] | {_fmt(c['spearman'])} |\n")
    w(f"\nseed_kendall = {_fmt(res['seed_kendall'])}, budget_kendall = {_fmt(res['budget_kendall'])} "
      f"(per-seed mean).\n\n")
    w("## Proxies vs short training\n\n| proxy | Kendall tau | 95% CI | Spearman | tau vs params "
      "| beats params | flag | s/arch |\n|---|---|---|---|---|---|---|---|\n")
    def tau(n: str) -> float:
        t = res["proxies"][n]["vs_short_train"]["kendall"]
        return t if math.isfinite(t) else -9.0

    order = sorted(res["proxies"], key=lambda n: -tau(n))
    for n in order:
        e = res["proxies"][n]
        c = e["vs_short_train"]
        vp = e.get("vs_params", {}).get("kendall", math.nan)
        flag = "mostly size" if e["size_dominated"] else ""
        beats = ("—" if n == "params" else
                 ("yes" + (" (CI)" if e["ci_above_params"] else "")) if e["beats_params"] else "no")
        w(f"| {n} | {_fmt(c['kendall'])} | [{_fmt(c['kendall_ci'][0])}, {_fmt(c['kendall_ci'][1])}] "
          f"| {_fmt(c['spearman'])} | {_fmt(vp)} | {beats} | {flag} | {e['s_per_arch']:.2f} |\n")
    im = res["improvement"]
    w(f"\n## Do temporal layers matter?\n\nImage-only model held-out loss: {im['image_only_val_loss']:.5f}. "
      f"Best candidate `{im['best_arch_id']}`: improvement {im['best_improvement_mean']:.5f} "
      f"({100 * im['best_rel_improvement_mean']:.2f}% of the loss; per seed "
      f"{', '.join(f'{v:.5f}' for v in im['best_improvement_per_seed'])}); seed noise (sd of one run) "
      f"{im['seed_noise_sd']:.5f} -> {im['best_over_noise']:.1f} sd. "
      f"{im['candidates_better_than_image_only']}/{im['n_archs']} candidates beat the image-only model.\n\n")
    w(f"Timing: short_train {res['short_train_s_per_arch']:.1f} s per (arch, seed) run to {b[-1]} steps "
      f"({res['short_train_runs_timed']} runs, {res.get('short_train_runs_from_cache', 0)} of them "
      f"read from the result cache with their original timing); zero-cost proxies {res['zero_cost_s_per_arch']:.2f} s "
      f"per arch (mean); audit wall time {res['wall_time_s'] / 60:.1f} min.\n\n")
    for n, e in res["proxies"].items():
        if e.get("one_time"):
            w(f"`{n}` trains once per configuration: {e['one_time']['wall_time_s']:.0f} s wall, "
              f"{e['one_time']['cpu_s']:.0f} CPU-s (cached on disk; not in its s/arch).\n\n")
    best = res.get("best_zero_cost_proxy")
    if best:
        w(f"Best zero-cost proxy by this audit: **{best}** "
          f"(tau {_fmt(res['proxies'][best]['vs_short_train']['kendall'])} vs params "
          f"{_fmt(res['params_kendall_vs_short_train'])}).\n")
    return out.getvalue()


def _csv(res: Mapping[str, Any]) -> str:
    rows = res["per_arch"]
    cols = [k for k in rows[0] if k != "stages"] + ["stages"]
    out = io.StringIO()
    wr = csv.writer(out)
    wr.writerow(cols)
    for r in rows:
        wr.writerow([json.dumps(r[c], sort_keys=True) if c == "stages" else r[c] for c in cols])
    return out.getvalue()


def plot(res: Mapping[str, Any], path: str) -> None:
    """Bar chart of Kendall tau (with CI) per proxy, plus scatter of the best proxy and the
    seed-vs-seed reference."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = sorted(res["proxies"], key=lambda n: -np.nan_to_num(res["proxies"][n]["vs_short_train"]["kendall"], nan=-9))
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    ax = axes[0]
    taus = [res["proxies"][n]["vs_short_train"]["kendall"] for n in names]
    cis = [res["proxies"][n]["vs_short_train"]["kendall_ci"] for n in names]
    err = np.array([[t - lo, hi - t] for t, (lo, hi) in zip(taus, cis)]).T
    colors = ["tab:gray" if n in BASELINES else ("tab:red" if res["proxies"][n]["size_dominated"] else "tab:blue")
              for n in names]
    ax.bar(names, np.nan_to_num(taus), yerr=np.nan_to_num(err), color=colors, capsize=3)
    ax.axhline(res["params_kendall_vs_short_train"], ls="--", c="k", lw=1, label="params")
    ax.axhline(res["seed_kendall"], ls=":", c="g", lw=1, label="short_train seed vs seed")
    ax.set_ylabel("Kendall tau vs short_train")
    ax.set_title("proxy fidelity (95% bootstrap CI)")
    ax.tick_params(axis="x", rotation=45)
    ax.legend(fontsize=8)
    top = res["budgets"][-1]
    rows = res["per_arch"]
    s = res["seeds"]
    ref = [np.mean([r[f"short_train_b{top}_s{x}"] for x in s]) for r in rows]
    ax = axes[1]
    if len(s) >= 2:
        ax.scatter([r[f"short_train_b{top}_s{s[0]}"] for r in rows],
                   [r[f"short_train_b{top}_s{s[1]}"] for r in rows], s=14)
        ax.set_xlabel(f"short_train seed {s[0]}")
        ax.set_ylabel(f"short_train seed {s[1]}")
        ax.set_title(f"seed vs seed, tau {res['seed_kendall']:.2f}")
    ax = axes[2]
    best = res.get("best_zero_cost_proxy") or names[0]
    ax.scatter([r[best] for r in rows], ref, s=14, label=best)
    ax.set_xlabel(best)
    ax.set_ylabel(f"short_train @ {top} (held-out loss gain)")
    ax.set_title(f"best zero-cost proxy: {best}")
    if best in ("synflow",):
        ax.set_xscale("log")
    fig.tight_layout()
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=110, format="png")
    finally:
        plt.close(fig)


def write_report(res: Mapping[str, Any], out_dir: str) -> dict[str, str]:
    """Write ``audit.json``, ``audit.md``, ``archs.csv`` and ``audit.png`` into ``out_dir``."""
    os.makedirs(out_dir, exist_ok=True)
    paths = {k: os.path.join(out_dir, f) for k, f in
             (("json", "audit.json"), ("md", "audit.md"), ("csv", "archs.csv"), ("png", "audit.png"))}
    atomic_write_json(paths["json"], json_safe(res), indent=1)
    atomic_write_text(paths["md"], markdown(res))
    atomic_write_text(paths["csv"], _csv(res))
    plot(res, paths["png"])
    return paths
