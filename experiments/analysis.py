"""A run folder as pandas DataFrames: :func:`load_run`.

The rows are those of ``trials.csv`` / ``pareto.csv`` (:func:`experiments.trials.trial_record`),
built from the run's Optuna study, so a run written by any temponas with run format 1 loads
with every column, the per-stage ones included. pandas is imported lazily.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from experiments.config import ExperimentConfig
from experiments.rundir import RunMeta, open_run
from experiments.trials import (
    EXTRA_PREFIX,
    STAGE_FIELDS,
    pareto_front,
    record_columns,
    trial_record,
)
from search_space.arch import TemporalKind

#: Optuna's trial states (``optuna.trial.TrialState`` names)
STATES = ("COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING")
_INT_COLUMNS = ("params", "cache_hits")
_STRING_COLUMNS = ("arch_id", "node_ids", "failure_reason")


@dataclass(frozen=True)
class RunData:
    """A loaded run. ``trials``: one row per trial; ``front``: the feasible Pareto front, one
    row per architecture (its earliest trial), sorted by latency; both with the same columns
    and dtypes (see :func:`trials_frame`). ``meta``: ``run.json``; ``config``: ``config.yaml``."""

    path: Path
    trials: Any  # pandas.DataFrame
    front: Any  # pandas.DataFrame
    meta: RunMeta
    config: ExperimentConfig

    @property
    def stages(self) -> list[str]:
        """Stage ids in backbone order (``down0``, ..., ``mid``, ``up0``, ...)."""
        return [c.removesuffix(".kind") for c in self.trials.columns if c.endswith(".kind")]


def load_run(path: str | Path) -> RunData:
    """Read the run folder ``path`` (what ``temponas search`` wrote) for analysis.

    Nothing is written. Errors name the folder (:class:`~experiments.rundir.RunDirError`,
    ``ConfigError``).
    """
    run = open_run(path)
    objectives = list(run.study.user_attrs.get("objectives", run.cfg.objectives))
    trials = run.study.get_trials(deepcopy=False)
    records = [trial_record(t, objectives) for t in trials]
    columns = record_columns(records)
    by_number = {r["number"]: r for r in records}
    front = [by_number[t.number] for t in pareto_front(run.study, trials)]
    return RunData(run.run_dir, trials_frame(records, columns), trials_frame(front, columns),
                   run.meta, run.cfg)


def trials_frame(records: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> Any:
    """Trial records as a DataFrame with proper dtypes: ``number`` int64; ``state`` and
    ``<stage>.kind`` categoricals (every state / every temporal kind as categories); counts,
    heads, kernels, ``params`` and ``cache_hits`` nullable ``Int64``; ``feasible`` nullable
    ``boolean`` (known for COMPLETE trials only); ``arch_id``, ``node_ids``,
    ``failure_reason`` ``string``; every other column float64."""
    import pandas as pd

    columns = list(record_columns(records) if columns is None else columns)
    df = pd.DataFrame.from_records(list(records), columns=columns)
    kinds = pd.CategoricalDtype([k.value for k in TemporalKind])
    dtypes: dict[str, Any] = {}
    for c in columns:
        field = c.rsplit(".", 1)[-1] if "." in c and not c.startswith(EXTRA_PREFIX) else None
        if c == "number":
            dtypes[c] = "int64"
        elif c == "state":
            dtypes[c] = pd.CategoricalDtype(STATES)
        elif c == "feasible":
            dtypes[c] = "boolean"
        elif c in _STRING_COLUMNS:
            dtypes[c] = "string"
        elif field == "kind":
            dtypes[c] = kinds
        elif c in _INT_COLUMNS or field in STAGE_FIELDS:
            dtypes[c] = "Int64"
        else:
            dtypes[c] = "float64"
    return df.astype(dtypes)
