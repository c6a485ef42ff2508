"""A run directory: its metadata file (``run.json``), its lock, its study, and opening it for
reading.

``run.json`` (format version 1, unchanged since the first release) tells the commands that
read a run (``pareto``, ``plot``, ``export``, :func:`experiments.load_run`) where the study is::

    {"format_version": 1, "study_name": "smoke", "storage": null,
     "objectives": ["quality", "latency_ms"], "directions": ["maximize", "minimize"],
     "evaluator": "params", "config_key": "...", "latency_model": "iphone16pm"}

:class:`RunMeta` is its one reader and writer. The rest of the folder is described in
:mod:`experiments.outputs`.
"""

from __future__ import annotations

import json
import os
import socket
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from common.errors import ConfigError, TemponasError
from common.fsio import (
    atomic_write_json,
    atomic_write_text,
    io_error,
    release_holder_lock,
    try_holder_lock,
)
from experiments.cache import CACHE_FILE, rebuild_from_study
from experiments.config import ExperimentConfig, dump_config, load_config
from experiments.storage_lock import AttrStudyLock, FileStudyLock
from experiments.storage_url import has_credentials, mask_url, url_identity
from experiments.study import (
    JOURNAL_FILE,
    open_storage,
    recover_stale_trials,
    repair_run_journal,
    storage_file,
    storage_location,
)

RUN_FILE = "run.json"
RUN_FORMAT_VERSION = 1
CONFIG_FILE = "config.yaml"
WEIGHTS_DIR = "weights"


def weights_path(run_dir: str | Path, arch_id: str, seed: int) -> Path:
    """``<run>/weights/<arch_id>/s<seed>.safetensors``: the weights an evaluation kept
    (``evaluator.keep_weights``), written by the driver from the evaluation's result."""
    return Path(run_dir) / WEIGHTS_DIR / arch_id / f"s{seed}.safetensors"


class RunDirError(TemponasError):
    """The run directory cannot be used (locked by another search, unwritable, incompatible)."""


# ---- run.json ------------------------------------------------------------------------------

@dataclass(frozen=True)
class RunMeta:
    """The contents of ``run.json``: which study in which storage, optimizing what."""

    study_name: str
    storage: str | None = None
    objectives: tuple[str, ...] = ("quality", "latency_ms")
    directions: tuple[str, ...] = ("maximize", "minimize")
    evaluator: str = ""
    config_key: str = ""
    latency_model: str = ""
    format_version: int = field(default=RUN_FORMAT_VERSION)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["objectives"], d["directions"] = list(self.objectives), list(self.directions)
        return d

    def write(self, run_dir: str | Path) -> None:
        """Write ``run.json`` (a storage password masked; owner-only if the URL has one)."""
        d = {**self.to_dict(), "storage": mask_url(self.storage)}
        atomic_write_json(Path(run_dir) / RUN_FILE, d, perm=private_perm(self.storage))

    @classmethod
    def read(cls, run_dir: str | Path) -> RunMeta | None:
        """The run's metadata; None if it has no ``run.json``. A corrupt file or another
        format version is a :class:`RunDirError` naming the file."""
        path = Path(run_dir) / RUN_FILE
        if not path.exists():
            return None
        try:
            d = json.loads(path.read_text())
        except (OSError, ValueError):
            raise RunDirError(f"{path}: unreadable or corrupt run metadata") from None
        version = d.get("format_version") if isinstance(d, dict) else "?"
        if version != RUN_FORMAT_VERSION:
            raise RunDirError(f"{path}: written by an incompatible temponas (run format "
                              f"{version!r}, this one reads {RUN_FORMAT_VERSION})")
        try:
            return cls(study_name=str(d["study_name"]), storage=d.get("storage"),
                       objectives=tuple(d.get("objectives") or cls.objectives),
                       directions=tuple(d.get("directions") or cls.directions),
                       evaluator=str(d.get("evaluator", "")),
                       config_key=str(d.get("config_key", "")),
                       latency_model=str(d.get("latency_model", "")))
        except (KeyError, TypeError):
            raise RunDirError(f"{path}: no study_name in the run metadata") from None


# ---- preparing a run directory for a search ---------------------------------------------------

def private_perm(storage: str | None) -> int | None:
    """``0o600`` for the run files that name a storage with credentials (masked or not: the
    user, host and database are private too), else None (the usual mode)."""
    return 0o600 if has_credentials(storage) else None


def prepare_run_dir(run_dir: Path, cfg: ExperimentConfig, *, resume: bool) -> None:
    """Check that ``cfg`` may run in ``run_dir``; nothing is written (the run's files are
    written by :func:`open_search_study` once every check has passed).

    A resume needs the run's stored config, the same :meth:`ExperimentConfig.identity`, the
    same study name and storage, and (for a file storage) the file; an existing ``run.json``
    must be readable by this version. Call it holding the lock.
    """
    cfg_path = run_dir / CONFIG_FILE
    meta = RunMeta.read(run_dir)
    if not resume:
        return
    if not cfg_path.exists():
        raise RunDirError(f"{run_dir}: nothing to resume (no {CONFIG_FILE}); "
                          f"start the search without --resume")
    old_cfg = load_config(cfg_path)
    old, new = old_cfg.identity(), cfg.identity()
    hint = (f"resume with the run's own config (temponas search {cfg_path} --out {run_dir} "
            f"--resume) or use a new --out")
    if old != new:
        raise ConfigError(f"{cfg.source}: {_first_diff(old, new)}: differs from the run being "
                          f"resumed ({cfg_path}); {hint}")
    name = meta.study_name if meta is not None else old_cfg.name
    if cfg.name != name:
        raise ConfigError(f"{cfg.source}: name: {cfg.name!r} differs from the study being "
                          f"resumed ({name!r}, {cfg_path}); {hint}")
    stored = meta.storage if meta is not None else old_cfg.search.storage
    if url_identity(cfg.search.storage) != url_identity(stored):
        raise ConfigError(f"{cfg.source}: search.storage: {storage_location(cfg.search.storage, run_dir)} "
                          f"differs from the storage of the run being resumed "
                          f"({storage_location(stored, run_dir)}); {hint}")
    path = storage_file(cfg.search.storage, run_dir)
    if path is not None and not path.exists():
        raise RunDirError(f"{run_dir}: nothing to resume: its study storage {path} does not "
                          f"exist")


def _first_diff(a: Any, b: Any, path: str = "") -> str:
    """The dotted key path of the first difference between two nested dicts."""
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b), key=str):
            if a.get(k) != b.get(k):
                return _first_diff(a.get(k), b.get(k), f"{path}.{k}" if path else str(k))
    return path or "config"


def open_search_study(run_dir: Path, cfg: ExperimentConfig, *, directions: list[str],
                      sampler: Any, config_key: str, resume: bool) -> tuple[Any, list[str], list[int]]:
    """Lock the study (:mod:`experiments.storage_lock`; released with the run-directory lock),
    create it (or load it to ``resume``), name its metrics, write ``config.yaml`` and
    ``run.json``; after a crash repair the run's journal, recover the trials a dead driver left
    RUNNING and restore the evaluation log from the study. Returns ``(study, repairs,
    recovered trial numbers)``. Call it holding the run-directory lock."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url, where = cfg.search.storage, storage_location(cfg.search.storage, run_dir)
    path = storage_file(url, run_dir)
    if path is not None:  # before the journal repair: no other driver may be appending to it
        _hold(run_dir, FileStudyLock(path, cfg.name, run_dir, where).acquire())
    repairs: list[str] = []
    if url is None:  # our own journal; the lock says no other driver writes it
        try:
            repairs = repair_run_journal(run_dir)
        except OSError as e:
            raise io_error(run_dir / JOURNAL_FILE, e) from None
    storage = open_storage(url, run_dir)
    exists = cfg.name in optuna.get_all_study_names(storage)
    if exists and not resume:
        n = len(optuna.load_study(study_name=cfg.name, storage=storage).trials)
        if n:
            raise RunDirError(f"{run_dir}: already holds study {cfg.name!r} with {n} "
                              f"trial(s); pass --resume to continue it or use another --out")
    if resume and not exists:
        raise RunDirError(f"{run_dir}: no study {cfg.name!r} in {where} to resume")
    study = optuna.create_study(study_name=cfg.name, storage=storage, sampler=sampler,
                                directions=directions, load_if_exists=True)
    if path is None:  # a database server: the lock is a record in the study
        _hold(run_dir, AttrStudyLock(study, run_dir, where).acquire())
    stored = [d.name.lower() for d in study.directions]
    if stored != list(directions):
        raise RunDirError(f"{run_dir}: the stored study optimizes {stored}, this config "
                          f"{list(directions)}")
    if not exists:
        study.set_user_attr("objectives", list(cfg.objectives))
        study.set_user_attr("evaluator", cfg.evaluator.name)
        study.set_user_attr("config_key", config_key)
    if study.metric_names is None:  # new studies, and those of an older temponas
        with warnings.catch_warnings():  # "experimental" since Optuna 3.2
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(list(cfg.objectives))
    secret_env = 0o600 if cfg.runtime_env.env_vars else None  # env vars often hold tokens
    atomic_write_text(run_dir / CONFIG_FILE, dump_config(cfg), perm=private_perm(url) or secret_env)
    RunMeta(study_name=cfg.name, storage=url, objectives=tuple(cfg.objectives),
            directions=tuple(directions), evaluator=cfg.evaluator.name, config_key=config_key,
            latency_model=cfg.latency_model).write(run_dir)
    recovered = recover_stale_trials(study) if resume else []
    if resume:
        n = rebuild_from_study(run_dir, study.get_trials(deepcopy=False),
                               config_key=str(study.user_attrs.get("config_key", config_key)),
                               budget=cfg.evaluator.budget, seeds=list(cfg.evaluator.seeds))
        if n:
            repairs.append(f"{run_dir / CACHE_FILE}: restored {n} evaluation(s) of finished "
                           f"trials from the study (the log had lost them)")
    return study, repairs, recovered


# ---- opening a finished (or running) run for reading ------------------------------------------

@dataclass
class Run:
    """A run directory opened for reading: its config, its Optuna study and ``run.json``."""

    run_dir: Path
    cfg: ExperimentConfig
    study: Any
    meta: RunMeta


def open_run(run_dir: str | Path) -> Run:
    """Open ``run_dir``'s config and study (nothing is written); clear errors for anything
    missing."""
    import optuna

    d = Path(run_dir)
    if not d.is_dir():
        raise RunDirError(f"{d}: no such run directory")
    meta = RunMeta.read(d)
    if meta is None:
        raise RunDirError(f"{d}: not a temponas run directory (no {RUN_FILE})")
    cfg = load_config(d / CONFIG_FILE)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = open_storage(meta.storage, d)
    try:
        study = optuna.load_study(study_name=meta.study_name, storage=storage)
    except KeyError:
        raise RunDirError(f"{d}: the storage holds no study {meta.study_name!r}") from None
    return Run(d, cfg, study, meta)


def _hold(run_dir: Path, lock: Any) -> None:
    """Keep ``lock`` (anything with ``release()``) as long as ``run_dir``'s lock is held."""
    holder = RunLock._held.get(Path(run_dir).resolve())
    if holder is None:
        raise RuntimeError(f"{run_dir}: the run-directory lock is not held by this process")
    holder._attached.append(lock)


# ---- run-directory lock --------------------------------------------------------------------

class RunLock:
    """An exclusive lock on a run directory, held for the life of one search.

    Uses ``fcntl.flock`` on ``<run>/.lock`` (the kernel drops it when the process dies, so a
    crashed search never leaves the directory stuck) and records ``pid``/``host``/start time in
    the file so a refused second search can say who holds it.
    """

    #: the lock each run directory is held with in this process (see :func:`_hold`)
    _held: dict[Path, RunLock] = {}

    def __init__(self, run_dir: str | Path):
        self.path = Path(run_dir) / ".lock"
        self._fd: int | None = None
        self._attached: list[Any] = []

    def acquire(self) -> RunLock:
        run_dir = self.path.parent
        if run_dir.exists() and not run_dir.is_dir():
            raise RunDirError(f"{run_dir}: exists and is not a directory (a run directory is "
                              f"needed here)")
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise io_error(self.path, e) from None
        info = {"pid": os.getpid(), "host": socket.gethostname(),
                "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        fd, holder = try_holder_lock(self.path, info)
        if fd is None:
            who = (f"pid {holder.get('pid')} on {holder.get('host')} since {holder.get('started')}"
                   if holder else "another process")
            raise RunDirError(f"{self.path.parent}: another temponas search is running in this run "
                              f"directory ({who}); wait for it, stop it, or use another --out")
        self._fd = fd
        RunLock._held[self.path.parent.resolve()] = self
        return self

    def holder(self) -> dict[str, Any]:
        try:
            return json.loads(self.path.read_text() or "{}")
        except (OSError, ValueError):
            return {}

    def release(self) -> None:
        """Release the locks held with this one (the study lock), then this one."""
        while self._attached:
            self._attached.pop().release()
        if self._fd is None:
            return
        RunLock._held.pop(self.path.parent.resolve(), None)
        release_holder_lock(self._fd)
        self._fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
