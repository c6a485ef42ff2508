"""Multi-fidelity search: a budget ladder run as successive halving / Hyperband with Optuna's
own pruners, inside a two-objective ask-and-tell study.

Optuna refuses ``Trial.report`` / ``should_prune`` on multi-objective studies. The driver
therefore mirrors each evaluated candidate in a single-objective companion *rung study*
(same storage as the search, study ``<name>.rungs<k>``), reports the candidate's quality at
each rung there, and lets Optuna's ``SuccessiveHalvingPruner`` / ``HyperbandPruner`` decide.

What the pruner compares: a scalar per candidate that must mean the same thing whenever it
was reported (the pruner compares a new value with the values stored at that rung by earlier
candidates). Raw quality would prune a fast candidate of mediocre quality -- one that may be
Pareto-optimal -- in favour of slower, better ones. So candidates compete only within their
predicted-latency bucket: ``latency_buckets`` quantile buckets of the predicted latency of
the space's feasible candidates (a fixed sample, stored with the rung studies), one rung
study (and pruner) per bucket, plus one for candidates over the latency budget. Latency is
exact before any evaluation, so the bucket is known up front; the pruner sees raw quality.
``benchmarks/multifidelity.py`` measures the choice of buckets.

Resume: a rung trial stays RUNNING while its candidate climbs; a resumed driver re-attaches
to it by ``arch_id``, and every prune/continue decision is recorded on it before the driver
acts, so a decision is never taken twice.
"""

from __future__ import annotations

import bisect
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from common.errors import ConfigError

#: user attr on a rung trial: the arch it mirrors; ``decision.b<budget>``: what the pruner said
ARCH_ATTR = "arch_id"
EDGES_ATTR = "latency_edges_ms"


def rung_budgets(min_budget: int, reduction_factor: int, top: int) -> list[int]:
    """``[min, min*eta, min*eta^2, ..., top]``: every rung below ``top``, then ``top``."""
    out, b = [], int(min_budget)
    while b < top:
        out.append(b)
        b *= int(reduction_factor)
    return [*out, int(top)]


def check_pruner(cfg: Any) -> None:
    """A ladder needs a top rung above its lowest one (``evaluator.budget`` is the top);
    ``cfg``: an :class:`~experiments.config.ExperimentConfig`."""
    p = cfg.search.pruner
    if not 0 < p.rung_val_fraction <= 1:
        raise ConfigError(f"search.pruner.rung_val_fraction: must be in (0, 1], got "
                          f"{p.rung_val_fraction}")
    if p.name == "none":
        return
    top = cfg.evaluator.budget
    if top < 1:
        raise ConfigError(f"search.pruner: {p.name} needs evaluator.budget > 0 (the top rung of "
                          f"the budget ladder), got {top}")
    if p.min_budget >= top:
        raise ConfigError(f"search.pruner.min_budget: must be below evaluator.budget ({top}), "
                          f"got {p.min_budget}")
    if cfg.search.sampler == "exhaustive":
        raise ConfigError("search.pruner: the exhaustive sampler evaluates every architecture "
                          "in full; use pruner 'none' with it")


def make_pruner(name: str, min_budget: int, reduction_factor: int, top: int,
                bootstrap_count: int = 0) -> Any:
    """Optuna's pruner. ``bootstrap_count``: a rung promotes no candidate before this many
    reached it (they are pruned): without it, asynchronous SH promotes the first candidate of
    each rung and latency bucket whatever its score."""
    import optuna

    if name == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=min_budget,
                                                      reduction_factor=reduction_factor,
                                                      bootstrap_count=bootstrap_count)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=min_budget, max_resource=top,
                                              reduction_factor=reduction_factor,
                                              bootstrap_count=bootstrap_count)
    raise ValueError(name)


def latency_edges(latencies_ms: Sequence[float], n_buckets: int) -> list[float]:
    """The ``n_buckets - 1`` inner quantiles of ``latencies_ms`` (bucket edges)."""
    if n_buckets <= 1 or not len(latencies_ms):
        return []
    qs = np.quantile(np.asarray(latencies_ms, dtype=float), np.arange(1, n_buckets) / n_buckets)
    return [float(q) for q in qs]


def feasible_latencies(space: Any, backbone: Any, latency_model: Any, *, seed: int,
                       memory_budget_mb: float | None, latency_budget_ms: float | None,
                       n: int = 400) -> list[float]:
    """Predicted latency of up to ``n`` random distinct architectures of ``space`` within the
    budgets (the population the buckets split)."""
    from search_space.flops import network_cost

    archs = space.sample_distinct(n, seed)
    if memory_budget_mb is not None:
        archs = [a for a in archs
                 if network_cost(backbone, a.task, a).memory_mb <= memory_budget_mb]
    lat = [float(e.mean_ms) for e in latency_model.predict_many(archs, backbone)]
    return [v for v in lat if latency_budget_ms is None or v <= latency_budget_ms]


class Ladder:
    """The budget ladder of a search, its rung studies and the pruner decisions.

    ``direction``: the quality objective's (``maximize``/``minimize``); ``edges``: latency
    bucket edges in ms; ``latency_budget_ms``: candidates above it have their own bucket.
    """

    def __init__(self, pruner: str, min_budget: int, reduction_factor: int, top: int, *,
                 direction: str, latency_budget_ms: float | None,
                 rung_val_fraction: float = 1.0, bootstrap_count: int = 0) -> None:
        self.pruner, self.min_budget, self.eta, self.top = pruner, min_budget, reduction_factor, top
        self.rung_val_fraction, self.bootstrap_count = rung_val_fraction, bootstrap_count
        self.budgets = rung_budgets(min_budget, reduction_factor, top)
        self.direction = direction
        self.latency_budget_ms = latency_budget_ms
        self.edges: list[float] = []
        self.studies: list[Any] = []
        self._running: dict[str, tuple[int, int]] = {}  # arch_id -> (bucket, trial_id)

    # ---- studies --------------------------------------------------------------------------
    def open(self, storage: Any, name: str, edges: Any) -> None:
        """Create (or load) the rung studies ``<name>.rungs<k>`` in ``storage``. ``edges``:
        a callable giving the bucket edges, called only for a new search (a resumed one
        reads the edges it stored)."""
        import optuna

        first = self._study(storage, f"{name}.rungs0", optuna)
        stored = first.user_attrs.get(EDGES_ATTR)
        self.edges = [float(e) for e in stored] if stored is not None else list(edges())
        if stored is None:
            first.set_user_attr(EDGES_ATTR, self.edges)
            first.set_user_attr("budgets", self.budgets)
        n = len(self.edges) + 1 + (self.latency_budget_ms is not None)
        self.studies = [first] + [self._study(storage, f"{name}.rungs{k}", optuna)
                                  for k in range(1, n)]
        from optuna.trial import TrialState

        for k, st in enumerate(self.studies):
            for t in st.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
                aid = t.user_attrs.get(ARCH_ATTR)
                if aid:
                    self._running[aid] = (k, t._trial_id)

    def _study(self, storage: Any, study_name: str, optuna: Any) -> Any:
        return optuna.create_study(
            study_name=study_name, storage=storage, direction=self.direction,
            load_if_exists=True, sampler=optuna.samplers.RandomSampler(seed=0),
            pruner=make_pruner(self.pruner, self.min_budget, self.eta, self.top,
                               self.bootstrap_count))

    def val_fraction(self, budget: int) -> float:
        """The part of the held-out data a rung at ``budget`` is scored on (all at the top)."""
        return 1.0 if budget >= self.top else self.rung_val_fraction

    def bucket(self, latency_ms: float) -> int:
        """The rung study of a candidate with this predicted latency."""
        if self.latency_budget_ms is not None and latency_ms > self.latency_budget_ms:
            return len(self.edges) + 1
        return bisect.bisect_right(self.edges, latency_ms)

    def attach(self, arch_id: str, latency_ms: float) -> Any:
        """The rung trial of ``arch_id``: the one a stopped driver left RUNNING, else new."""
        import optuna

        if arch_id in self._running:
            k, trial_id = self._running.pop(arch_id)
            return optuna.trial.Trial(self.studies[k], trial_id)
        t = self.studies[self.bucket(latency_ms)].ask()
        t.set_user_attr(ARCH_ATTR, arch_id)
        return t

    # ---- decisions ------------------------------------------------------------------------
    def decide(self, rung_trial: Any, budget: int, value: float) -> bool:
        """Report ``value`` at ``budget`` and ask the pruner; True = prune. A decision already
        recorded on the trial (a resumed candidate) is returned as it was."""
        key = f"decision.b{budget}"
        prior = rung_trial.user_attrs.get(key)
        if prior is not None:
            return prior == "prune"
        with warnings.catch_warnings():  # a resumed candidate may have reported this step
            warnings.simplefilter("ignore")
            rung_trial.report(float(value), int(budget))
        prune = bool(rung_trial.should_prune())
        rung_trial.set_user_attr(key, "prune" if prune else "continue")
        return prune

    def finish(self, rung_trial: Any, state: str, value: float | None = None) -> None:
        """Tell the rung study how the candidate ended (COMPLETE with its top-rung quality,
        PRUNED, or FAIL)."""
        from optuna.trial import TrialState

        study = rung_trial.study
        if state == "COMPLETE":
            study.tell(rung_trial, float(value))
        else:
            study.tell(rung_trial, state=TrialState[state])

    def close_orphans(self) -> int:
        """FAIL the rung trials a stopped driver left RUNNING whose architecture this session
        never proposed again (the search is over: no candidate will climb on). Returns how many."""
        import optuna
        from optuna.trial import TrialState

        n = 0
        for aid, (k, trial_id) in list(self._running.items()):
            t = optuna.trial.Trial(self.studies[k], trial_id)
            t.set_user_attr("failure_reason", "interrupted: its search ended before the "
                                              "candidate was proposed again")
            self.studies[k].tell(t, state=TrialState.FAIL)
            self._running.pop(aid)
            n += 1
        return n
