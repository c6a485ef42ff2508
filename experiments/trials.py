"""Pure logic over the trials of a search: their rows, feasibility, the Pareto front, failures.

No file or storage IO and no plotting: :mod:`experiments.plots`, :mod:`experiments.report`,
:mod:`experiments.outputs` and :mod:`experiments.analysis` all derive what they show from
these functions (as Optuna's ``study/_multi_objective.py`` sits below its ``visualization/``).
A trial is an Optuna ``FrozenTrial`` as the driver leaves it (user attrs ``arch_id``,
``candidate`` and ``result``, see :func:`trial_attrs`).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from experiments.hypervolume import pareto_mask
from search_space.arch import ArchConfig

#: the fixed columns of trials.csv / pareto.csv, in order; per-stage and extras columns follow
COLUMNS = ("number", "state", "arch_id", "quality", "latency_ms", "latency_low_ms",
           "latency_high_ms", "memory_mb", "params", "flops", "feasible",
           "constraint_latency_ms", "constraint_memory_mb", "budget", "rung", "eval_wall_time_s",
           "eval_cpu_s", "wall_time_s", "cache_hits", "duplicate_of", "not_evaluated",
           "node_ids", "failure_reason")
#: per-stage columns are ``<stage>.<field>``; fields a kind does not use are 0 (as in the arch)
STAGE_FIELDS = ("kind", "count", "heads", "kernel_t", "kernel_s")
#: prefix of the evaluator's extras columns (``extra.flops``, ``extra.val_loss`` ...)
EXTRA_PREFIX = "extra."
_FROM_ATTRS = ("latency_ms", "latency_low_ms", "latency_high_ms", "memory_mb", "params", "flops",
               "eval_wall_time_s", "eval_cpu_s", "wall_time_s", "cache_hits", "failure_reason",
               "quality", "budget", "rung", "duplicate_of", "not_evaluated")


def trial_attrs(t: Any) -> dict[str, Any]:
    """A trial's user attrs with the driver's ``candidate`` (arch JSON and predictions) and
    ``result`` dicts flattened in (``arch``, ``latency_ms``, ``memory_mb``, ``quality``,
    ``node_ids``, ``extras``, ``wall_time_s`` ...)."""
    ua = dict(t.user_attrs)
    for part in ("candidate", "predicted", "result"):
        ua.update(dict(t.user_attrs.get(part) or {}))
    return ua


def result_attr(evaluations: Sequence[Any], wall_time_s: float,
                spent: Sequence[Any] | None = None) -> dict[str, Any]:
    """The ``result`` user attr of a finished trial from its evaluations (one per seed, each
    with ``value``, ``extras``, ``wall_time_s``, ``cpu_s``, ``node_id`` and the ``key`` it
    answers): ``quality`` is their mean (``quality_std`` with several seeds); ``extras`` are the
    first seed's; ``seed_values`` each seed's value (what rebuilds a lost evaluation log).
    ``spent``: every evaluation the trial ran (all rungs of a budget ladder; default
    ``evaluations``): their wall and CPU seconds and nodes."""
    vals = [e.value for e in evaluations]
    spent = evaluations if spent is None else spent
    result: dict[str, Any] = {
        "quality": float(np.mean(vals)), "wall_time_s": wall_time_s,
        "node_ids": sorted({e.node_id for e in spent if e.node_id}),
        "eval_wall_time_s": float(sum(e.wall_time_s for e in spent)),
        "eval_cpu_s": float(sum(getattr(e, "cpu_s", 0.0) for e in spent))}
    seeds = [getattr(getattr(e, "key", None), "seed", None) for e in evaluations]
    if None not in seeds:
        result["seed_values"] = {str(s): float(v) for s, v in zip(seeds, vals)}
    if len(vals) > 1:
        result["quality_std"] = float(np.std(vals))
    if evaluations[0].extras:
        result["extras"] = dict(evaluations[0].extras)
    return result


def is_feasible(t: Any) -> bool:
    """Every constraint value <= 0 (a trial without constraints is feasible)."""
    return all(v <= 0 for v in (getattr(t, "constraints", None) or {}).values())


def stage_columns(arch_json: str | None) -> dict[str, Any]:
    """``{"<stage>.kind": "attn1d", "<stage>.count": 1, "<stage>.heads": 2, ...}`` in backbone
    order; empty without an arch."""
    if not arch_json:
        return {}
    d = json.loads(arch_json)
    stages = d.get("stages", {})
    out: dict[str, Any] = {}
    for sid in d.get("stage_order", sorted(stages)):
        choice = stages.get(sid, {})
        for f in STAGE_FIELDS:
            out[f"{sid}.{f}"] = choice.get(f, "none" if f == "kind" else 0)
    return out


def trial_record(t: Any, objectives: Sequence[str]) -> dict[str, Any]:
    """One row of a trial as Python values (None where unknown): the :data:`COLUMNS`, then the
    per-stage columns, then ``extra.<name>`` for each evaluator extra. Objective values come
    from the study, the rest from the trial's attrs."""
    ua = trial_attrs(t)
    cons = dict(getattr(t, "constraints", None) or {})
    row: dict[str, Any] = dict.fromkeys(COLUMNS)
    row.update(number=t.number, state=t.state.name, arch_id=ua.get("arch_id"))
    for k in _FROM_ATTRS:
        if k in ua:
            row[k] = ua[k]
    if t.values is not None:
        row.update(zip(objectives, t.values))
    if ua.get("not_evaluated"):  # its quality value is a placeholder (see experiments.flow)
        row["quality"] = None
    row["constraint_latency_ms"] = cons.get("latency_ms")
    row["constraint_memory_mb"] = cons.get("memory_mb")
    if t.state.name == "COMPLETE":
        row["feasible"] = is_feasible(t)
    if "node_ids" in ua:
        row["node_ids"] = " ".join(n[:12] for n in ua["node_ids"])
    row.update(stage_columns(ua.get("arch")))
    for name, v in sorted(dict(ua.get("extras") or {}).items()):
        row[f"{EXTRA_PREFIX}{name}"] = v
    return row


def record_columns(records: Iterable[dict[str, Any]]) -> list[str]:
    """Every column of ``records`` in a stable order: :data:`COLUMNS`, the stage columns (in
    backbone order, first seen first), then the extras (sorted)."""
    stage_cols: dict[str, None] = {}
    extras: set[str] = set()
    for r in records:
        for k in r:
            if k.startswith(EXTRA_PREFIX):
                extras.add(k)
            elif k not in COLUMNS:
                stage_cols.setdefault(k)
    return [*COLUMNS, *stage_cols, *sorted(extras)]


# ---- the Pareto front ------------------------------------------------------------------------

def _latency_index(objectives: Sequence[str]) -> int:
    return list(objectives).index("latency_ms") if "latency_ms" in objectives else 1


def front_trials(study: Any, trials: Sequence[Any] | None = None) -> list[Any]:
    """Every trial on the feasible Pareto front, sorted by latency (then trial number).

    The same set as ``study.best_trials`` (COMPLETE trials; only feasible ones when any trial
    has constraints; several trials of one architecture all kept) without its deep copy of
    every trial. See :func:`pareto_front` for one trial per architecture.
    """
    trials = study.get_trials(deepcopy=False) if trials is None else trials
    done = [t for t in trials if t.state.name == "COMPLETE"]
    if any(t.constraints for t in trials):
        done = [t for t in done if is_feasible(t)]
    if not done:
        return []
    signs = np.array([1.0 if d.name == "MINIMIZE" else -1.0 for d in study.directions])
    mask = pareto_mask(np.array([t.values for t in done]) * signs)
    li = _latency_index(study.user_attrs.get("objectives", ["quality", "latency_ms"]))
    return sorted((t for t, m in zip(done, mask) if m), key=lambda t: (t.values[li], t.number))


def unique_by_arch(trials: Iterable[Any]) -> list[Any]:
    """The first trial of each architecture, in the given order (the sampler may propose one
    architecture several times)."""
    seen: set[str] = set()
    out = []
    for t in trials:
        aid = t.user_attrs.get("arch_id", str(t.number))
        if aid not in seen:
            seen.add(aid)
            out.append(t)
    return out


def pareto_front(study: Any, trials: Sequence[Any] | None = None) -> list[Any]:
    """The feasible Pareto front with one trial per architecture, sorted by latency.

    Each architecture is represented by its *earliest* trial on the front (lowest trial
    number): every trial of one architecture gets the same evaluation (cached by arch_id) and
    the same predicted latency, so later ones only repeat it. This is what ``pareto.csv``,
    ``report.md``, the plots and ``temponas export`` count as the front.
    """
    front = front_trials(study, trials)
    earliest = {id(t) for t in unique_by_arch(sorted(front, key=lambda t: t.number))}
    return [t for t in front if id(t) in earliest]


# ---- failures --------------------------------------------------------------------------------

def failure_kind(reason: str) -> str:
    """The kind of a failure reason: its text before the first ``:`` (``timeout``, ``memory``,
    ``evaluator raised RuntimeError`` ...)."""
    return reason.split(":", 1)[0].strip() or "unknown"


def failures_by_reason(trials: Iterable[Any]) -> dict[str, list[str]]:
    """Reasons of FAIL/PRUNED trials and of trials never evaluated (over the memory budget),
    grouped by :func:`failure_kind`, most frequent kind first; repeats of an architecture
    (``duplicate_of``) are left out (their first trial counts)."""
    groups: dict[str, list[str]] = {}
    for t in trials:
        if t.user_attrs.get("duplicate_of") is not None:
            continue
        if t.state.name in ("FAIL", "PRUNED") or t.user_attrs.get("not_evaluated"):
            r = str(t.user_attrs.get("failure_reason", "unknown"))
            groups.setdefault(failure_kind(r), []).append(r)
    order = Counter({k: len(v) for k, v in groups.items()})
    return {k: groups[k] for k, _ in order.most_common()}


# ---- a human summary of an architecture ----------------------------------------------------

def stage_summary(arch_json: str | None) -> str:
    """``"down1:attn1dx1(h2) mid:conv1dx2(k3)"``: the temporal layers of an arch, one token per
    stage that has any."""
    if not arch_json:
        return ""
    arch = ArchConfig.from_json(arch_json)
    parts = []
    for sid, c in arch.stages:
        if c.is_none:
            continue
        detail = f"h{c.heads}" if c.kind.is_attention else (
            f"k{c.kernel_t}x{c.kernel_s}" if c.kind.uses_kernel_s else f"k{c.kernel_t}")
        parts.append(f"{sid}:{c.kind.value}x{c.count}({detail})")
    return " ".join(parts) or "no temporal layers"
