"""What a run leaves behind (DESIGN §6): trials.csv, pareto.csv, archs/*.json, plots, report.md.

Everything is derived from the Optuna study (the source of truth) and written atomically, so it
can be regenerated at any time (``temponas pareto RUN``, ``temponas plot RUN``):

- ``trials.csv``: one row per trial (:func:`experiments.trials.trial_record`): state,
  objectives, predictions, constraint values, wall times, failure reason, then per stage
  ``<stage>.kind``, ``.count``, ``.heads``, ``.kernel_t``, ``.kernel_s`` (0 where the kind does
  not use a field), then ``extra.<name>`` for each of the evaluator's extras;
- ``pareto.csv``: the same columns for the feasible front, one row per architecture
  (:func:`experiments.trials.pareto_front`: its earliest trial);
- ``archs/<arch_id>.json``: every architecture seen.

Written as evaluations arrive (not derived from the study): ``evaluations.jsonl``
(:mod:`experiments.cache`) and, with ``evaluator.keep_weights``,
``weights/<arch_id>/s<seed>.safetensors`` (:func:`experiments.rundir.weights_path`).
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from common.fsio import atomic_write_text
from experiments.plots import write_plots
from experiments.report import write_report
from experiments.trials import pareto_front, record_columns, trial_attrs, trial_record

TRIALS_CSV = "trials.csv"
PARETO_CSV = "pareto.csv"
ARCHS_DIR = "archs"


def _fmt(v: Any) -> Any:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return f"{v:.6g}" if math.isfinite(v) else str(v)
    return v


def csv_text(records: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> str:
    """``records`` as CSV text: floats to 6 significant digits, booleans ``true``/``false``,
    unknown values empty. ``columns`` default to :func:`record_columns` of the records."""
    columns = record_columns(records) if columns is None else columns
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(columns), lineterminator="\n", restval="")
    w.writeheader()
    for r in records:
        w.writerow({k: _fmt(v) for k, v in r.items()})
    return buf.getvalue()


def write_outputs(run_dir: Path, *, study: Any, cfg: Any, latency_model: Any = None,
                  plots: bool = True, report: bool = True) -> None:
    """(Re)write trials.csv, pareto.csv, archs/ and, if asked, plots/ and report.md."""
    run_dir = Path(run_dir)
    objectives = list(study.user_attrs.get("objectives", cfg.objectives))
    trials = study.get_trials(deepcopy=False)
    records = [trial_record(t, objectives) for t in trials]
    columns = record_columns(records)
    atomic_write_text(run_dir / TRIALS_CSV, csv_text(records, columns))
    by_number = {r["number"]: r for r in records}
    front = [by_number[t.number] for t in pareto_front(study, trials)]
    atomic_write_text(run_dir / PARETO_CSV, csv_text(front, columns))
    _write_archs(run_dir / ARCHS_DIR, trials)
    if plots:
        write_plots(run_dir, study=study, cfg=cfg, latency_model=latency_model)
    if report:
        write_report(run_dir, study=study, cfg=cfg, latency_model=latency_model)


def _write_archs(archs: Path, trials: Sequence[Any]) -> None:
    for t in trials:
        aid = t.user_attrs.get("arch_id")
        if not aid or (archs / f"{aid}.json").exists():
            continue
        arch_json = trial_attrs(t).get("arch")
        if arch_json:  # derivable from the study: atomic, but no fsync per file
            atomic_write_text(archs / f"{aid}.json",
                              json.dumps(json.loads(arch_json), indent=2, sort_keys=True) + "\n",
                              durable=False)
