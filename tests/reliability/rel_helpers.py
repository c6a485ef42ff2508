"""Helpers of the reliability tests: derived smoke configs, the CLI in-process, run-dir facts."""

from __future__ import annotations

import contextlib
import copy
import csv
import os
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import yaml
from cli_run import cli  # noqa: F401 - re-exported for the tests of this folder

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
SMOKE = ROOT / "experiments" / "configs" / "smoke.yaml"
TEMPONAS = [sys.executable, "-m", "experiments.cli"]


def smoke_dict() -> dict[str, Any]:
    return yaml.safe_load(SMOKE.read_text())


def _merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def write_config(path: Path, **over: Any) -> Path:
    """The smoke config with nested overrides (``search={"n_trials": 8}``) written to ``path``."""
    d = _merge(smoke_dict(), over)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(d, sort_keys=False))
    return path


def faulty(script_dir: Path, plan=(), sleep_s: float = 0.0, timeout_s: float = 60.0,
           retries: int = 1, hang_s: float = 60.0) -> dict[str, Any]:
    """An ``evaluator`` section using the ``rel_evaluators:Faulty`` plug-in."""
    script_dir.mkdir(parents=True, exist_ok=True)
    return {"name": "rel_evaluators:Faulty",
            "options": {"script_dir": str(script_dir), "plan": list(plan), "sleep_s": sleep_s,
                        "hang_s": hang_s},
            "seeds": [0], "timeout_s": timeout_s, "retries": retries}


def search_cli(cfg: Path, run: Path, *extra: str) -> tuple[int, str, str]:
    """``temponas search CFG --out RUN --no-progress EXTRA...`` in-process: (exit code, stdout, stderr)."""
    return cli("search", str(cfg), "--out", str(run), "--no-progress", *extra)


def summary_line(out: str) -> str:
    """The search's one-line summary (stdout also carries Ray's worker-death notices)."""
    return next((ln for ln in out.splitlines() if " complete, " in ln), out.strip())


def subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), str(ROOT)] +
                                        [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    env.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    return env


def load_study(run_dir: Path, name: str = "smoke"):
    import optuna

    from experiments.study import open_storage

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.load_study(study_name=name, storage=open_storage(None, Path(run_dir)))


def states(study) -> Counter:
    return Counter(t.state.name for t in study.get_trials(deepcopy=False))


def evaluation_counts(run_dir: Path) -> Counter:
    from experiments.cache import read_records

    return Counter((r["arch_id"], r["config_key"], r["budget"], r["seed"])
                   for r in read_records(run_dir))


def csv_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def tree(d: Path) -> set[str]:
    """Relative paths of every file under ``d`` (empty if it does not exist)."""
    d = Path(d)
    return {str(p.relative_to(d)) for p in d.rglob("*") if p.is_file()} if d.exists() else set()


def one_line_error(rc: int, err: str) -> str:
    """Assert the CLI's bad-input contract and return the message."""
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 2, (rc, err)
    assert "Traceback" not in err, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


@contextlib.contextmanager
def plugin_path():
    """Ray workers import the test plug-in evaluators (``rel_evaluators:Faulty``) like a user's
    module: through PYTHONPATH, inherited from the process that starts Ray's raylets."""
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join([str(HERE)] + ([old] if old else []))
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = old


def best_by_arch(study) -> set[int]:
    """The trial numbers pareto.csv holds: of ``study.best_trials``, the earliest trial of each
    architecture."""
    first: dict[str, int] = {}
    for t in sorted(study.best_trials, key=lambda t: t.number):
        first.setdefault(t.user_attrs["arch_id"], t.number)
    return set(first.values())


class FakeDisk:
    """Stands in for ``os`` in the writers (``common.fsio`` and Optuna's journal backend):
    after ``budget`` successful fsyncs of files under ``root``, every fsync/replace there fails
    with ``err`` — the output disk filled up (ENOSPC) or was remounted read-only (EROFS)."""

    def __init__(self, root: Path, budget: int, err: int):
        self.root, self.budget, self.err, self.failures = str(root), budget, err, 0

    def __getattr__(self, name):
        return getattr(os, name)

    def _check(self, path: str) -> None:
        if not str(path).startswith(self.root):
            return
        if self.budget <= 0:
            self.failures += 1
            raise OSError(self.err, os.strerror(self.err), path)
        self.budget -= 1

    def fsync(self, fd):
        self._check(os.readlink(f"/proc/self/fd/{fd}"))
        return os.fsync(fd)

    def replace(self, src, dst, *a, **kw):
        if self.budget <= 0:
            self._check(str(dst))
        return os.replace(src, dst, *a, **kw)


def kill_session(proc) -> None:
    """Kill the process ``proc`` (a ``subprocess.Popen`` started with ``start_new_session``) if
    still alive, then what is left of its session (by its id)."""
    import signal

    if proc.poll() is None:
        proc.kill()
        proc.wait()
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
