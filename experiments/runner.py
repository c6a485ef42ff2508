"""The search driver: one process asks Optuna, predicts latency, and tells results (DESIGN §3).

    ask -> space.suggest -> ArchConfig -> memory > budget? PRUNED (never evaluated)
        -> latency_model.predict (torch-free) -> one evaluation per seed (cached by arch_id)
        -> tell([quality, latency_ms]) with constraint values and user attrs

Only the driver touches the Optuna storage. The evaluations run as Ray tasks through an
:class:`~experiments.scheduler.EvaluationScheduler`; finished ones go to
``<run>/evaluations.jsonl`` the moment they arrive, so a resumed search never repeats one.
"""

from __future__ import annotations

import shutil
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

import latency_models
from common.errors import ConfigError, TemponasError
from common.fsio import atomic_write_bytes, io_error
from evaluators.registry import create_evaluator
from experiments.cache import CachedEval, EvalCache, EvalKey
from experiments.config import ExperimentConfig
from experiments.distributed import SearchAborted, shutdown_ray
from experiments.hypervolume import pareto_mask
from experiments.outputs import write_outputs
from experiments.resources import capacity_note, check_workers
from experiments.rundir import RunLock, open_search_study, prepare_run_dir, weights_path
from experiments.scheduler import EvaluationScheduler, Outcome, start_scheduler
from experiments.study import INTERRUPTED, make_sampler, storage_location, trial_done
from experiments.trials import pareto_front, result_attr
from search_space.arch import ArchConfig
from search_space.flops import network_cost

OUTPUT_REFRESH_S = 15.0


@dataclass
class SearchOptions:
    """Command-line overrides and hooks of one ``temponas search`` call."""

    n_trials: int | None = None
    workers: int | None = None
    ray_address: str | None = None
    out: str | None = None
    resume: bool = False
    progress: bool = True
    write_plots: bool = True
    #: called after each finished trial with the number of finished trials (tests use it to
    #: interrupt a run the way Ctrl-C does)
    on_trial: Callable[[int], None] | None = None


@dataclass
class SearchSummary:
    """What one ``run_search`` call did (counts are of this session)."""

    run_dir: Path
    n_trials: int
    complete: int = 0
    pruned: int = 0
    failed: int = 0
    front_size: int = 0
    evaluations_run: int = 0
    cache_hits: int = 0
    recovered: list[int] = field(default_factory=list)
    repairs: list[str] = field(default_factory=list)
    interrupted: bool = False
    wall_time_s: float = 0.0
    #: wall time of the ask/evaluate/tell loop alone (no setup, Ray start or final outputs)
    loop_wall_s: float = 0.0


@dataclass
class _Active:
    """A trial waiting for its evaluations (one per seed)."""

    trial: Any
    keys: list[EvalKey]
    t0: float
    feasible: bool = True
    predicted: dict[str, Any] = field(default_factory=dict)
    results: dict[EvalKey, CachedEval] = field(default_factory=dict)
    cache_hits: int = 0


class Driver:
    """One search. Use :func:`run_search`."""

    def __init__(self, cfg: ExperimentConfig, opts: SearchOptions):
        self.cfg = cfg.with_overrides(n_trials=opts.n_trials, workers=opts.workers)
        self.opts = opts
        self.run_dir = Path(opts.out) if opts.out is not None else self.cfg.run_dir()
        self.target = self.cfg.search.n_trials
        self.workers = self.cfg.search.workers
        self.active: dict[int, _Active] = {}
        self.scheduler: EvaluationScheduler | None = None
        self.done = 0
        self.summary = SearchSummary(self.run_dir, self.target)
        self._front_pts: list[list[float]] = []
        self._last_front = 0.0
        self._last_outputs = time.monotonic()
        self._stop_signal: int | None = None
        self._started_ray = False

    # ---- setup ------------------------------------------------------------------------------
    def _setup(self) -> None:
        """Evaluator, latency model and sampler: a bad one fails before anything is written."""
        cfg = self.cfg
        src = cfg.source or "config"
        check_workers(self.workers, "--workers" if self.opts.workers else f"{src}: search.workers")
        self.backbone, self.task, self.space = cfg.backbone_spec, cfg.video_task, cfg.search_space
        self.evaluator = create_evaluator(cfg.evaluator.name, self.backbone, cfg.evaluator_options(),
                                          where=f"{src}: evaluator")
        try:
            self.latency_model = latency_models.load_latency_model(cfg.latency_model)
        except TemponasError as e:  # ConfigError or the model file's own error
            raise ConfigError(f"{src}: latency_model: {e}") from None
        try:
            self.sampler = make_sampler(cfg.search.sampler, cfg.search.sampler_options,
                                        cfg.search.seed)
        except ConfigError as e:
            raise ConfigError(f"{src}: {e}") from None
        self.config_key = str(self.evaluator.config_key)
        setup = getattr(self.evaluator, "setup", None)  # optional: data every evaluation shares
        if callable(setup):
            setup(self.task, progress=self.opts.progress)
        self.directions = [self.evaluator.direction.value if o == "quality" else "minimize"
                           for o in cfg.objectives]
        self.eval_spec = {"name": cfg.evaluator.name, "backbone": self.backbone.to_dict(),
                          "options": cfg.evaluator_options()}

    def _open_study(self) -> None:
        """Open the run's study; count what is done; reseed the sampler of a resumed session."""
        cfg = self.cfg
        self.study, self.summary.repairs, self.summary.recovered = open_search_study(
            self.run_dir, cfg, directions=self.directions, sampler=self.sampler,
            config_key=self.config_key, resume=self.opts.resume)
        trials = self.study.get_trials(deepcopy=False)
        self.done = sum(1 for t in trials if trial_done(t))
        self._seen_archs = {t.user_attrs.get("arch_id") for t in trials}
        if trials:  # a resumed sampler must not replay its first session's random draws
            self.study.sampler = make_sampler(cfg.search.sampler, cfg.search.sampler_options,
                                              _resume_seed(cfg.search.seed, len(trials)))

    def _start_scheduler(self) -> None:
        """Start (or join) Ray and the scheduler (see :func:`start_scheduler`)."""
        self.scheduler, self._started_ray = start_scheduler(
            self.cfg, self.evaluator, self.eval_spec, ray_address=self.opts.ray_address,
            workers=self.workers)
        cap = self.scheduler.capacity
        if cap and self.workers > cap:
            where = "--workers" if self.opts.workers else f"{self.cfg.source or 'config'}: search.workers"
            print(f"note: {capacity_note(where, self.workers, cap, self.scheduler.request)}",
                  file=sys.stderr)
            self.workers = cap

    # ---- the run ----------------------------------------------------------------------------
    def run(self) -> SearchSummary:
        t_start = time.monotonic()
        fresh = not self.run_dir.exists()
        self._setup()
        lock = RunLock(self.run_dir).acquire()
        old_handlers, fatal, discard = {}, False, False
        try:
            prepare_run_dir(self.run_dir, self.cfg, resume=self.opts.resume)
            self._open_study()
            self.cache = EvalCache(self.run_dir)
            if self.cfg.search.sampler == "exhaustive":
                self.target = min(self.target, self.space.size())
                self.summary.n_trials = self.target
                self._arch_iter = self.space.enumerate()
            if self.done < self.target:
                self._start_scheduler()
                old_handlers = self._install_stop_handlers()
                self._loop()
        except SearchAborted as e:  # every further evaluation would fail the same way
            fatal = True
            discard = fresh and self.summary.complete == 0
            self._stop_active(f"{INTERRUPTED}: {e}")
            raise
        except KeyboardInterrupt:
            self.summary.interrupted = True
            self._stop_active(f"{INTERRUPTED}: the search was stopped (Ctrl-C/SIGTERM)")
        except OSError as e:  # the study storage could not be written (disk full, read-only)
            fatal = True
            if isinstance(e, ConnectionError):
                raise
            where = storage_location(self.cfg.search.storage, self.run_dir)
            raise io_error(Path(getattr(e, "filename", None) or where), e) from None
        except BaseException:
            fatal = True
            raise
        finally:
            for signum, handler in old_handlers.items():
                signal.signal(signum, handler)
            self._close(fatal=fatal, fresh=fresh, discard=discard, lock=lock)
        self.summary.wall_time_s = time.monotonic() - t_start
        return self.summary

    def _close(self, *, fatal: bool, fresh: bool, discard: bool, lock: RunLock) -> None:
        """Final outputs, Ray shutdown, and (after a fatal error before any trial, or a new
        run aborted before any trial completed: ``discard``) removal of the half-made run
        dir; the lock is released in every case."""
        try:
            if hasattr(self, "study") and not discard:
                self._write_outputs(final=True)
        except (OSError, TemponasError):
            if not fatal:  # else keep the first error: it says what went wrong
                raise
        finally:
            if self._started_ray:
                shutdown_ray()
            if discard or fatal and fresh and (not hasattr(self, "study")
                                               or not self.study.get_trials(deepcopy=False)):
                # failed before any trial (bad storage, unreachable Ray): leave no half-made
                # run dir behind
                shutil.rmtree(self.run_dir, ignore_errors=True)
            lock.release()

    def _loop(self) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=self.target, initial=min(self.done, self.target), unit="trial",
                        desc=self.cfg.name, file=sys.stderr, disable=not self.opts.progress,
                        dynamic_ncols=True, smoothing=0.1)
        t_loop = time.monotonic()
        sched = self.scheduler
        max_active = max(2 * self.workers, self.workers + 2)
        try:
            while True:
                while (self.done + len(self.active) < self.target and len(sched) < self.workers
                       and len(self.active) < max_active):
                    self._check_stop()
                    self._start_trial()
                self._check_stop()
                if not self.active:
                    break
                for outcome in sched.poll(max_wait_s=1.0):
                    self._on_outcome(outcome)
                if time.monotonic() - self._last_outputs > OUTPUT_REFRESH_S:
                    self._write_outputs(final=False)
        finally:
            self.summary.loop_wall_s = time.monotonic() - t_loop
            self.bar.close()

    def _install_stop_handlers(self) -> dict[int, Any]:
        """Ctrl-C / SIGTERM only set a flag that the loop checks between storage calls.

        Raising KeyboardInterrupt straight from the handler can land inside Optuna's journal
        lock (rename/unlink of ``study.journal.lock``) and turn a clean stop into a storage
        error. A second signal stops at once. Returns the previous handlers.
        """

        def _flag(signum: int, frame: Any) -> None:
            if self._stop_signal is not None:
                raise KeyboardInterrupt
            self._stop_signal = signum

        old: dict[int, Any] = {}
        for signum in (signal.SIGINT, signal.SIGTERM):
            try:
                old[signum] = signal.signal(signum, _flag)
            except ValueError:  # not in the main thread: default behaviour
                pass
        return old

    def _check_stop(self) -> None:
        if self._stop_signal is not None:
            raise KeyboardInterrupt

    # ---- one trial --------------------------------------------------------------------------
    def _start_trial(self) -> None:
        """Ask for a trial, predict its costs, prune it if over the memory budget, else serve
        its evaluations from the cache or submit them."""
        cfg = self.cfg
        t0 = time.monotonic()
        if cfg.search.sampler == "exhaustive":
            self._enqueue_next_unseen()
        trial = self.study.ask()
        arch = self.space.suggest(trial)
        self._seen_archs.add(arch.arch_id)
        predicted = self._predict(trial, arch)
        if self._over_memory(trial, predicted, t0):
            return
        lat_budget = cfg.constraints.latency_budget_ms
        feasible = lat_budget is None or predicted["latency_ms"] <= lat_budget
        keys = [EvalKey(arch.arch_id, self.config_key, cfg.evaluator.budget, s)
                for s in cfg.evaluator.seeds]
        act = _Active(trial, keys, t0, feasible, predicted)
        self.active[trial.number] = act
        for key in keys:
            hit = self.cache.get(key)
            if hit is not None:
                act.results[key] = hit
                act.cache_hits += 1
                self.summary.cache_hits += 1
            else:
                self.scheduler.submit(key, arch.to_json(), trial.number)
        if len(act.results) == len(keys):
            self._finish(act)

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

    def _over_memory(self, trial: Any, predicted: dict[str, Any], t0: float) -> bool:
        """Over the memory budget: the trial is PRUNED with its reason, never evaluated."""
        from optuna.trial import TrialState

        budget = self.cfg.constraints.memory_budget_mb
        if budget is None or predicted["memory_mb"] <= budget:
            return False
        trial.set_user_attr("failure_reason", f"memory: {predicted['memory_mb']:.0f} MB exceeds "
                                              f"the {budget:g} MB budget (not evaluated)")
        trial.set_user_attr("result", {"wall_time_s": time.monotonic() - t0})
        self.study.tell(trial, state=TrialState.PRUNED)
        self.summary.pruned += 1
        self._finished()
        return True

    def _enqueue_next_unseen(self) -> None:
        for arch in self._arch_iter:
            if arch.arch_id not in self._seen_archs:
                self.study.enqueue_trial(self.space.params_of(arch))
                return

    def _on_outcome(self, outcome: Outcome) -> None:
        """A finished evaluation: cache it and finish the trials it completes (or fail them)."""
        if outcome.result is None:
            failure = (f"{INTERRUPTED}: {outcome.failure}" if outcome.requeue
                       else outcome.failure)
            for num in outcome.waiters:
                if num in self.active:
                    self._finish(self.active[num], failure)
            return
        if outcome.weights is not None:  # before the cache line: a cached eval has its weights
            atomic_write_bytes(weights_path(self.run_dir, outcome.key.arch_id, outcome.key.seed),
                               outcome.weights)
        self.cache.put(outcome.result)
        self.summary.evaluations_run += 1
        for num in outcome.waiters:
            act = self.active.get(num)
            if act is None:
                continue
            act.results[outcome.key] = outcome.result
            if len(act.results) == len(act.keys):
                self._finish(act)

    def _finish(self, act: _Active, failure: str | None = None) -> None:
        """Tell Optuna how the trial ended: its values, or FAIL with ``failure`` (an
        interrupted trial is queued again for the resume)."""
        from optuna.trial import TrialState

        trial = act.trial
        self.active.pop(trial.number, None)
        if self.scheduler is not None:  # other trials may still share its evaluations
            self.scheduler.forget(trial.number, [k for k in act.keys if k not in act.results])
        wall = time.monotonic() - act.t0
        if failure is not None:
            trial.set_user_attr("failure_reason", failure)
            trial.set_user_attr("result", {"wall_time_s": wall})
            self.study.tell(trial, state=TrialState.FAIL)
            if failure.startswith(INTERRUPTED):
                self.study.enqueue_trial(dict(trial.params), user_attrs={"requeued_from": trial.number},
                                         skip_if_exists=False)
                return
            self.summary.failed += 1
            self._finished()
            return
        result = result_attr([act.results[k] for k in act.keys], wall)
        q = result["quality"]
        trial.set_user_attr("result", result)
        if act.cache_hits:
            trial.set_user_attr("cache_hits", act.cache_hits)
        values = [q if o == "quality" else act.predicted[o] for o in self.cfg.objectives]
        self.study.tell(trial, values)
        self.summary.complete += 1
        if act.feasible:
            self._front_pts.append([v if d == "minimize" else -v
                                    for v, d in zip(values, self.directions)])
        self._finished()

    def _finished(self) -> None:
        self.done += 1
        if hasattr(self, "bar"):
            self.bar.update(1)
            now = time.monotonic()
            if now - self._last_front > 0.5 or self.done >= self.target:
                self._last_front = now
                front = int(pareto_mask(np.array(self._front_pts)).sum()) if self._front_pts else 0
                self.summary.front_size = front
                self.bar.set_postfix(failed=self.summary.failed, pruned=self.summary.pruned,
                                     front=front, cached=self.summary.cache_hits, refresh=False)
        if self.opts.on_trial is not None:
            self.opts.on_trial(self.done)

    def _stop_active(self, reason: str) -> None:
        """Ctrl-C: cancel running evaluations; their trials FAIL as interrupted and are
        enqueued again so ``--resume`` runs them first."""
        if self.scheduler is not None:
            self.scheduler.cancel_all()
        for act in list(self.active.values()):
            try:
                self._finish(act, reason)
            except Exception:
                pass
        self.active.clear()

    def _write_outputs(self, final: bool) -> None:
        self._last_outputs = time.monotonic()
        write_outputs(self.run_dir, study=self.study, cfg=self.cfg,
                      latency_model=getattr(self, "latency_model", None),
                      plots=final and self.opts.write_plots, report=final)
        if final:
            self.summary.front_size = len(pareto_front(self.study))


def _resume_seed(seed: int, n_trials: int) -> int:
    """Sampler seed of a session that starts after ``n_trials`` trials (deterministic, and
    different from every earlier session's, so random draws are not repeated)."""
    return (seed * 1_000_003 + n_trials * 7_919) % (2**31 - 1)


def run_search(cfg: ExperimentConfig, opts: SearchOptions | None = None) -> SearchSummary:
    """Run (or ``opts.resume``) the search described by ``cfg``; outputs go to the run dir."""
    return Driver(cfg, opts or SearchOptions()).run()
