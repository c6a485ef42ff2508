"""temponas experiments: configs, the Optuna + Ray search, run folders and their analysis.

Run a search and read it back::

    from experiments import SearchOptions, load_config, load_run, run_search

    run_search(load_config("experiments/configs/smoke.yaml"), SearchOptions(out="runs/smoke"))
    run = load_run("runs/smoke")        # trials / front as pandas DataFrames, meta, config
    run.front.groupby("mid.kind", observed=True)[["quality", "latency_ms"]].median()

Modules from the ground floor up (each imports only modules listed before it):
:mod:`~experiments.storage_url` (storage URLs without their password),
:mod:`~experiments.storage_lock` (one search per study),
:mod:`~experiments.config` (YAML -> ExperimentConfig), :mod:`~experiments.study` (Optuna
storage, samplers, resume), :mod:`~experiments.cache` (the evaluation log),
:mod:`~experiments.hypervolume`, :mod:`~experiments.trials` (pure: rows, front, failures),
:mod:`~experiments.rundir` (run.json, the lock, the study, open_run), :mod:`~experiments.plots`,
:mod:`~experiments.report`, :mod:`~experiments.outputs` (writes the run folder),
:mod:`~experiments.analysis` (load_run), :mod:`~experiments.distributed` (Ray and the
evaluation task), :mod:`~experiments.scheduler` (evaluations in flight),
:mod:`~experiments.runner` (the ask/tell driver), :mod:`~experiments.export`, then the CLI.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

#: public name -> the module that defines it. Loaded on first use (PEP 562), so that
#: ``import experiments.config`` (the CLI, Ray workers) does not import the whole package.
_EXPORTS = {
    "RunData": "analysis", "load_run": "analysis", "trials_frame": "analysis",
    "ExperimentConfig": "config", "dump_config": "config", "load_config": "config",
    "parse_config": "config",
    "export_arch": "export",
    "write_outputs": "outputs",
    "Run": "rundir", "RunDirError": "rundir", "RunLock": "rundir", "RunMeta": "rundir",
    "open_run": "rundir",
    "SearchOptions": "runner", "SearchSummary": "runner", "run_search": "runner",
    "EvaluationScheduler": "scheduler",
    "front_trials": "trials", "pareto_front": "trials", "stage_summary": "trials",
    "trial_attrs": "trials", "trial_record": "trials",
}
__all__ = ["EvaluationScheduler", "ExperimentConfig", "Run", "RunData", "RunDirError", "RunLock",
           "RunMeta", "SearchOptions", "SearchSummary", "dump_config", "export_arch",
           "front_trials", "load_config", "load_run", "open_run", "pareto_front", "parse_config",
           "run_search", "stage_summary", "trial_attrs", "trial_record", "trials_frame",
           "write_outputs"]

if TYPE_CHECKING:
    from experiments.analysis import RunData, load_run, trials_frame
    from experiments.config import ExperimentConfig, dump_config, load_config, parse_config
    from experiments.export import export_arch
    from experiments.outputs import write_outputs
    from experiments.rundir import Run, RunDirError, RunLock, RunMeta, open_run
    from experiments.runner import SearchOptions, SearchSummary, run_search
    from experiments.scheduler import EvaluationScheduler
    from experiments.trials import (
        front_trials,
        pareto_front,
        stage_summary,
        trial_attrs,
        trial_record,
    )


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'experiments' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"experiments.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
