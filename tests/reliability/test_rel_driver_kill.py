"""The driver process is SIGKILLed mid-search (a real `temponas search` subprocess with its own
Ray); a second search on the same run dir is refused while it runs; after the kill, the
stale run-dir lock does not block `--resume`, which finishes the study exactly."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest
from rel_helpers import (
    TEMPONAS,
    cli,
    csv_rows,
    evaluation_counts,
    faulty,
    load_study,
    one_line_error,
    states,
    subprocess_env,
    write_config,
)

pytestmark = [pytest.mark.fault, pytest.mark.timeout(150)]

N = 10


def _start(cfg, run, ray_address: str, tmp_path, *extra: str) -> subprocess.Popen:
    """`temponas search` in its own process (and session); output to files, not pipes (a
    full pipe would block it)."""
    out = open(tmp_path / "driver.out", "w")  # noqa: SIM115 - closed with the process
    err = open(tmp_path / "driver.err", "w")  # noqa: SIM115
    proc = subprocess.Popen(TEMPONAS + ["search", str(cfg), "--out", str(run), "--no-progress",
                                        "--ray-address", ray_address, *extra],
                            env=subprocess_env(), stdout=out, stderr=err, text=True,
                            start_new_session=True)
    proc.err_path = tmp_path / "driver.err"
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


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL what is left of the killed driver's session (its Ray processes)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def test_driver_sigkill_mid_search_then_resume(tmp_path, record, rel_ray):
    """The killed driver joins the test session's Ray (``--ray-address``, as on a cluster) to
    save a Ray start; its own process, journal, cache and lock are what the kill hits."""
    cfg = write_config(tmp_path / "kill.yaml", constraints={"memory_budget_mb": None},
                       evaluator=faulty(tmp_path / "script", sleep_s=0.3),
                       search={"n_trials": N, "workers": 2})
    run = tmp_path / "run"
    proc = _start(cfg, run, rel_ray, tmp_path)
    try:
        _wait_for(lambda: len(evaluation_counts(run)) >= 3, 90, proc)

        # ---- a second search on the same run dir while the first runs: refused
        run_json = (run / "run.json").read_bytes()
        rc, out, err = cli("search", str(cfg), "--out", str(run), "--no-progress")
        msg = one_line_error(rc, err)
        assert "another temponas search is running in this run directory" in msg
        assert f"pid {proc.pid}" in msg
        assert proc.poll() is None  # the first one is unharmed
        assert (run / "run.json").read_bytes() == run_json
        assert json.loads((run / ".lock").read_text())["pid"] == proc.pid
        record("concurrency", "second `temponas search` on a run dir in use",
               "a second search (same config, same --out) while the first one runs",
               f"exit 2, one line: \"{msg.replace(str(tmp_path), '<tmp>')}\"",
               "the running search continues untouched (process alive, its lock and run "
               "metadata unchanged)")
        rc, out, err = cli("search", str(cfg), "--out", str(run), "--no-progress", "--resume")
        msg2 = one_line_error(rc, err)
        assert "another temponas search is running" in msg2

        # ---- SIGKILL the driver mid-search
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        _kill_group(proc)
    assert proc.returncode == -signal.SIGKILL
    evaluated_before = set(evaluation_counts(run))
    study = load_study(run)
    st = states(study)
    assert st["COMPLETE"] < N
    running_before = st["RUNNING"]
    told = {t.user_attrs.get("arch_id") for t in study.trials if t.state.name == "COMPLETE"}
    holder = json.loads((run / ".lock").read_text())
    assert holder["pid"] == proc.pid  # the dead driver's lock record is still there

    # ---- resume: the stale lock does not block, the study finishes exactly
    t0 = time.monotonic()
    rc, out, err = cli("search", str(cfg), "--out", str(run), "--no-progress", "--resume")
    wall = time.monotonic() - t0
    assert rc == 0, err
    study = load_study(run)
    st = states(study)
    assert st["COMPLETE"] == N and st["RUNNING"] == 0 and st["WAITING"] == 0, st
    fails = [t.user_attrs["failure_reason"] for t in study.trials if t.state.name == "FAIL"]
    assert len(fails) == running_before and all(f.startswith("interrupted") for f in fails)
    counts = evaluation_counts(run)
    assert max(counts.values()) == 1, "an evaluation ran twice"
    assert evaluated_before <= set(counts)
    # evaluations the dead driver finished but never told Optuna were served by the cache
    orphaned = {k[0] for k in evaluated_before} - told
    hits = sum(t.user_attrs.get("cache_hits", 0) for t in study.trials if t.state.name == "COMPLETE")
    assert hits >= len(orphaned)
    best = {t.number for t in study.best_trials}
    assert {int(r["number"]) for r in csv_rows(run / "pareto.csv")} == best
    assert not list(run.rglob("*.tmp"))
    summary = [ln for ln in out.splitlines() if " complete, " in ln or "recovered" in ln]
    record("fault", "driver SIGKILLed mid-search, then `--resume`",
           f"`kill -9` of the `temponas search --ray-address ...` process after {len(evaluated_before)} evaluations "
           f"({len(told)} told to Optuna, "
           f"{running_before} trials RUNNING)",
           f"resume exit 0 in {wall:.1f} s: \"{summary[0]}\" / \"{summary[1] if len(summary) > 1 else ''}\"",
           f"all {len(evaluated_before)} finished evaluations (incl. {len(orphaned)} the dead "
           f"driver never told Optuna, served by the cache); exactly {N} COMPLETE, 0 RUNNING, "
           f"no evaluation repeated, pareto.csv == study.best_trials")
    record("concurrency", "run-dir lock left by a SIGKILLed driver",
           f".lock still names the dead pid {proc.pid} after `kill -9`",
           "nothing: `--resume` takes the lock at once (the kernel dropped the dead process's "
           "flock); no stale-lock timeout, no manual cleanup",
           "the lock record is rewritten with the new holder")


def test_driver_sigterm_stops_cleanly_then_resume(tmp_path, record, rel_ray):
    """SIGTERM (a scheduler preempting the job, `kill PID`): the driver stops its evaluations,
    writes everything, says how to continue and exits 130; --resume finishes the study."""
    cfg = write_config(tmp_path / "term.yaml", constraints={"memory_budget_mb": None},
                       evaluator=faulty(tmp_path / "script", sleep_s=0.3),
                       search={"n_trials": N, "workers": 2})
    run = tmp_path / "run"
    proc = _start(cfg, run, rel_ray, tmp_path)
    try:
        _wait_for(lambda: len(evaluation_counts(run)) >= 2, 90, proc)
        t0 = time.monotonic()
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
        stop_s = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        _kill_group(proc)
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
    done_before = st["COMPLETE"]
    rc, out, e2 = cli("search", str(cfg), "--out", str(run), "--no-progress", "--resume")
    assert rc == 0, e2
    study = load_study(run)
    st = states(study)
    assert st["COMPLETE"] == N and st["RUNNING"] == 0 and st["WAITING"] == 0, st
    assert max(evaluation_counts(run).values()) == 1
    assert ({int(r["number"]) for r in csv_rows(run / "pareto.csv")}
            == {t.number for t in study.best_trials})
    record("fault", "driver gets SIGTERM mid-search (job preempted, `kill PID`), then `--resume`",
           "SIGTERM to the `temponas search` process after 2 evaluations",
           f"exit 130 after {stop_s:.1f} s, stderr: \"{hint} temponas search ... --resume\"",
           f"{done_before} COMPLETE trials, trials.csv/pareto.csv/report.md written; the "
           f"{len(interrupted)} interrupted trials FAIL as 'interrupted' and re-queued; "
           f"`--resume` ran them first and reached {N} COMPLETE, no evaluation repeated")
