"""The search driver: one process asks Optuna, predicts latency, and tells results; Ray runs
the evaluations (DESIGN §3).

    ask -> space.suggest -> ArchConfig -> memory > budget? PRUNED (never evaluated)
        -> latency_model.predict (torch-free) -> Ray task per seed (cached by arch_id)
        -> tell([quality, latency_ms]) with constraint values and user attrs

Only the driver touches the Optuna storage. Completed evaluations go to
``<run>/evaluations.jsonl`` the moment they finish, so a resumed search never repeats one.
"""

from __future__ import annotations

import json
import math
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from common.fsio import atomic_write_json, atomic_write_text, io_error
from experiments.cache import CachedEval, EvalCache, EvalKey
from experiments.config import ExperimentConfig, dump_config, load_config
from experiments.fsio import RunDirError, RunLock
from experiments.study import (
    INTERRUPTED,
    make_sampler,
    open_storage,
    recover_stale_trials,
    repair_run_journal,
    storage_location,
    trial_done,
)
from search_space.arch import ArchConfig
from search_space.errors import ConfigError, TemponasError

RUN_FORMAT_VERSION = 1
RUN_FILE = "run.json"
OUTPUT_REFRESH_S = 15.0
BACKSTOP_GRACE_S = 30.0  # see Driver._backstop_s


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
    arch: ArchConfig
    keys: list[EvalKey]
    latency: Any
    t0: float
    feasible: bool = True
    predicted: dict[str, Any] = field(default_factory=dict)
    results: dict[EvalKey, CachedEval] = field(default_factory=dict)
    cache_hits: int = 0


def _constraint_name(obj: str) -> str:
    return f"constraint_{obj}"


class Driver:
    """One search. Use :func:`run_search`."""

    def __init__(self, cfg: ExperimentConfig, opts: SearchOptions):
        self.cfg = cfg.with_overrides(n_trials=opts.n_trials, workers=opts.workers)
        self.opts = opts
        self.run_dir = Path(self.cfg.out) / self.cfg.name if opts.out is None else Path(opts.out)
        self.target = self.cfg.search.n_trials
        self.workers = self.cfg.search.workers
        self.active: dict[int, _Active] = {}
        self.inflight: dict[Any, tuple[EvalKey, float]] = {}  # ref -> (key, submitted at)
        self.pending: dict[EvalKey, Any] = {}  # key -> ref
        self.waiters: dict[EvalKey, list[int]] = {}  # key -> trial numbers
        self.done = 0
        self.summary = SearchSummary(self.run_dir, self.target)
        self._front_pts: list[list[float]] = []
        self._last_front = 0.0
        self._last_outputs = time.monotonic()

    # ---- setup ------------------------------------------------------------------------------
    def _prepare_run_dir(self) -> None:
        cfg_path = self.run_dir / "config.yaml"
        if self.opts.resume:
            if not cfg_path.exists():
                raise RunDirError(f"{self.run_dir}: nothing to resume (no config.yaml); "
                                  f"start the search without --resume")
            stored = load_config(cfg_path)
            old, new = stored.identity(), self.cfg.identity()
            if old != new:
                key = _first_diff(old, new)
                raise ConfigError(f"{self.cfg.source}: {key}: differs from the run being resumed "
                                  f"({cfg_path}); resume with the run's own config or use a new --out")
        run_file = self.run_dir / RUN_FILE
        if run_file.exists():
            try:
                meta = json.loads(run_file.read_text())
            except (OSError, ValueError):
                raise RunDirError(f"{run_file}: unreadable or corrupt run metadata") from None
            if meta.get("format_version") != RUN_FORMAT_VERSION:
                raise RunDirError(f"{run_file}: written by an incompatible temponas "
                                  f"(run format {meta.get('format_version')!r}, this one reads "
                                  f"{RUN_FORMAT_VERSION})")
        atomic_write_text(cfg_path, dump_config(self.cfg))

    def _setup(self) -> None:
        import latency_models
        from evaluators.registry import create_evaluator

        cfg = self.cfg
        self.backbone = cfg.backbone_spec
        self.task = cfg.video_task
        self.space = cfg.search_space
        src = cfg.source or "config"
        self.evaluator = create_evaluator(cfg.evaluator.name, self.backbone, cfg.evaluator.options,
                                          where=f"{src}: evaluator")
        try:
            self.latency_model = latency_models.load_latency_model(cfg.latency_model)
        except TemponasError as e:  # ConfigError or the model file's own error
            raise ConfigError(f"{src}: latency_model: {e}") from None
        from search_space.flops import network_cost

        self.network_cost = network_cost
        try:
            self.sampler = make_sampler(cfg.search.sampler, cfg.search.sampler_options,
                                        cfg.search.seed)
        except ConfigError as e:
            raise ConfigError(f"{src}: {e}") from None
        self.config_key = str(self.evaluator.config_key)
        self.directions = [self.evaluator.direction.value if o == "quality" else "minimize"
                           for o in cfg.objectives]
        self.eval_spec = {"name": cfg.evaluator.name, "backbone": self.backbone.to_dict(),
                          "options": json.loads(json.dumps(dict(_thaw(cfg.evaluator.options))))}

    def _open_study(self) -> None:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        cfg = self.cfg
        if cfg.search.storage is None:  # our own journal; we hold the run-dir lock
            try:
                self.summary.repairs = repair_run_journal(self.run_dir)
            except OSError as e:
                raise io_error(self.run_dir / "study.journal", e) from None
        self.storage = open_storage(cfg.search.storage, self.run_dir)
        sampler = self.sampler
        names = optuna.get_all_study_names(self.storage)
        exists = cfg.name in names
        if exists and not self.opts.resume:
            n = len(optuna.load_study(study_name=cfg.name, storage=self.storage).trials)
            if n:
                raise RunDirError(f"{self.run_dir}: already holds study {cfg.name!r} with {n} "
                                  f"trial(s); pass --resume to continue it or use another --out")
        if self.opts.resume and not exists:
            raise RunDirError(f"{self.run_dir}: no study {cfg.name!r} in "
                              f"{storage_location(cfg.search.storage, self.run_dir)} to resume")
        self.study = optuna.create_study(study_name=cfg.name, storage=self.storage, sampler=sampler,
                                         directions=self.directions, load_if_exists=True)
        if [d.name.lower() for d in self.study.directions] != self.directions:
            raise RunDirError(f"{self.run_dir}: the stored study optimizes "
                              f"{[d.name.lower() for d in self.study.directions]}, this config "
                              f"{self.directions}")
        if not exists:
            self.study.set_user_attr("objectives", list(cfg.objectives))
            self.study.set_user_attr("evaluator", cfg.evaluator.name)
            self.study.set_user_attr("config_key", self.config_key)
        atomic_write_json(self.run_dir / RUN_FILE, {
            "format_version": RUN_FORMAT_VERSION, "study_name": cfg.name,
            "storage": cfg.search.storage, "objectives": list(cfg.objectives),
            "directions": self.directions, "evaluator": cfg.evaluator.name,
            "config_key": self.config_key, "latency_model": cfg.latency_model})
        if self.opts.resume:
            self.summary.recovered = recover_stale_trials(self.study)
        trials = self.study.get_trials(deepcopy=False)
        self.done = sum(1 for t in trials if trial_done(t))
        self._seen_archs = {t.user_attrs.get("arch_id") for t in trials}
        if trials:  # a resumed sampler must not replay its first session's random draws
            self.study.sampler = make_sampler(cfg.search.sampler, cfg.search.sampler_options,
                                              _resume_seed(cfg.search.seed, len(trials)))

    # ---- the loop ---------------------------------------------------------------------------
    def run(self) -> SearchSummary:
        t_start = time.monotonic()
        fresh = not self.run_dir.exists()
        self._setup()  # evaluator and latency model: a bad one fails before anything is written
        lock = RunLock(self.run_dir).acquire()
        started_ray = False
        old_term = None
        fatal = False
        try:
            self._prepare_run_dir()
            self._open_study()
            self.cache = EvalCache(self.run_dir)
            if self.cfg.search.sampler == "exhaustive":
                self.target = min(self.target, self.space.size())
                self.summary.n_trials = self.target
                self._arch_iter = self.space.enumerate()
            if self.done < self.target:
                from evaluators.registry import ray_remote_options
                from experiments.distributed import ensure_ray, remote_evaluate

                per_task = float(ray_remote_options(self.evaluator).get("num_cpus", 1.0))
                started_ray = ensure_ray(self.opts.ray_address,
                                         max(1, math.ceil(self.workers * max(per_task, 1.0))))
                self.remote = remote_evaluate().options(
                    max_retries=self.cfg.evaluator.retries, retry_exceptions=False,
                    **ray_remote_options(self.evaluator))
                old_term = self._install_stop_handlers()
                self._loop()
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
            for signum, handler in (old_term or {}).items():
                signal.signal(signum, handler)
            try:
                if hasattr(self, "study"):
                    self._write_outputs(final=True)
            except (OSError, TemponasError):
                if not fatal:  # else keep the first error: it says what went wrong
                    raise
            finally:
                if started_ray:
                    from experiments.distributed import shutdown_ray

                    shutdown_ray()
                if fatal and fresh and (not hasattr(self, "study")
                                        or not self.study.get_trials(deepcopy=False)):
                    # failed before any trial (bad storage, unreachable Ray): leave no
                    # half-made run dir behind
                    import shutil

                    shutil.rmtree(self.run_dir, ignore_errors=True)
                lock.release()
        self.summary.wall_time_s = time.monotonic() - t_start
        return self.summary

    def _loop(self) -> None:
        import ray
        from tqdm import tqdm

        self.bar = tqdm(total=self.target, initial=min(self.done, self.target), unit="trial",
                        desc=self.cfg.name, file=sys.stderr, disable=not self.opts.progress,
                        dynamic_ncols=True, smoothing=0.1)
        t_loop = time.monotonic()
        try:
            max_active = max(2 * self.workers, self.workers + 2)
            while True:
                while (self.done + len(self.active) < self.target and len(self.inflight) < self.workers
                       and len(self.active) < max_active):
                    self._check_stop()
                    self._start_trial()
                self._check_stop()
                if not self.active:
                    break
                if not self.inflight:  # only trials resolved without evaluation remain
                    continue
                now = time.monotonic()
                deadline = min(t + self._backstop_s() for _, t in self.inflight.values())
                wait_s = max(0.0, min(1.0, deadline - now))
                ready, _ = ray.wait(list(self.inflight), num_returns=1, timeout=wait_s)
                for ref in ready:
                    self._collect(ref)
                self._check_timeouts()
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
        self._stop_signal: int | None = None

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
        if getattr(self, "_stop_signal", None) is not None:
            raise KeyboardInterrupt

    def _start_trial(self) -> None:
        cfg = self.cfg
        t0 = time.monotonic()
        if cfg.search.sampler == "exhaustive":
            self._enqueue_next_unseen()
        trial = self.study.ask()
        arch = self.space.suggest(trial)
        aid = arch.arch_id
        self._seen_archs.add(aid)
        cost = self.network_cost(self.backbone, self.task, arch)
        lat = self.latency_model.predict(arch, self.backbone)
        predicted: dict[str, Any] = {
            "latency_ms": float(lat.mean_ms), "latency_low_ms": float(lat.low_ms),
            "latency_high_ms": float(lat.high_ms),
            "per_stage_ms": {k: float(v) for k, v in dict(lat.per_stage_ms).items()},
            "memory_mb": float(cost.memory_mb), "params": int(cost.params),
            "flops": float(cost.flops)}
        # few attrs (each is an fsynced journal write): flattened by outputs.trial_attrs()
        trial.set_user_attr("arch_id", aid)
        trial.set_user_attr("candidate", {"arch": arch.to_json(), **predicted})
        lat_budget, mem_budget = cfg.constraints.latency_budget_ms, cfg.constraints.memory_budget_mb
        feasible = ((lat_budget is None or lat.mean_ms <= lat_budget)
                    and (mem_budget is None or cost.memory_mb <= mem_budget))
        if lat_budget is not None:
            trial.set_constraint("latency_ms", float(lat.mean_ms) - lat_budget)
        if mem_budget is not None:
            trial.set_constraint("memory_mb", float(cost.memory_mb) - mem_budget)
            if cost.memory_mb > mem_budget:
                reason = (f"memory: {cost.memory_mb:.0f} MB exceeds the "
                          f"{mem_budget:g} MB budget (not evaluated)")
                trial.set_user_attr("failure_reason", reason)
                trial.set_user_attr("result", {"wall_time_s": time.monotonic() - t0})
                self.study.tell(trial, state=_state("PRUNED"))
                self.summary.pruned += 1
                self._finished()
                return
        keys = [EvalKey(aid, self.config_key, cfg.evaluator.budget, s) for s in cfg.evaluator.seeds]
        act = _Active(trial, arch, keys, lat, t0, feasible, predicted)
        self.active[trial.number] = act
        for key in keys:
            hit = self.cache.get(key)
            if hit is not None:
                act.results[key] = hit
                act.cache_hits += 1
                self.summary.cache_hits += 1
                continue
            self.waiters.setdefault(key, []).append(trial.number)
            if key not in self.pending:
                ref = self.remote.remote(self.eval_spec, arch.to_json(), key.seed, key.budget,
                                         cfg.evaluator.threads, cfg.evaluator.timeout_s)
                self.pending[key] = ref
                self.inflight[ref] = (key, time.monotonic())
        if len(act.results) == len(keys):
            self._finish(act)

    def _enqueue_next_unseen(self) -> None:
        for arch in self._arch_iter:
            if arch.arch_id not in self._seen_archs:
                self.study.enqueue_trial(self.space.params_of(arch))
                return

    def _collect(self, ref: Any) -> None:
        import ray

        key, _ = self.inflight.pop(ref)
        self.pending.pop(key, None)
        waiting = self.waiters.pop(key, [])
        try:
            out = ray.get(ref)
        except Exception as e:  # RayTaskError, WorkerCrashedError, ...
            from experiments.distributed import failure_reason

            self._fail_waiters(waiting, failure_reason(e))
            return
        value = out.get("value")
        if not isinstance(value, float) or not math.isfinite(value):
            self._fail_waiters(waiting, f"evaluator returned a non-finite value ({value!r})")
            return
        item = CachedEval(key, value, out.get("extras", {}), float(out.get("wall_time_s", 0.0)),
                          str(out.get("node_id", "")), str(out.get("host", "")),
                          int(out.get("pid", 0)))
        self.cache.put(item)
        self.summary.evaluations_run += 1
        for num in waiting:
            act = self.active.get(num)
            if act is None:
                continue
            act.results[key] = item
            if len(act.results) == len(act.keys):
                self._finish(act)

    def _backstop_s(self) -> float:
        """The worker stops an evaluation at ``timeout_s`` after it STARTS; the driver cancels
        one that has not returned this long after SUBMISSION (worker start-up and queueing
        included), e.g. a hang in native code that the worker's alarm cannot interrupt."""
        t = self.cfg.evaluator.timeout_s
        return t + max(BACKSTOP_GRACE_S, t)

    def _check_timeouts(self) -> None:
        import ray

        limit = self._backstop_s()
        now = time.monotonic()
        for ref, (key, t_sub) in list(self.inflight.items()):
            if now - t_sub > limit:
                ray.cancel(ref, force=True, recursive=True)
                self.inflight.pop(ref)
                self.pending.pop(key, None)
                self._fail_waiters(self.waiters.pop(key, []),
                                   f"timeout: no result {limit:g} s after submission "
                                   f"(evaluator.timeout_s={self.cfg.evaluator.timeout_s:g} plus "
                                   f"start-up/queueing grace); cancelled")

    def _fail_waiters(self, numbers: list[int], reason: str) -> None:
        for num in numbers:
            act = self.active.get(num)
            if act is not None:
                self._finish(act, reason)

    def _finish(self, act: _Active, failure: str | None = None) -> None:
        from optuna.trial import TrialState

        self.active.pop(act.trial.number, None)
        trial = act.trial
        # drop this trial from evaluations it still waits on (other trials may share them)
        for key in act.keys:
            if key not in act.results and num_in(self.waiters.get(key), trial.number):
                self.waiters[key].remove(trial.number)
        wall = time.monotonic() - act.t0
        if failure is None:
            vals = [act.results[k].value for k in act.keys]
            q = float(np.mean(vals))
            nodes = sorted({act.results[k].node_id for k in act.keys if act.results[k].node_id})
            result: dict[str, Any] = {
                "quality": q, "wall_time_s": wall, "node_ids": nodes,
                "eval_wall_time_s": float(sum(act.results[k].wall_time_s for k in act.keys))}
            if len(vals) > 1:
                result["quality_std"] = float(np.std(vals))
            extras = act.results[act.keys[0]].extras
            if extras:
                result["extras"] = dict(extras)
            trial.set_user_attr("result", result)
            if act.cache_hits:
                trial.set_user_attr("cache_hits", act.cache_hits)
            values = [q if o == "quality" else act.predicted[o] for o in self.cfg.objectives]
            self.study.tell(trial, values)
            self.summary.complete += 1
            if act.feasible:
                self._front_pts.append([v if d == "minimize" else -v
                                        for v, d in zip(values, self.directions)])
        else:
            trial.set_user_attr("failure_reason", failure)
            trial.set_user_attr("result", {"wall_time_s": wall})
            self.study.tell(trial, state=TrialState.FAIL)
            if failure.startswith(INTERRUPTED):
                self.study.enqueue_trial(dict(trial.params), user_attrs={"requeued_from": trial.number},
                                         skip_if_exists=False)
                return
            self.summary.failed += 1
        self._finished()

    def _finished(self) -> None:
        self.done += 1
        if hasattr(self, "bar"):
            self.bar.update(1)
            now = time.monotonic()
            if now - self._last_front > 0.5 or self.done >= self.target:
                from experiments.hypervolume import pareto_mask

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
        try:
            import ray

            for ref in list(self.inflight):
                try:
                    ray.cancel(ref, force=True)
                except Exception:
                    pass
        except ImportError:
            pass
        self.inflight.clear()
        self.pending.clear()
        self.waiters.clear()
        for act in list(self.active.values()):
            try:
                self._finish(act, reason)
            except Exception:
                pass
        self.active.clear()

    def _write_outputs(self, final: bool) -> None:
        from experiments.outputs import write_outputs

        self._last_outputs = time.monotonic()
        write_outputs(self.run_dir, study=self.study, cfg=self.cfg,
                      latency_model=getattr(self, "latency_model", None),
                      plots=final and self.opts.write_plots, report=final)
        if final:
            from experiments.outputs import front_trials, unique_by_arch

            self.summary.front_size = len(unique_by_arch(front_trials(self.study)))


def num_in(lst: list[int] | None, n: int) -> bool:
    return bool(lst) and n in lst


def _state(name: str) -> Any:
    from optuna.trial import TrialState

    return TrialState[name]


def _thaw(x: Any) -> Any:
    from experiments.config import _thaw as t

    return t(x)


def _resume_seed(seed: int, n_trials: int) -> int:
    """Sampler seed of a session that starts after ``n_trials`` trials (deterministic, and
    different from every earlier session's, so random draws are not repeated)."""
    return (seed * 1_000_003 + n_trials * 7_919) % (2**31 - 1)


def _first_diff(a: Any, b: Any, path: str = "") -> str:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b), key=str):
            if a.get(k) != b.get(k):
                return _first_diff(a.get(k), b.get(k), f"{path}.{k}" if path else str(k))
    return path or "config"




def run_search(cfg: ExperimentConfig, opts: SearchOptions | None = None) -> SearchSummary:
    """Run (or ``opts.resume``) the search described by ``cfg``; outputs go to the run dir."""
    return Driver(cfg, opts or SearchOptions()).run()
