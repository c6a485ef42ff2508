"""The driver of a real `temponas search` process is stopped twice mid-search: SIGTERM (a
scheduler preempting the job) stops it cleanly; the resumed process is then SIGKILLed. A second
search on the same run dir is refused while one runs, the dead driver's lock does not block,
and the final `--resume` finishes the study exactly: n_trials COMPLETE, nothing RUNNING, no
evaluation repeated, pareto.csv equal to the study's best trials.

The driver processes join the test session's Ray (``--ray-address``, as on a cluster) to save
a Ray start; their own process, journal, evaluation log and lock are what the signals hit.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest
from rel_helpers import (
    TEMPONAS,
    best_by_arch,
    cli,
    csv_rows,
    evaluation_counts,
    faulty,
    kill_session,
    load_study,
    one_line_error,
    states,
    subprocess_env,
    write_config,
)

pytestmark = [pytest.mark.fault, pytest.mark.timeout(180)]

N = 14


def _start(cfg, run, ray_address: str, log_dir, *extra: str) -> subprocess.Popen:
    """`temponas search` in its own process and session; output to files, not pipes (a full
    pipe would block it)."""
    n = len(list(log_dir.glob("driver*.err")))
    out = open(log_dir / f"driver{n}.out", "w")  # noqa: SIM115 - lives as long as the process
    err = open(log_dir / f"driver{n}.err", "w")  # noqa: SIM115
    proc = subprocess.Popen(TEMPONAS + ["search", str(cfg), "--out", str(run), "--no-progress",
                                        "--ray-address", ray_address, *extra],
                            env=subprocess_env(), stdout=out, stderr=err, text=True,
                            start_new_session=True)
    proc.err_path = log_dir / f"driver{n}.err"
    return proc


def _wait_for(pred, timeout_s: float, proc: subprocess.Popen) -> None:
    t0 = time.monotonic()
    while not pred():
        if proc.poll() is not None:
            raise AssertionError(f"the search exited early ({proc.returncode}): "
                                 f"{proc.err_path.read_text()[-2000:]}")
        if time.monotonic() - t0 > timeout_s:
            raise AssertionError("timed out waiting for the search to make progress")
        time.sleep(0.1)



def test_driver_sigterm_then_sigkill_then_resume(tmp_path, record, rel_ray):
    cfg = write_config(tmp_path / "kill.yaml", constraints={"memory_budget_mb": None},
                       evaluator=faulty(tmp_path / "script", sleep_s=0.4),
                       search={"n_trials": N, "workers": 2})
    run = tmp_path / "run"

    # ---- 1. a search runs; a second one on the same run dir is refused; SIGTERM stops it
    proc = _start(cfg, run, rel_ray, tmp_path)
    try:
        _wait_for(lambda: len(evaluation_counts(run)) >= 2, 90, proc)
        run_json = (run / "run.json").read_bytes()
        rc, out, err = cli("search", str(cfg), "--out", str(run), "--no-progress")
        msg = one_line_error(rc, err)
        assert "another temponas search is running in this run directory" in msg
        assert f"pid {proc.pid}" in msg
        rc, out, err = cli("search", str(cfg), "--out", str(run), "--no-progress", "--resume")
        assert "another temponas search is running" in one_line_error(rc, err)
        assert proc.poll() is None  # the first one is unharmed
        assert (run / "run.json").read_bytes() == run_json
        assert json.loads((run / ".lock").read_text())["pid"] == proc.pid
        record("concurrency", "second `temponas search` (or `--resume`) on a run dir in use",
               "a second search with the same config and --out while the first one runs",
               f"exit 2, one line: \"{msg}\"",
               "the running search continues untouched (process alive, its lock and run "
               "metadata unchanged)")

        t0 = time.monotonic()
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
        stop_s = time.monotonic() - t0
    finally:
        kill_session(proc)
    err = proc.err_path.read_text()
    assert proc.returncode == 130, (proc.returncode, err[-2000:])
    assert "Traceback" not in err, err[-3000:]
    hint = next(ln for ln in err.splitlines() if ln.startswith("interrupted;"))
    assert "--resume" in err
    study = load_study(run)
    st = states(study)
    assert st["RUNNING"] == 0, st  # nothing left dangling
    interrupted = [t for t in study.trials if t.state.name == "FAIL"]
    assert all(t.user_attrs["failure_reason"].startswith("interrupted") for t in interrupted)
    assert st["WAITING"] == len(interrupted)  # re-queued for the resume
    for f in ("trials.csv", "pareto.csv", "report.md"):
        assert (run / f).exists(), f
    record("fault", "driver gets SIGTERM mid-search (job preempted, `kill PID`)",
           "SIGTERM to the `temponas search` process after 2 evaluations",
           f"exit 130 after {stop_s:.1f} s, stderr: \"{hint} temponas search ... --resume\"",
           f"{st['COMPLETE']} COMPLETE trials; trials.csv, pareto.csv, report.md written; the "
           f"{len(interrupted)} interrupted trials FAIL as 'interrupted' and are re-queued (the "
           f"resume below runs them first)")

    # ---- 2. `--resume` in a new process, SIGKILLed mid-search
    n_before = len(evaluation_counts(run))
    proc = _start(cfg, run, rel_ray, tmp_path, "--resume")
    try:
        _wait_for(lambda: len(evaluation_counts(run)) >= n_before + 2, 90, proc)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        kill_session(proc)
    assert proc.returncode == -signal.SIGKILL
    evaluated_before = set(evaluation_counts(run))
    study = load_study(run)
    st = states(study)
    assert st["COMPLETE"] < N
    running_before = st["RUNNING"]
    told = {t.user_attrs.get("arch_id") for t in study.trials if t.state.name == "COMPLETE"}
    assert json.loads((run / ".lock").read_text())["pid"] == proc.pid  # the dead driver's record

    # ---- 3. resume: the stale lock does not block, the study finishes exactly
    t0 = time.monotonic()
    rc, out, err = cli("search", str(cfg), "--out", str(run), "--no-progress", "--resume")
    wall = time.monotonic() - t0
    assert rc == 0, err
    study = load_study(run)
    st = states(study)
    assert st["COMPLETE"] == N and st["RUNNING"] == 0 and st["WAITING"] == 0, st
    assert all(t.user_attrs["failure_reason"].startswith("interrupted")
               for t in study.trials if t.state.name == "FAIL")
    counts = evaluation_counts(run)
    assert max(counts.values()) == 1, "an evaluation ran twice"
    assert evaluated_before <= set(counts)
    # evaluations a dead driver finished but never told Optuna are served by the cache
    orphaned = {k[0] for k in evaluated_before} - told
    hits = sum(t.user_attrs.get("cache_hits", 0) for t in study.trials if t.state.name == "COMPLETE")
    assert hits >= len(orphaned)
    assert ({int(r["number"]) for r in csv_rows(run / "pareto.csv")}
            == best_by_arch(study))
    assert not list(run.rglob("*.tmp"))
    summary = [ln for ln in out.splitlines() if " complete, " in ln or "recovered" in ln]
    record("fault", "driver SIGKILLed mid-search, then `--resume`",
           f"`kill -9` of a resumed `temponas search` process after {len(evaluated_before)} "
           f"evaluations in all ({len(told)} trials told to Optuna, {running_before} RUNNING)",
           f"resume exit 0 in {wall:.1f} s: " + " / ".join(f'"{s}"' for s in summary),
           f"all {len(evaluated_before)} finished evaluations (incl. {len(orphaned)} a dead "
           f"driver never told Optuna, served by the cache); exactly {N} COMPLETE, 0 RUNNING, "
           f"0 WAITING, no evaluation repeated, pareto.csv == study.best_trials (one row per architecture)")
    record("concurrency", "run-dir lock left by a SIGKILLed driver",
           f".lock still names the dead pid {proc.pid} after `kill -9`",
           "nothing: `--resume` takes the lock at once (the kernel dropped the dead process's "
           "flock); no stale-lock timeout, no manual cleanup",
           "the lock record is rewritten with the new holder")
