"""Optuna side of a search: storage, sampler, study creation and resume bookkeeping.

Only the driver touches the storage. The default is a journal file in the run directory
(``study.journal``; cheap per trial, safe to copy, opens in optuna-dashboard); any Optuna
storage URL (``sqlite:///...``, ``postgresql://...``) is accepted.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from common.errors import ConfigError, TemponasError
from experiments.ledger import is_duplicate
from experiments.storage_url import mask_text, mask_url, resolve_url

JOURNAL_FILE = "study.journal"
INTERRUPTED = "interrupted"  # failure_reason prefix of trials a stopped driver left behind

_SAMPLER_CLASSES = {"nsga2": "NSGAIISampler", "tpe": "TPESampler", "random": "RandomSampler",
                    "gp": "GPSampler", "exhaustive": "RandomSampler"}
#: sampler options a config may set (the rest are objects, not YAML values)
_SAMPLER_OPTIONS = {
    "nsga2": {"population_size", "mutation_prob", "crossover_prob", "swapping_prob"},
    "tpe": {"n_startup_trials", "n_ei_candidates", "multivariate", "group", "constant_liar",
            "consider_endpoints", "prior_weight"},
    "random": set(),
    "gp": {"n_startup_trials", "deterministic_objective"},
    "exhaustive": set(),
}
#: defaults temponas uses where Optuna's do not suit a static categorical space
_SAMPLER_DEFAULTS: dict[str, dict[str, Any]] = {
    "tpe": {"multivariate": True, "constant_liar": True},
    "gp": {"deterministic_objective": True},
}


class StorageError(TemponasError):
    """The study storage cannot be opened or is not a temponas study."""


def storage_location(url: str | None, run_dir: Path) -> str:
    """A printable location (for messages, the report and the optuna-dashboard command): the
    password of a URL is masked."""
    return mask_url(url) or str(run_dir / JOURNAL_FILE)


def _is_journal(url: str | None) -> bool:
    return url is None or url.endswith(".journal") or url.startswith("journal:")


def storage_file(url: str | None, run_dir: Path) -> Path | None:
    """The local file that holds the study (a journal or a SQLite database); None for a
    database server (``postgresql://...``) or an in-memory SQLite."""
    if _is_journal(url):
        return run_dir / JOURNAL_FILE if url is None else Path(
            url.removeprefix("journal:").removeprefix("//"))
    if url is not None and url.startswith("sqlite"):
        from sqlalchemy.engine import make_url

        try:
            db = make_url(url).database
        except Exception:
            return None
        return Path(db) if db and db != ":memory:" and not db.startswith("file:") else None
    return None


def open_storage(url: str | None, run_dir: Path) -> Any:
    """The Optuna storage: a journal file in ``run_dir`` by default, else ``url`` (``${NAME}``
    expanded, a masked password taken from the environment: :func:`resolve_url`)."""
    from optuna.storages import JournalStorage, RDBStorage
    from optuna.storages.journal import JournalFileBackend

    try:
        if _is_journal(url):
            path = storage_file(url, run_dir)
            path.parent.mkdir(parents=True, exist_ok=True)
            return JournalStorage(JournalFileBackend(str(path)))
        if "://" not in url:
            raise ConfigError(f"search.storage: {mask_url(url)!r} is neither an Optuna storage URL "
                              f"(sqlite:///file.db, postgresql://...) nor a .journal path")
        return RDBStorage(resolve_url(url), skip_compatibility_check=False)
    except TemponasError:
        raise
    except Exception as e:
        where = storage_location(url, run_dir)
        why = mask_text(" ".join(str(e).split()), url)[:300]
        raise StorageError(f"{where}: cannot open the study storage "
                           f"({type(e).__name__}: {why})") from None


def repair_run_journal(run_dir: Path) -> list[str]:
    """Make the run's own journal (``<run>/study.journal``) safe to append to after a crash.

    Call only while holding the run-directory lock (no other driver can be writing it):
    * a partial last line (a driver killed, or a full disk, in the middle of an append) is
      cut off: Optuna skips it when reading, but the next append would be glued to it and
      make the whole journal unreadable;
    * the journal lock file a killed driver left behind is removed (Optuna would wait its 30 s
      grace period on every resume).
    Returns one note per repair.
    """
    import os

    notes = []
    path = run_dir / JOURNAL_FILE
    lock = Path(str(path) + ".lock")
    if lock.is_symlink() or lock.exists():
        lock.unlink()
        notes.append(f"{lock}: removed the journal lock a stopped driver left behind")
    if path.exists() and path.stat().st_size:
        with open(path, "rb+") as f:
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":
                f.seek(0)
                data = f.read()
                keep = data.rfind(b"\n") + 1
                f.truncate(keep)
                f.flush()
                os.fsync(f.fileno())
                notes.append(f"{path}: dropped a partial last record ({len(data) - keep} bytes) "
                             f"left by an interrupted write")
    return notes


def make_sampler(name: str, options: Mapping[str, Any], seed: int) -> Any:
    import optuna.samplers as S

    allowed = _SAMPLER_OPTIONS[name]
    for k in options:
        if k not in allowed:
            raise ConfigError(f"search.sampler_options.{k}: not an option of the {name} sampler "
                              f"(options: {', '.join(sorted(allowed)) or 'none'})")
    from common.limits import option_range

    for k, v in options.items():  # numbers within common.limits.OPTION_RANGES
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            option_range(f"search.sampler_options.{k}", v)
    kw = {**_SAMPLER_DEFAULTS.get(name, {}), **dict(options)}
    cls = getattr(S, _SAMPLER_CLASSES[name])
    if name == "gp":  # GP fitting uses torch in the driver: 1 thread was 5-20x faster on a
        import torch  # loaded 2-core machine than torch's default (all cores)

        torch.set_num_threads(1)
    try:
        inspect.signature(cls).bind(seed=seed, **kw)
        return cls(seed=seed, **kw)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"search.sampler_options: {e}") from None


def trial_done(t: Any) -> bool:
    """A trial that counts toward ``n_trials``: finished, not left behind by a stopped driver,
    and not the repeat of an architecture an earlier trial already settled
    (:mod:`experiments.ledger`)."""
    from optuna.trial import TrialState

    if is_duplicate(t):
        return False
    if t.state in (TrialState.COMPLETE, TrialState.PRUNED):
        return True
    if t.state is TrialState.FAIL:
        return not str(t.user_attrs.get("failure_reason", "")).startswith(INTERRUPTED)
    return False


def recover_stale_trials(study: Any, reason: str = f"{INTERRUPTED}: the driver stopped "
                                                     f"before this trial finished") -> list[int]:
    """Mark trials left RUNNING by a dead driver FAIL and enqueue their parameters again.

    Optuna's heartbeat only works inside ``study.optimize``; in ask-and-tell a killed driver
    leaves its in-flight trials RUNNING forever. Returns the numbers of the recovered trials.
    """
    from optuna.trial import TrialState

    recovered = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study._storage.set_trial_user_attr(t._trial_id, "failure_reason", reason)
        study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
        if t.params:
            study.enqueue_trial(dict(t.params), user_attrs={"requeued_from": t.number},
                                skip_if_exists=False)
        recovered.append(t.number)
    return recovered
