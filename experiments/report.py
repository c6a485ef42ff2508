"""``report.md``: a run explained top to bottom (setup, budgets, front, failures, next steps)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from common.fsio import atomic_write_text
from experiments.ledger import is_duplicate
from experiments.storage_url import MASK, PASSWORD_ENV, has_credentials, mask_url
from experiments.study import storage_location
from experiments.trials import failures_by_reason, pareto_front, stage_summary, trial_attrs

#: The fidelity audit's committed full run (``benchmarks/proxy_fidelity.py --json``). Its
#: ``heldout`` maps a proxy to its Kendall tau against short training on a sample of
#: architectures the default proxy was NOT chosen on (``heldout_kendall_ci``: 95% bootstrap
#: intervals; ``n_archs``, ``heldout_sample_seed``). The report quotes the run's proxy from it;
#: a checkout without the file (or without ``heldout``) says the number is not measured.
PROXY_FIDELITY_JSON = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / \
    "proxy_fidelity.json"


def proxy_heldout(name: str, path: Path | None = None) -> dict[str, Any] | None:
    """``{"kendall", "ci", "n_archs", "sample_seed", "source"}`` of proxy ``name`` on the
    audit's held-out sample; None if not measured."""
    path = PROXY_FIDELITY_JSON if path is None else Path(path)
    try:
        d = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    tau = (d.get("heldout") or {}).get(name) if isinstance(d, dict) else None
    if not isinstance(tau, (int, float)):
        return None
    return {"kendall": float(tau), "ci": (d.get("heldout_kendall_ci") or {}).get(name),
            "n_archs": d.get("n_archs"), "sample_seed": d.get("heldout_sample_seed"),
            "source": str(path.name)}


def _proxy_line(cfg: Any) -> str:
    ev = cfg.evaluator.name
    if ev == "short_train":
        return ("- quality proxy fidelity: `short_train` is the reference the audit ranks the "
                "other proxies against (docs/proxies.md)")
    h = proxy_heldout(ev)
    if h is None:
        return (f"- quality proxy fidelity: `{ev}` has no held-out Kendall τ against short "
                f"training yet (benchmarks/proxy_fidelity.py --json writes `heldout`)")
    ci = h["ci"]
    ci_txt = f" [{ci[0]:+.2f}, {ci[1]:+.2f}]" if isinstance(ci, (list, tuple)) and len(ci) == 2 else ""
    n = f"{h['n_archs']} " if h["n_archs"] else ""
    return (f"- quality proxy fidelity: `{ev}` ranks candidates like short training with Kendall "
            f"τ {h['kendall']:+.2f}{ci_txt} (95% CI) on {n}held-out snapgen_v architectures at "
            f"proxy scale, a sample it was not chosen on (benchmarks/results/{h['source']})")


def _latency_meta(model: Any) -> str:
    if model is None:
        return ""
    try:
        meta = dict(model.metadata)
    except Exception:
        return ""
    keys = ("device", "kind", "predictor", "backend", "compute_units", "precision")
    return ", ".join(f"{k}: {meta[k]}" for k in keys if k in meta and meta[k] not in (None, ""))


def _heldout(model: Any) -> str:
    try:
        h = dict(model.metadata).get("heldout") or {}
    except Exception:
        return ""
    parts = []
    for what in ("network", "block"):
        acc = h.get(what)
        if isinstance(acc, dict) and acc.get("n"):
            parts.append(f"held-out {what}s ({acc['n']}): MAPE {acc.get('mape_pct', float('nan')):.1f}%, "
                         f"{100 * acc.get('within_10pct', float('nan')):.0f}% within ±10%, "
                         f"Kendall {acc.get('kendall', float('nan')):.2f}")
    return "; ".join(parts)


def _prior_validation(model: Any) -> str:
    """How a shipped prior did on published networks it was not fitted on ('' for others)."""
    try:
        meta = dict(model.metadata)
    except Exception:
        return ""
    v, fo = meta.get("validation") or {}, meta.get("fitted_on") or {}
    if not v:
        return ""
    where = ("no published row on this chip: borrowed from the neighbouring Neural Engine "
             "generation" if fo.get("borrowed") else
             f"{fo.get('rows_on_this_chip', '?')} published rows on this chip")
    return (f"a prior (cross-family Neural Engine cost model, not calibrated on your device): on "
            f"public Core ML latencies of network families left out of the fit, median |error| "
            f"{v['lofo_median_abs_pct']:.1f}% (p90 {v['lofo_p90_abs_pct']:.0f}%), 90% interval "
            f"coverage {v['interval_coverage_90']:.2f}; SD-2.1-base from a fit without any SD row "
            f"{v['sd_excluded_median_abs_pct']:.1f}%; {where} (docs/latency.md)")


def write_report(run_dir: Path, *, study: Any, cfg: Any, latency_model: Any = None) -> None:
    """Write ``report.md`` of a run from its study (the front: :func:`pareto_front`)."""
    run_dir = Path(run_dir)
    trials = study.get_trials(deepcopy=False)
    objs = list(study.user_attrs.get("objectives", cfg.objectives))
    dirs = [d.name.lower() for d in study.directions]
    front = pareto_front(study, trials)
    L: list[str] = [f"# temponas search `{cfg.name}`", "",
                    "Which temporal layers go where in the "
                    f"`{cfg.backbone if isinstance(cfg.backbone, str) else 'custom'}` UNet: each "
                    "candidate is scored by a quality proxy and by the latency a device model "
                    "predicts, under the budgets below; this page lists the Pareto-optimal "
                    "candidates.", ""]
    L += _setup_section(run_dir, cfg, objs, dirs, latency_model)
    L += _budgets_section(cfg)
    L += _trials_section(trials)
    L += _ladder_section(cfg, trials)
    L += _front_section(front, objs, dirs)
    L += _failures_section(trials)
    plots = sorted((run_dir / "plots").glob("*.png")) if (run_dir / "plots").exists() else []
    if plots:
        L += ["## Plots", ""]
        for p in plots:
            L += [f"![{p.stem}](plots/{p.name})", ""]
    L += ["## Files", "",
          "- `trials.csv`: one row per trial (state, objectives, constraint values, latency "
          "interval, memory, params, wall time, failure reason, per-stage `<stage>.kind`/"
          "`.count`/`.heads`/`.kernel_t`/`.kernel_s`, the evaluator's `extra.<name>`)",
          "- `pareto.csv`: the feasible front, one row per architecture (its earliest trial), "
          "same columns; `archs/<arch_id>.json`: every architecture seen",
          "- `evaluations.jsonl`: every finished evaluation (the cache a resume reads; CPU "
          "seconds, node)",
          "- `checkpoints/`: training state of candidates mid-ladder (multi-fidelity only; "
          "removed when a candidate's ladder ends)",
          "- `config.yaml`: the resolved config; `study.journal`: the Optuna study", ""]
    L += _next_steps_section(run_dir, cfg, front)
    private = has_credentials(cfg.search.storage)  # user, host and database of the storage
    atomic_write_text(run_dir / "report.md", "\n".join(L), perm=0o600 if private else None)


def _setup_section(run_dir: Path, cfg: Any, objs: list[str], dirs: list[str],
                   latency_model: Any) -> list[str]:
    space, ev, t = cfg.search_space, cfg.evaluator, cfg.video_task
    meta, heldout = _latency_meta(latency_model), _heldout(latency_model)
    prior = _prior_validation(latency_model)
    if prior:
        accuracy = [f"- latency model accuracy: {prior}"]
    elif heldout:
        accuracy = [f"- latency model accuracy: {heldout}"]
    elif meta and "prior" in meta:
        accuracy = ["- latency model accuracy: a prior, not calibrated on this device's "
                    "measurements; the intervals come from transfers between devices "
                    "(docs/latency.md: calibrate on your phone)"]
    else:
        accuracy = []
    return ["## Setup", "",
            f"- backbone: `{cfg.backbone_spec.name}`; task: {t.num_frames} frames of "
            f"{t.latent_height}x{t.latent_width} latents, batch {t.batch}, {t.text_tokens} text tokens",
            f"- search space: {space.size():,} distinct architectures "
            f"({len(space.distributions())} Optuna parameters)",
            f"- quality proxy: `{ev.name}` ({dirs[objs.index('quality')]}), options "
            f"`{dict(ev.options) or {}}`, budget {ev.budget}, seeds {list(ev.seeds)}",
            _proxy_line(cfg),
            f"- latency model: `{cfg.latency_model}`" + (f" ({meta})" if meta else ""),
            *accuracy,
            "- objectives: " + ", ".join(f"{o} ({d})" for o, d in zip(objs, dirs)),
            f"- sampler: `{cfg.search.sampler}` {dict(cfg.search.sampler_options) or ''}, seed "
            f"{cfg.search.seed}; {cfg.search.workers} Ray worker(s); target {cfg.search.n_trials} trials",
            f"- storage: `{storage_location(cfg.search.storage, run_dir)}`", ""]


def _budgets_section(cfg: Any) -> list[str]:
    c = cfg.constraints
    return ["## Budgets", "",
            "- latency: " + (f"<= {c.latency_budget_ms:g} ms per denoiser call (predicted mean); "
                             "slower candidates are evaluated but cannot enter the front"
                             if c.latency_budget_ms is not None else "none"),
            "- memory: " + (f"<= {c.memory_budget_mb:g} MB (fp16 weights + peak activation); "
                            "larger candidates are never evaluated (told COMPLETE with the "
                            "worst quality and the violated constraint, so the sampler learns "
                            "the region; never on the front)"
                            if c.memory_budget_mb is not None else "none"), ""]


def _trials_section(trials: list[Any]) -> list[str]:
    counted = [t for t in trials if not is_duplicate(t)]
    by_state = Counter(t.state.name for t in counted)
    over = sum(1 for t in counted if t.user_attrs.get("not_evaluated"))
    repeats = len(trials) - len(counted)
    hits = sum(int(t.user_attrs.get("cache_hits", 0)) for t in counted)
    L = (["## Trials", "", "| state | trials |", "|---|---|"]
         + [f"| {k} | {v} |" for k, v in sorted(by_state.items())] + [""])
    if over:
        L += [f"{over} COMPLETE trial(s) were over the memory budget and never evaluated.", ""]
    L += [f"Every evaluation counts once: {repeats} repeated proposal(s) of the sampler were "
          f"told their architecture's first outcome and are not counted above (`duplicate_of` "
          f"in trials.csv); {hits} evaluation(s) came from the run's cache (finished before a "
          f"restart).", ""]
    return L


def _ladder_section(cfg: Any, trials: list[Any]) -> list[str]:
    """Successive halving / Hyperband: how many candidates stopped at which rung, and the
    evaluation CPU seconds spent."""
    p = cfg.search.pruner
    if p.name == "none":
        return []
    from experiments.ladder import rung_budgets

    budgets = rung_budgets(p.min_budget, p.reduction_factor, cfg.evaluator.budget)
    counted = [t for t in trials if not is_duplicate(t) and t.state.name in ("COMPLETE", "PRUNED")
               and "rung" in (t.user_attrs.get("result") or {})]
    reached = Counter(int(t.user_attrs["result"]["rung"]) for t in counted)
    cpu = sum(float((t.user_attrs.get("result") or {}).get("eval_cpu_s", 0.0)) for t in counted)
    L = ["## Budget ladder", "",
         f"`{p.name}` (reduction factor {p.reduction_factor}) over budgets {budgets}: each rung "
         f"trains on from the rung below (checkpoints in `checkpoints/`); candidates compete "
         f"within {p.latency_buckets} predicted-latency bucket(s) (rung studies "
         f"`{cfg.name}.rungs<k>` in the same storage); lower rungs are scored on "
         f"{p.rung_val_fraction:.0%} of the held-out data. Evaluation CPU time: {cpu:.0f} s.", "",
         "| stopped at rung | budget | candidates |", "|---|---|---|"]
    L += [f"| {k}{' (top)' if k == len(budgets) - 1 else ''} | {b} | {reached.get(k, 0)} |"
          for k, b in enumerate(budgets)]
    return L + [""]


def _front_section(front: list[Any], objs: list[str], dirs: list[str]) -> list[str]:
    L = [f"## Pareto front ({len(front)} architectures)", ""]
    if not front:
        return L + ["No feasible complete trial yet (see failures below; relax a budget or run "
                    "more trials).", ""]
    qi = objs.index("quality")
    qd = "higher" if dirs[qi] == "maximize" else "lower"
    L += [f"Sorted by predicted latency; quality: {qd} is better. Interval = the latency "
          "model's prediction interval.", "",
          "| arch_id | trial | quality | latency ms [interval] | memory MB | params (M) | temporal layers |",
          "|---|---|---|---|---|---|---|"]
    nan = float("nan")
    for tr in front:
        ua = trial_attrs(tr)
        L.append(f"| `{ua.get('arch_id', '')}` | {tr.number} | {tr.values[qi]:.5g} | "
                 f"{ua.get('latency_ms', nan):.1f} [{ua.get('latency_low_ms', nan):.1f}, "
                 f"{ua.get('latency_high_ms', nan):.1f}] | {ua.get('memory_mb', nan):.0f} | "
                 f"{ua.get('params', 0) / 1e6:.1f} | {stage_summary(ua.get('arch'))} |")
    return L + [""]


def _failures_section(trials: list[Any]) -> list[str]:
    fails = failures_by_reason(trials)
    L = ["## Failures and pruned trials by reason", ""]
    if not fails:
        return L + ["None.", ""]
    L += ["| reason | trials | example |", "|---|---|---|"]
    for kind, reasons in fails.items():
        L.append(f"| {kind} | {len(reasons)} | {reasons[0].replace('|', '/')[:160]} |")
    return L + [""]


def _next_steps_section(run_dir: Path, cfg: Any, front: list[Any]) -> list[str]:
    ex_id = front[0].user_attrs.get("arch_id", "ARCH_ID") if front else "ARCH_ID"
    where = storage_location(cfg.search.storage, run_dir)
    return ["## Next steps", "", "```sh",
            f"temponas export {run_dir} --arch-id {ex_id} --format coreml --out export/   # or json, torch",
            f"temponas search {run_dir / 'config.yaml'} --out {run_dir} --resume --n-trials "
            f"{cfg.search.n_trials * 2}   # continue the search",
            f"temponas plot {run_dir}     # redraw plots/ and this report",
            f"optuna-dashboard {where}   # pip install optuna-dashboard; serves http://127.0.0.1:8080",
            "```", ""] + ([f"The storage password is not kept with the run (`{MASK}`): set "
                          f"`{PASSWORD_ENV}` before these commands.", ""]
                         if MASK in (mask_url(cfg.search.storage) or "") else [])
