"""One trial of the driver, from ``study.ask()`` to ``study.tell()`` (DESIGN §3).

    ask -> suggest -> ArchConfig -> predict latency/memory (torch-free)
      -> architecture already has an outcome?  tell the same outcome, `duplicate_of`, not counted
      -> over the memory budget?  COMPLETE, infeasible, quality = the worst value, never evaluated
      -> rung 0 .. top of the budget ladder (one rung without a pruner): one evaluation per seed,
         each continuing from the previous rung's checkpoint; after each lower rung the pruner of
         the candidate's latency bucket says continue or prune
      -> tell COMPLETE [quality at the top rung, latency_ms] / PRUNED (rung reached) / FAIL

Why the memory-infeasible trial is COMPLETE: Optuna's NSGA-II ignores PRUNED trials, so they
taught it nothing. Told with the worst quality (-inf when maximizing) and its predicted
latency, plus the positive ``memory_mb`` constraint it already carries, it is
constraint-dominated by every feasible trial (NSGA-II) and sorted into the bad group by its
violation (TPE): the samplers learn the infeasible region, and the placeholder quality can
never reach the front (only feasible trials can). ``trials.csv`` shows its quality empty,
``not_evaluated`` true and the reason.

:class:`TrialFlow` is the driver's per-trial half (:class:`experiments.runner.Driver` adds
setup, the loop, signals and outputs).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from common.fsio import atomic_write_bytes
from experiments.cache import CachedEval, EvalKey
from experiments.ledger import DUPLICATE_OF, NOT_EVALUATED, ArchOutcome, not_evaluated_values
from experiments.rundir import weights_path
from experiments.scheduler import Outcome
from experiments.study import INTERRUPTED
from experiments.trials import result_attr
from search_space.arch import ArchConfig
from search_space.flops import network_cost


@dataclass
class Candidate:
    """A trial climbing its budget ladder (one rung without a pruner)."""

    trial: Any
    arch: ArchConfig
    t0: float
    feasible: bool
    predicted: dict[str, Any]
    budgets: list[int]
    rung: int = 0
    keys: list[EvalKey] = field(default_factory=list)  # the current rung's, one per seed
    results: dict[EvalKey, CachedEval] = field(default_factory=dict)  # the current rung's
    spent: list[CachedEval] = field(default_factory=list)  # every rung's evaluations
    cache_hits: int = 0
    rung_trial: Any = None
    followers: list[Any] = field(default_factory=list)  # duplicates waiting for the outcome

    @property
    def budget(self) -> int:
        return self.budgets[self.rung]


class TrialFlow:
    """Per-trial logic of the driver. Expects the attributes :class:`Driver` sets up: cfg,
    study, space, backbone, latency_model, cache, ckpts, ledger, guard, ladder, scheduler,
    summary, config_key, directions, active."""

    # ---- ask ------------------------------------------------------------------------------
    def _start_trial(self) -> None:
        cfg = self.cfg
        t0 = time.monotonic()
        if cfg.search.sampler == "exhaustive":
            self._enqueue_next_unseen()
        trial = self.study.ask()
        arch = self.space.suggest(trial)
        predicted = self._predict(trial, arch)
        if self._repeat(trial, arch):
            return
        if self._over_memory(trial, arch, predicted, t0):
            return
        lat_budget = cfg.constraints.latency_budget_ms
        feasible = lat_budget is None or predicted["latency_ms"] <= lat_budget
        budgets = self.ladder.budgets if self.ladder is not None else [cfg.evaluator.budget]
        cand = Candidate(trial, arch, t0, feasible, predicted, list(budgets))
        self.active[trial.number] = cand
        self._active_arch[arch.arch_id] = trial.number
        if self.ladder is not None:
            cand.rung_trial = self.ladder.attach(arch.arch_id, predicted["latency_ms"])
        self._start_rung(cand)

    def _predict(self, trial: Any, arch: ArchConfig) -> dict[str, Any]:
        """Analytic cost and predicted latency, recorded on the trial with its constraints."""
        cost = network_cost(self.backbone, self.task, arch)
        lat = self.latency_model.predict(arch, self.backbone)
        predicted: dict[str, Any] = {
            "latency_ms": float(lat.mean_ms), "latency_low_ms": float(lat.low_ms),
            "latency_high_ms": float(lat.high_ms),
            "per_stage_ms": {k: float(v) for k, v in dict(lat.per_stage_ms).items()},
            "memory_mb": float(cost.memory_mb), "params": int(cost.params),
            "flops": float(cost.flops)}
        # few attrs (each is an fsynced journal write): flattened by trials.trial_attrs()
        trial.set_user_attr("arch_id", arch.arch_id)
        trial.set_user_attr("candidate", {"arch": arch.to_json(), **predicted})
        c = self.cfg.constraints
        if c.latency_budget_ms is not None:
            trial.set_constraint("latency_ms", predicted["latency_ms"] - c.latency_budget_ms)
        if c.memory_budget_mb is not None:
            trial.set_constraint("memory_mb", predicted["memory_mb"] - c.memory_budget_mb)
        return predicted

    def _repeat(self, trial: Any, arch: ArchConfig) -> bool:
        """An architecture with an outcome (or one being evaluated): the trial gets that
        outcome, now or when it arrives, and does not count toward ``n_trials``."""
        prior = self.ledger.get(arch.arch_id)
        if prior is not None:
            self._tell_repeat(trial, prior)
            return True
        num = self._active_arch.get(arch.arch_id)
        if num is not None:
            self.active[num].followers.append(trial)
            self.guard.duplicate()
            return True
        self.guard.fresh()
        return False

    def _tell_repeat(self, trial: Any, prior: ArchOutcome) -> None:
        from optuna.trial import TrialState

        trial.set_user_attr(DUPLICATE_OF, prior.trial_number)
        for k, v in prior.attrs.items():
            trial.set_user_attr(k, v)
        if prior.state == "COMPLETE":
            self.study.tell(trial, list(prior.values))
        else:
            self.study.tell(trial, state=TrialState[prior.state])
        self.guard.duplicate()
        self.summary.duplicates += 1

    def _over_memory(self, trial: Any, arch: ArchConfig, predicted: dict[str, Any],
                     t0: float) -> bool:
        """Over the memory budget: COMPLETE and infeasible, never evaluated (module doc)."""
        budget = self.cfg.constraints.memory_budget_mb
        if budget is None or predicted["memory_mb"] <= budget:
            return False
        reason = (f"memory: {predicted['memory_mb']:.0f} MB exceeds the {budget:g} MB budget "
                  f"(not evaluated)")
        attrs = {"failure_reason": reason, NOT_EVALUATED: True}
        for k, v in attrs.items():
            trial.set_user_attr(k, v)
        trial.set_user_attr("result", {"wall_time_s": time.monotonic() - t0})
        values = not_evaluated_values(self.cfg.objectives,
                                      self.directions[self.cfg.objectives.index("quality")],
                                      predicted)
        self.study.tell(trial, values)
        self.ledger.record(arch.arch_id, ArchOutcome(trial.number, "COMPLETE", tuple(values), attrs))
        self.summary.over_memory += 1
        self._finished()
        return True

    def _enqueue_next_unseen(self) -> None:
        for arch in self._arch_iter:
            if arch.arch_id not in self.ledger and arch.arch_id not in self._active_arch:
                self.study.enqueue_trial(self.space.params_of(arch))
                return

    # ---- evaluate, rung by rung -----------------------------------------------------------
    def _start_rung(self, cand: Candidate) -> None:
        """Serve the rung's evaluations from the cache or submit them (each continuing from
        the candidate's checkpoint of the rung below, when the ladder has one)."""
        while True:
            b, ladder = cand.budget, len(cand.budgets) > 1
            frac = self.ladder.val_fraction(b) if ladder else 1.0
            ckey = self.config_key if frac >= 1 else f"{self.config_key}~val{frac:g}"
            cand.keys = [EvalKey(cand.arch.arch_id, ckey, b, s) for s in self.cfg.evaluator.seeds]
            cand.results = {}
            for key in cand.keys:
                hit = self.cache.get(key)
                if hit is not None:
                    cand.results[key] = hit
                    cand.cache_hits += 1
                    self.summary.cache_hits += 1
                    continue
                prev = self.ckpts.latest(key.arch_id, key.seed, below=b) if ladder else None
                self.scheduler.submit(key, cand.arch.to_json(), cand.trial.number,
                                      resumable=ladder, checkpoint=prev[1] if prev else None,
                                      val_fraction=frac)
            if len(cand.results) < len(cand.keys) or not self._rung_done(cand):
                return

    def _on_outcome(self, outcome: Outcome) -> None:
        """A finished evaluation: store it (and its checkpoint), then move on the candidates
        waiting for it (or fail them)."""
        if outcome.result is None:
            failure = (f"{INTERRUPTED}: {outcome.failure}" if outcome.requeue
                       else outcome.failure)
            for num in outcome.waiters:
                if num in self.active:
                    self._finish(self.active[num], failure=failure)
            return
        if outcome.checkpoint is not None and self.ladder is not None \
                and outcome.key.budget < self.ladder.top:
            self.ckpts.write(outcome.key, outcome.checkpoint)
        if outcome.weights is not None:  # before the cache line: a cached eval has its weights
            atomic_write_bytes(weights_path(self.run_dir, outcome.key.arch_id, outcome.key.seed),
                               outcome.weights)
        self.cache.put(outcome.result)
        self.summary.evaluations_run += 1
        for num in outcome.waiters:
            cand = self.active.get(num)
            if cand is None or outcome.key not in cand.keys:
                continue
            cand.results[outcome.key] = outcome.result
            if len(cand.results) == len(cand.keys) and self._rung_done(cand):
                self._start_rung(cand)

    def _rung_done(self, cand: Candidate) -> bool:
        """Every seed of the rung is in: finish the candidate (top rung, or pruned), or return
        True to start the next rung."""
        cand.spent.extend(cand.results[k] for k in cand.keys)
        if cand.rung == len(cand.budgets) - 1:
            self._finish(cand)
            return False
        q = float(np.mean([cand.results[k].value for k in cand.keys]))
        if self.ladder.decide(cand.rung_trial, cand.budget, q):
            self._finish(cand, pruned=True)
            return False
        cand.rung += 1
        return True

    # ---- tell -----------------------------------------------------------------------------
    def _finish(self, cand: Candidate, failure: str | None = None, pruned: bool = False) -> None:
        """Tell Optuna how the candidate ended: its values, PRUNED at its rung, or FAIL with
        ``failure`` (an interrupted one is queued again and keeps its checkpoints)."""
        trial, aid = cand.trial, cand.arch.arch_id
        self.active.pop(trial.number, None)
        self._active_arch.pop(aid, None)
        if self.scheduler is not None:  # other trials may still share its evaluations
            self.scheduler.forget(trial.number, [k for k in cand.keys if k not in cand.results])
        wall = time.monotonic() - cand.t0
        if failure is not None:
            return self._fail(cand, failure, wall)
        result = result_attr([cand.results[k] for k in cand.keys], wall, spent=cand.spent)
        if self.ladder is not None:
            result.update(rung=cand.rung, budget=cand.budget)
        trial.set_user_attr("result", result)
        if cand.cache_hits:
            trial.set_user_attr("cache_hits", cand.cache_hits)
        q = result["quality"]
        repeat = {"result": {k: result[k] for k in ("quality", "rung", "budget") if k in result}}
        if pruned:
            reason = (f"pruned: {self.ladder.pruner} stopped it at rung {cand.rung} (budget "
                      f"{cand.budget} of {cand.budgets}), quality {q:.4g}")
            trial.set_user_attr("failure_reason", reason)
            self._tell(cand, "PRUNED", None, {**repeat, "failure_reason": reason})
            self.summary.pruned += 1
        else:
            values = [q if o == "quality" else cand.predicted[o] for o in self.cfg.objectives]
            self._tell(cand, "COMPLETE", values, repeat)
            self.summary.complete += 1
            if cand.feasible:
                self._front_pts.append([v if d == "minimize" else -v
                                        for v, d in zip(values, self.directions)])
        self.ckpts.drop(aid)
        self._finished()

    def _tell(self, cand: Candidate, state: str, values: list[float] | None,
              repeat: dict[str, Any]) -> None:
        """Tell the trial, its rung trial and its followers; record the outcome."""
        from optuna.trial import TrialState

        if state == "COMPLETE":
            self.study.tell(cand.trial, values)
        else:
            self.study.tell(cand.trial, state=TrialState[state])
        if cand.rung_trial is not None:
            q = repeat.get("result", {}).get("quality")
            self.ladder.finish(cand.rung_trial, state, q)
        prior = ArchOutcome(cand.trial.number, state, tuple(values) if values else None, repeat)
        self.ledger.record(cand.arch.arch_id, prior)
        for f in cand.followers:
            self._tell_repeat(f, prior)

    def _fail(self, cand: Candidate, failure: str, wall: float) -> None:
        from optuna.trial import TrialState

        trial = cand.trial
        trial.set_user_attr("failure_reason", failure)
        trial.set_user_attr("result", {"wall_time_s": wall})
        if failure.startswith(INTERRUPTED):
            self.study.tell(trial, state=TrialState.FAIL)
            self.study.enqueue_trial(dict(trial.params), user_attrs={"requeued_from": trial.number},
                                     skip_if_exists=False)
            for f in cand.followers:  # duplicates: the re-queued trial carries the arch on
                f.set_user_attr(DUPLICATE_OF, trial.number)
                f.set_user_attr("failure_reason", failure)
                self.study.tell(f, state=TrialState.FAIL)
            return  # the rung trial stays RUNNING and the checkpoints stay: a resume continues
        self._tell(cand, "FAIL", None, {"failure_reason": failure})
        self.ckpts.drop(cand.arch.arch_id)
        self.summary.failed += 1
        self._finished()
