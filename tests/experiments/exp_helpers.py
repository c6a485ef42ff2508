"""Helpers of the experiments tests."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import optuna
from cli_run import cli  # noqa: F401 - re-exported for the tests of this folder

from experiments.cache import read_records
from experiments.study import open_storage


def load_study(run_dir: Path, name: str):
    return optuna.load_study(study_name=name, storage=open_storage(None, Path(run_dir)))


def evaluation_counts(run_dir: Path) -> Counter:
    """How many times each (arch, config, budget, seed) was evaluated, from the cache file."""
    return Counter((r["arch_id"], r["config_key"], r["budget"], r["seed"])
                   for r in read_records(run_dir))


def states(study) -> Counter:
    return Counter(t.state.name for t in study.get_trials(deepcopy=False))


def counted_states(study) -> Counter:
    """States of the trials that count toward n_trials (not the repeats of an architecture a
    trial before them settled: those carry ``duplicate_of``)."""
    return Counter(t.state.name for t in study.get_trials(deepcopy=False)
                   if t.user_attrs.get("duplicate_of") is None)


def check_duplicates(study) -> int:
    """Every repeat carries its first trial's architecture and outcome; returns how many."""
    by_number = {t.number: t for t in study.trials}
    n = 0
    for t in study.trials:
        first = t.user_attrs.get("duplicate_of")
        if first is None:
            continue
        n += 1
        orig = by_number[first]
        assert orig.user_attrs.get("duplicate_of") is None and orig.number < t.number
        assert orig.user_attrs["arch_id"] == t.user_attrs["arch_id"]
        if t.state.name != "FAIL":  # an interrupted original's repeats FAIL with it
            assert t.state == orig.state and t.values == orig.values
    return n


def best_by_arch(study) -> set[int]:
    """The trial numbers pareto.csv holds: of ``study.best_trials``, the earliest trial of each
    architecture."""
    first: dict[str, int] = {}
    for t in sorted(study.best_trials, key=lambda t: t.number):
        first.setdefault(t.user_attrs["arch_id"], t.number)
    return set(first.values())
