"""``report.md``: a run explained top to bottom (setup, budgets, front, failures, next steps)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from common.fsio import atomic_write_text


def _stage_summary(arch_json: str | None) -> str:
    if not arch_json:
        return ""
    from search_space.arch import ArchConfig

    arch = ArchConfig.from_json(arch_json)
    parts = []
    for sid, c in arch.stages:
        if c.is_none:
            continue
        detail = f"h{c.heads}" if c.kind.is_attention else (
            f"k{c.kernel_t}x{c.kernel_s}" if c.kind.uses_kernel_s else f"k{c.kernel_t}")
        parts.append(f"{sid}:{c.kind.value}x{c.count}({detail})")
    return " ".join(parts) or "no temporal layers"


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


def write_report(run_dir: Path, *, study: Any, cfg: Any, latency_model: Any = None) -> None:
    from experiments.outputs import failures_by_reason, front_trials, trial_attrs, unique_by_arch
    from experiments.study import storage_location

    run_dir = Path(run_dir)
    trials = study.get_trials(deepcopy=False)
    by_state: dict[str, int] = {}
    for t in trials:
        by_state[t.state.name] = by_state.get(t.state.name, 0) + 1
    objs = list(study.user_attrs.get("objectives", cfg.objectives))
    dirs = [d.name.lower() for d in study.directions]
    front = unique_by_arch(front_trials(study))
    space = cfg.search_space
    c = cfg.constraints
    ev = cfg.evaluator
    L: list[str] = []
    L += [f"# temponas search `{cfg.name}`", ""]
    L += ["Which temporal layers go where in the "
          f"`{cfg.backbone if isinstance(cfg.backbone, str) else 'custom'}` UNet: each candidate "
          "is scored by a quality proxy and by the latency a device model predicts, under the "
          "budgets below; this page lists the Pareto-optimal candidates.", ""]
    L += ["## Setup", ""]
    t = cfg.video_task
    L += [f"- backbone: `{cfg.backbone_spec.name}`; task: {t.num_frames} frames of "
          f"{t.latent_height}x{t.latent_width} latents, batch {t.batch}, {t.text_tokens} text tokens",
          f"- search space: {space.size():,} distinct architectures "
          f"({len(space.distributions())} Optuna parameters)",
          f"- quality proxy: `{ev.name}` ({dirs[objs.index('quality')]}), options "
          f"`{dict(ev.options) or {}}`, budget {ev.budget}, seeds {list(ev.seeds)}",
          f"- latency model: `{cfg.latency_model}`" + (f" ({_latency_meta(latency_model)})"
                                                      if _latency_meta(latency_model) else ""),
          *([f"- latency model accuracy: {_heldout(latency_model)}"] if _heldout(latency_model)
            else ["- latency model accuracy: a prior, not calibrated on this device's measurements; "
                  "the intervals come from transfers between devices (docs/latency.md: calibrate "
                  "on your phone)"] if _latency_meta(latency_model) and "prior" in _latency_meta(latency_model)
            else []),
          "- objectives: " + ", ".join(f"{o} ({d})" for o, d in zip(objs, dirs)),
          f"- sampler: `{cfg.search.sampler}` {dict(cfg.search.sampler_options) or ''}, seed "
          f"{cfg.search.seed}; {cfg.search.workers} Ray worker(s); target {cfg.search.n_trials} trials",
          f"- storage: `{storage_location(cfg.search.storage, run_dir)}`", ""]
    L += ["## Budgets", ""]
    L += ["- latency: " + (f"<= {c.latency_budget_ms:g} ms per denoiser call (predicted mean); "
                           "slower candidates are evaluated but cannot enter the front"
                           if c.latency_budget_ms is not None else "none"),
          "- memory: " + (f"<= {c.memory_budget_mb:g} MB (fp16 weights + peak activation); "
                          "larger candidates are never evaluated (trial PRUNED)"
                          if c.memory_budget_mb is not None else "none"), ""]
    L += ["## Trials", ""]
    L += ["| state | trials |", "|---|---|"]
    L += [f"| {k} | {v} |" for k, v in sorted(by_state.items())]
    L += [""]
    L += [f"## Pareto front ({len(front)} architectures)", ""]
    if front:
        qd = "higher" if dirs[objs.index("quality")] == "maximize" else "lower"
        L += [f"Sorted by predicted latency; quality: {qd} is better. Interval = the latency "
              "model's prediction interval.", ""]
        L += ["| arch_id | trial | quality | latency ms [interval] | memory MB | params (M) | temporal layers |",
              "|---|---|---|---|---|---|---|"]
        for tr in front:
            ua = trial_attrs(tr)
            q = tr.values[objs.index("quality")]
            L.append(f"| `{ua.get('arch_id', '')}` | {tr.number} | {q:.5g} | "
                     f"{ua.get('latency_ms', float('nan')):.1f} [{ua.get('latency_low_ms', float('nan')):.1f}, "
                     f"{ua.get('latency_high_ms', float('nan')):.1f}] | {ua.get('memory_mb', float('nan')):.0f} | "
                     f"{ua.get('params', 0) / 1e6:.1f} | {_stage_summary(ua.get('arch'))} |")
    else:
        L += ["No feasible complete trial yet (see failures below; relax a budget or run more trials)."]
    L += [""]
    fails = failures_by_reason(trials)
    L += ["## Failures and pruned trials by reason", ""]
    if fails:
        L += ["| reason | trials | example |", "|---|---|---|"]
        for reason, n in fails.most_common():
            ex = next((str(t.user_attrs.get("failure_reason", "")) for t in trials
                       if t.state.name in ("FAIL", "PRUNED")
                       and str(t.user_attrs.get("failure_reason", "unknown")).split(":", 1)[0].strip() == reason), "")
            L.append(f"| {reason} | {n} | {ex.replace('|', '/')[:160]} |")
    else:
        L += ["None."]
    L += [""]
    plots = sorted((run_dir / "plots").glob("*.png")) if (run_dir / "plots").exists() else []
    if plots:
        L += ["## Plots", ""]
        for p in plots:
            L += [f"![{p.stem}](plots/{p.name})", ""]
    L += ["## Files", "",
          "- `trials.csv`: one row per trial (state, objectives, constraint values, latency "
          "interval, memory, params, wall time, failure reason)",
          "- `pareto.csv`: the feasible front, same columns; `archs/<arch_id>.json`: every "
          "architecture seen",
          "- `evaluations.jsonl`: every finished evaluation (the cache a resume reads)",
          "- `config.yaml`: the resolved config; `study.journal`: the Optuna study", ""]
    L += ["## Next steps", "", "```sh"]
    ex_id = front[0].user_attrs.get("arch_id", "ARCH_ID") if front else "ARCH_ID"
    L += [f"temponas export {run_dir} --arch-id {ex_id} --format coreml --out export/   # or json, torch",
          f"temponas search {run_dir / 'config.yaml'} --out {run_dir} --resume --n-trials "
          f"{cfg.search.n_trials * 2}   # continue the search",
          f"temponas plot {run_dir}     # redraw plots/ and this report",
          f"optuna-dashboard {storage_location(cfg.search.storage, run_dir)}   "
          "# pip install optuna-dashboard; serves http://127.0.0.1:8080", "```", ""]
    atomic_write_text(run_dir / "report.md", "\n".join(L))
