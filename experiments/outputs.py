"""What a run leaves behind (DESIGN §6): trials.csv, pareto.csv, archs/*.json, plots, report.md.

Everything is derived from the Optuna study (the source of truth) and written atomically, so it
can be regenerated at any time (``temponas pareto RUN``, ``temponas plot RUN``).
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.fsio import atomic_write_text
from experiments.fsio import RunDirError

COLUMNS = ("number", "state", "arch_id", "quality", "latency_ms", "latency_low_ms",
           "latency_high_ms", "memory_mb", "params", "flops", "feasible",
           "constraint_latency_ms", "constraint_memory_mb", "eval_wall_time_s", "wall_time_s",
           "cache_hits", "node_ids", "failure_reason")


def trial_attrs(t: Any) -> dict[str, Any]:
    """A trial's user attrs with the driver's ``candidate`` (arch JSON and predictions) and
    ``result`` dicts flattened in (``arch``, ``latency_ms``, ``memory_mb``, ``quality``,
    ``node_ids``, ``wall_time_s`` ...)."""
    ua = dict(t.user_attrs)
    for part in ("candidate", "predicted", "result"):
        ua.update(dict(t.user_attrs.get(part) or {}))
    return ua


def trial_row(t: Any, objectives: Sequence[str]) -> dict[str, Any]:
    """One CSV row of a FrozenTrial (objective values from the study, the rest from attrs)."""
    ua = trial_attrs(t)
    cons = dict(getattr(t, "constraints", {}) or {})
    row: dict[str, Any] = dict.fromkeys(COLUMNS, "")
    row.update(number=t.number, state=t.state.name, arch_id=ua.get("arch_id", ""))
    for k in ("latency_ms", "latency_low_ms", "latency_high_ms", "memory_mb", "params", "flops",
              "eval_wall_time_s", "wall_time_s", "cache_hits", "failure_reason", "quality"):
        if k in ua:
            row[k] = ua[k]
    if t.values is not None:
        for name, v in zip(objectives, t.values):
            row[name] = v
    if "latency_ms" in cons:
        row["constraint_latency_ms"] = cons["latency_ms"]
    if "memory_mb" in cons:
        row["constraint_memory_mb"] = cons["memory_mb"]
    if t.state.name == "COMPLETE":
        row["feasible"] = all(v <= 0 for v in cons.values())
    row["node_ids"] = " ".join(n[:12] for n in ua.get("node_ids", []))
    return {k: _fmt(v) for k, v in row.items()}


def _fmt(v: Any) -> Any:
    if isinstance(v, float):
        return f"{v:.6g}" if math.isfinite(v) else str(v)
    if isinstance(v, bool):
        return "true" if v else "false"
    return v


def _csv_text(rows: Iterable[dict[str, Any]]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow(r)
    return buf.getvalue()


def front_trials(study: Any, trials: Sequence[Any] | None = None) -> list[Any]:
    """The feasible Pareto front, sorted by latency (then trial number).

    The same set as ``study.best_trials`` (COMPLETE trials; only feasible ones when any trial
    has constraints; duplicates of a front point all kept) without its deep copy of every trial.
    """
    import numpy as np

    from experiments.hypervolume import pareto_mask

    trials = study.get_trials(deepcopy=False) if trials is None else trials
    done = [t for t in trials if t.state.name == "COMPLETE"]
    if any(t.constraints for t in trials):
        done = [t for t in done if all(v <= 0 for v in t.constraints.values())]
    signs = np.array([1.0 if d.name == "MINIMIZE" else -1.0 for d in study.directions])
    best = ([t for t, m in zip(done, pareto_mask(np.array([t.values for t in done]) * signs)) if m]
            if done else [])
    objs = list(study.user_attrs.get("objectives", ["quality", "latency_ms"]))
    li = objs.index("latency_ms") if "latency_ms" in objs else 1
    return sorted(best, key=lambda t: (t.values[li], t.number))


def unique_by_arch(trials: Iterable[Any]) -> list[Any]:
    """First trial of each architecture (the sampler may propose the same one twice)."""
    seen: set[str] = set()
    out = []
    for t in trials:
        aid = t.user_attrs.get("arch_id", str(t.number))
        if aid not in seen:
            seen.add(aid)
            out.append(t)
    return out


def write_outputs(run_dir: Path, *, study: Any, cfg: Any, latency_model: Any = None,
                  plots: bool = True, report: bool = True) -> None:
    """(Re)write trials.csv, pareto.csv, archs/ and, if asked, plots/ and report.md."""
    run_dir = Path(run_dir)
    objectives = list(study.user_attrs.get("objectives", cfg.objectives))
    trials = study.get_trials(deepcopy=False)
    atomic_write_text(run_dir / "trials.csv", _csv_text(trial_row(t, objectives) for t in trials))
    front = front_trials(study, trials)
    atomic_write_text(run_dir / "pareto.csv", _csv_text(trial_row(t, objectives) for t in front))
    archs = run_dir / "archs"
    for t in trials:
        aid = t.user_attrs.get("arch_id")
        if not aid or (archs / f"{aid}.json").exists():
            continue
        arch_json = trial_attrs(t).get("arch")
        if arch_json:  # derivable from the study: atomic, but no fsync per file
            atomic_write_text(archs / f"{aid}.json",
                              json.dumps(json.loads(arch_json), indent=2, sort_keys=True) + "\n",
                              durable=False)
    if plots:
        from experiments.plots import write_plots

        write_plots(run_dir, study=study, cfg=cfg, latency_model=latency_model)
    if report:
        from experiments.report import write_report

        write_report(run_dir, study=study, cfg=cfg, latency_model=latency_model)


# ---- reading a finished run back ------------------------------------------------------------

@dataclass
class Run:
    """A run directory opened for reading (pareto/plot/export commands)."""

    run_dir: Path
    cfg: Any
    study: Any


def open_run(run_dir: str | Path) -> Run:
    """Open ``run_dir``'s config and study read-only; clear errors for anything missing."""
    import optuna

    from experiments.config import load_config
    from experiments.runner import RUN_FILE, RUN_FORMAT_VERSION
    from experiments.study import open_storage

    d = Path(run_dir)
    if not d.is_dir():
        raise RunDirError(f"{d}: no such run directory")
    meta_path = d / RUN_FILE
    if not meta_path.exists():
        raise RunDirError(f"{d}: not a temponas run directory (no {RUN_FILE})")
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError):
        raise RunDirError(f"{meta_path}: unreadable or corrupt run metadata") from None
    if not isinstance(meta, dict) or meta.get("format_version") != RUN_FORMAT_VERSION:
        raise RunDirError(f"{meta_path}: written by an incompatible temponas (run format "
                          f"{meta.get('format_version') if isinstance(meta, dict) else '?'!r})")
    cfg = load_config(d / "config.yaml")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = open_storage(meta.get("storage"), d)
    try:
        study = optuna.load_study(study_name=meta["study_name"], storage=storage)
    except KeyError:
        raise RunDirError(f"{d}: the storage holds no study {meta.get('study_name')!r}") from None
    return Run(d, cfg, study)


def failures_by_reason(trials: Iterable[Any]) -> Counter:
    """Count FAIL/PRUNED trials by the kind of reason (text before the first ':')."""
    c: Counter = Counter()
    for t in trials:
        if t.state.name in ("FAIL", "PRUNED"):
            r = str(t.user_attrs.get("failure_reason", "unknown"))
            c[r.split(":", 1)[0].strip() or "unknown"] += 1
    return c
