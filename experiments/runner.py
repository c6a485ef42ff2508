"""The search driver: one process asks Optuna, predicts latency, and tells results (DESIGN §3).

One trial's path (repeats, the memory budget, the budget ladder) is :mod:`experiments.flow`;
this module sets a search up, runs its loop, stops it cleanly and writes its outputs.

Only the driver touches the Optuna storage. The evaluations run as Ray tasks through an
:class:`~experiments.scheduler.EvaluationScheduler`; finished ones go to
``<run>/evaluations.jsonl`` (and a ladder's checkpoints to ``<run>/checkpoints/``) the moment
they arrive, so a resumed search never repeats one.

Every evaluation counts once: ``n_trials`` counts architectures (trials whose architecture had
no outcome yet); a sampler's repeated proposal is told the first trial's outcome
(:mod:`experiments.ledger`) and is not counted.
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
from common.fsio import io_error
from evaluators.registry import create_evaluator
from experiments.cache import EvalCache
from experiments.checkpoints import CheckpointStore
from experiments.config import ExperimentConfig
from experiments.distributed import SearchAborted, shutdown_ray
from experiments.flow import Candidate, TrialFlow
from experiments.hypervolume import pareto_mask
from experiments.ladder import Ladder, feasible_latencies, latency_edges
from experiments.ledger import ArchLedger, DuplicateGuard, duplicate_limit
from experiments.outputs import write_outputs
from experiments.resources import capacity_note, check_workers
from experiments.rundir import RunLock, open_search_study, prepare_run_dir
from experiments.scheduler import EvaluationScheduler, start_scheduler
from experiments.study import INTERRUPTED, make_sampler, open_storage, storage_location, trial_done
from experiments.trials import pareto_front

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
    #: over the memory budget: told COMPLETE and infeasible, never evaluated
    over_memory: int = 0
    #: stopped on a lower rung of the budget ladder by the pruner
    pruned: int = 0
    failed: int = 0
    front_size: int = 0
    evaluations_run: int = 0
    cache_hits: int = 0
    #: repeated proposals told the first trial's outcome (not counted, nothing evaluated)
    duplicates: int = 0
    #: the sampler proposed nothing new for this many trials in a row and the search stopped
    exhausted_after: int = 0
    recovered: list[int] = field(default_factory=list)
    repairs: list[str] = field(default_factory=list)
    interrupted: bool = False
    wall_time_s: float = 0.0
    #: wall time of the ask/evaluate/tell loop alone (no setup, Ray start or final outputs)
    loop_wall_s: float = 0.0


class Driver(TrialFlow):
    """One search. Use :func:`run_search`."""

    def __init__(self, cfg: ExperimentConfig, opts: SearchOptions):
        self.cfg = cfg.with_overrides(n_trials=opts.n_trials, workers=opts.workers)
        self.opts = opts
        self.run_dir = Path(opts.out) if opts.out is not None else self.cfg.run_dir()
        self.target = self.cfg.search.n_trials
        self.workers = self.cfg.search.workers
        self.active: dict[int, Candidate] = {}
        self._active_arch: dict[str, int] = {}  # arch_id -> number of its trial in flight
        self.ladder: Ladder | None = None
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
        self.ledger = ArchLedger.from_trials(trials, trial_done)
        self.guard = DuplicateGuard(duplicate_limit(self.target))
        p = cfg.search.pruner
        if p.name != "none":
            c = cfg.constraints
            self.ladder = Ladder(p.name, p.min_budget, p.reduction_factor, cfg.evaluator.budget,
                                 direction=self.directions[cfg.objectives.index("quality")],
                                 latency_budget_ms=c.latency_budget_ms,
                                 rung_val_fraction=p.rung_val_fraction,
                                 bootstrap_count=p.bootstrap_count)
            self.ladder.open(open_storage(cfg.search.storage, self.run_dir), cfg.name,
                             lambda: latency_edges(feasible_latencies(
                                 self.space, self.backbone, self.latency_model, seed=cfg.search.seed,
                                 memory_budget_mb=c.memory_budget_mb,
                                 latency_budget_ms=c.latency_budget_ms), p.latency_buckets))
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
            self.ckpts = CheckpointStore(self.run_dir)
            # every architecture at most once: a smaller space caps the trials
            self.target = min(self.target, self.space.size())
            self.summary.n_trials = self.target
            if self.cfg.search.sampler == "exhaustive":
                self._arch_iter = self.space.enumerate()
            if self.done < self.target:
                self._start_scheduler()
                old_handlers = self._install_stop_handlers()
                self._loop()
            if self.ladder is not None and self.done >= self.target:
                self.ladder.close_orphans()
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
                       and len(self.active) < max_active and not self.guard.exhausted):
                    self._check_stop()
                    self._start_trial()
                if self.guard.exhausted and not self.summary.exhausted_after:
                    self.summary.exhausted_after = self.guard.streak
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
                                     front=front, repeats=self.summary.duplicates, refresh=False)
        if self.opts.on_trial is not None:
            self.opts.on_trial(self.done)

    def _stop_active(self, reason: str) -> None:
        """Ctrl-C: cancel running evaluations; their trials FAIL as interrupted and are
        enqueued again so ``--resume`` runs them first."""
        if self.scheduler is not None:
            self.scheduler.cancel_all()
        for cand in list(self.active.values()):
            try:
                self._finish(cand, failure=reason)
            except Exception:
                pass
        self.active.clear()
        self._active_arch.clear()

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
