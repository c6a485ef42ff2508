"""Faults during a search, in this process with one shared local Ray (real workers, real
journal storage): evaluator failures, worker deaths, a full or read-only disk, damaged logs."""

from __future__ import annotations

import errno
import ipaddress
import os
import shutil
import time
from pathlib import Path

import pytest
from netcheck import descendants, listening
from rel_evaluators import attempts
from rel_helpers import (
    FakeDisk,
    best_by_arch,
    cli,
    csv_rows,
    evaluation_counts,
    faulty,
    load_study,
    one_line_error,
    search_cli,
    states,
    summary_line,
    write_config,
)

pytestmark = [pytest.mark.fault, pytest.mark.timeout(120), pytest.mark.usefixtures("rel_ray")]

NO_MEM = {"memory_budget_mb": None}




def _line(out: str, start: str) -> str:
    return next((ln for ln in out.splitlines() if ln.startswith(start)), "")


def reasons_of(study) -> list[str]:
    return [t.user_attrs.get("failure_reason", "") for t in study.trials if t.state.name != "COMPLETE"]


def _assert_finished(run: Path, n: int) -> None:
    """Exactly n COMPLETE, nothing RUNNING/WAITING, no evaluation run twice, pareto == study."""
    study = load_study(run)
    st = states(study)
    assert st["COMPLETE"] == n and st["RUNNING"] == 0 and st["WAITING"] == 0, st
    counts = evaluation_counts(run)
    assert counts and max(counts.values()) == 1, counts
    assert ({int(r["number"]) for r in csv_rows(run / "pareto.csv")}
            == best_by_arch(study))
    assert not list(run.rglob("*.tmp"))


def test_evaluator_raises_nan_inf_and_hang_fail_their_trials_only(tmp_path, record):
    plan = ["ok", "raise", "nan", "inf", "hang"]
    cfg = write_config(tmp_path / "faulty.yaml", constraints=NO_MEM,
                       evaluator=faulty(tmp_path / "script", plan, timeout_s=3, hang_s=60),
                       search={"n_trials": 9})
    run = tmp_path / "run"
    t0 = time.monotonic()
    rc, out, err = search_cli(cfg, run)
    wall = time.monotonic() - t0
    assert rc == 0, err
    assert wall < 45  # the hang was cut at the timeout, not waited out
    study = load_study(run)
    st = states(study)
    assert st["FAIL"] == 4 and st["COMPLETE"] == 5 and st["RUNNING"] == 0, (st, reasons_of(study))
    reasons = sorted(t.user_attrs["failure_reason"] for t in study.trials if t.state.name == "FAIL")
    assert any(r.startswith("evaluator raised RuntimeError: injected failure") for r in reasons)
    assert "evaluator returned a non-finite value (nan)" in reasons
    assert "evaluator returned a non-finite value (inf)" in reasons
    assert "timeout: the evaluation ran longer than 3 s (evaluator.timeout_s) and was stopped" in reasons
    rows = csv_rows(run / "trials.csv")
    assert sorted(r["failure_reason"] for r in rows if r["state"] == "FAIL") == reasons
    report = (run / "report.md").read_text()
    section = report.split("## Failures and pruned trials by reason", 1)[1]
    for key in ("evaluator raised RuntimeError", "non-finite value (nan)", "non-finite value (inf)",
                "timeout"):
        assert key in section, key
    # failed evaluations are never cached: a resume would try them again
    assert len(evaluation_counts(run)) == len({t.user_attrs["arch_id"] for t in study.trials
                                              if t.state.name == "COMPLETE"})
    summary = summary_line(out)
    for mode, reason in (("raise", next(r for r in reasons if "raised" in r)),
                         ("nan", "evaluator returned a non-finite value (nan)"),
                         ("inf", "evaluator returned a non-finite value (inf)"),
                         ("hang", next(r for r in reasons if r.startswith("timeout")))):
        what = {"raise": "evaluator raises RuntimeError", "nan": "evaluator returns NaN",
                "inf": "evaluator returns +inf",
                "hang": "evaluator hangs (sleeps 60 s) past evaluator.timeout_s=3"}[mode]
        record("fault", what, f"plug-in `rel_evaluators:Faulty` (module:Class), plan {plan}",
               f"trial FAIL, failure_reason \"{reason}\" in trials.csv and counted by reason in "
               f"report.md; search exits 0: \"{summary}\"",
               f"the other {st['COMPLETE']} trials COMPLETE; search finished in {wall:.0f} s; "
               f"nothing cached for the failed evaluation")


def test_worker_killed_mid_evaluation_retried_or_trial_failed(tmp_path, record):
    """One evaluation's worker dies once (retried in a new worker: COMPLETE), another's dies
    on the attempt and on the retry (retries exhausted: that trial FAILs, the search goes on).
    One worker, so the script is deterministic."""
    script = tmp_path / "script"
    cfg = write_config(tmp_path / "die.yaml", constraints=NO_MEM,
                       evaluator=faulty(script, ["ok", "die", "ok", "die", "die"], retries=1),
                       search={"n_trials": 5, "workers": 1})
    run = tmp_path / "run"
    rc, out, err = search_cli(cfg, run)
    assert rc == 0, err
    study = load_study(run)
    st = states(study)
    assert st["COMPLETE"] == 4 and st["FAIL"] == 1 and st["RUNNING"] == 0, (st, reasons_of(study))
    log = attempts(script)
    (_, _, dead_pid, aid) = log[1]
    assert log[1][1] == "die" and log[2][3] == aid and log[2][1] == "ok" and log[2][2] != dead_pid
    from experiments.cache import read_records

    rec = [r for r in read_records(run) if r["arch_id"] == aid]
    assert len(rec) == 1 and rec[0]["pid"] != dead_pid  # recorded once, from the retry
    twice = log[3][3]
    assert log[4][3] == twice and log[3][1] == log[4][1] == "die"
    failed = next(t for t in study.trials if t.state.name == "FAIL")
    reason = failed.user_attrs["failure_reason"]
    assert failed.user_attrs["arch_id"] == twice and reason.startswith("worker died")
    assert "worker died" in (run / "report.md").read_text()
    assert max(evaluation_counts(run).values()) == 1
    summary = summary_line(out)
    record("fault", "Ray worker process SIGKILLed during an evaluation",
           "the evaluator SIGKILLs its own worker process 0.2 s into an evaluation (once)",
           f"nothing: Ray re-runs the evaluation (evaluator.retries=1) in a new worker; "
           f"\"{summary}\"",
           "that trial COMPLETE; the evaluation is recorded once, from the retry's pid")
    record("fault", "Ray worker dies on every attempt (retries exhausted)",
           "the evaluator SIGKILLs its worker on the first attempt and on the retry",
           f"that trial FAIL with \"{reason}\"; the search goes on and exits 0",
           "the other 4 trials COMPLETE; report.md counts the failure under 'worker died'")


def test_evaluation_stuck_in_native_code_is_cancelled_by_the_driver(tmp_path, monkeypatch,
                                                                     record):
    """The worker's alarm cannot interrupt code that never returns to Python: the driver's
    backstop (timeout_s + grace after submission) force-cancels the task."""
    import experiments.scheduler as scheduler

    # 30 s in production; 8 s still covers a cold worker start on a busy machine
    monkeypatch.setattr(scheduler, "BACKSTOP_GRACE_S", 8.0)
    cfg = write_config(tmp_path / "stuck.yaml", constraints=NO_MEM,
                       evaluator=faulty(tmp_path / "script", ["ok", "ok", "ok", "stuck"],
                                        timeout_s=2, hang_s=60),
                       search={"n_trials": 4})
    run = tmp_path / "run"
    t0 = time.monotonic()
    rc, out, err = search_cli(cfg, run)
    wall = time.monotonic() - t0
    assert rc == 0, err
    assert wall < 40
    study = load_study(run)
    st = states(study)
    assert st["FAIL"] == 1 and st["COMPLETE"] == 3 and st["RUNNING"] == 0, (st, reasons_of(study))
    reason = next(t.user_attrs["failure_reason"] for t in study.trials if t.state.name == "FAIL")
    assert reason.startswith("timeout: no result 10 s after submission"), reason
    record("fault", "evaluation stuck where the worker's alarm cannot reach (native code)",
           "the evaluator blocks SIGALRM and sleeps 60 s; evaluator.timeout_s=2, driver grace "
           "8 s (30 s by default)",
           f"that trial FAIL with \"{reason}\"; the task is force-cancelled (its worker "
           f"killed) and the search goes on: \"{summary_line(out)}\"",
           f"the other 3 trials COMPLETE; search finished in {wall:.0f} s")


# ---- a full or read-only disk ---------------------------------------------------------------

@pytest.mark.parametrize("err", [errno.ENOSPC, errno.EROFS], ids=["disk_full", "read_only"])
def test_disk_full_or_read_only_mid_run_then_resume(tmp_path, monkeypatch, record, err):
    import optuna.storages.journal._file as journal_file

    from common import fsio

    cfg = write_config(tmp_path / "disk.yaml", constraints=NO_MEM,
                       evaluator=faulty(tmp_path / "script", sleep_s=0.05),
                       search={"n_trials": 10})
    run = tmp_path / "run"
    disk = FakeDisk(run, budget=70, err=err)
    monkeypatch.setattr(fsio, "os", disk)
    monkeypatch.setattr(journal_file, "os", disk)
    rc, out, e = search_cli(cfg, run)
    monkeypatch.undo()  # space freed / remounted read-write
    msg = one_line_error(rc, e)
    why = "disk full" if err == errno.ENOSPC else os.strerror(err)
    assert f"cannot write ({why})" in msg and str(run) in msg, msg
    assert disk.failures >= 1
    assert not list(run.rglob("*.tmp")), "a half-written temp file was left behind"
    study = load_study(run)  # still readable
    before = states(study)
    assert before["COMPLETE"] < 10
    rc, out, e2 = cli("pareto", str(run))
    assert rc == 0, e2
    rc, out, e2 = search_cli(cfg, run, "--resume")
    assert rc == 0, e2
    _assert_finished(run, 10)
    what = "output disk fills up (ENOSPC)" if err == errno.ENOSPC else "output dir becomes read-only (EROFS)"
    record("fault", f"{what} mid-run",
           f"every fsync/rename under the run dir fails with {errno.errorcode[err]} after 70 "
           f"successful writes (journal, evaluation log and outputs)",
           f"exit 2, one line: \"{msg.replace(str(tmp_path), '<tmp>')}\"",
           f"study readable ({before['COMPLETE']} COMPLETE kept, `temponas pareto` works); no temp "
           f"file left; `--resume` finished 10/10 with no evaluation repeated")


def test_run_outputs_are_written_atomically(tmp_path, monkeypatch, record):
    """Every file of a run dir (plots and report included) comes from the atomic writer, except
    the two append-only logs (one fsync'd record per write) and the lock; modes follow umask."""
    from common import fsio

    written: set[str] = set()
    real = fsio.atomic_write

    def spy(path, writer, *a, **kw):
        written.add(str(Path(path)))
        return real(path, writer, *a, **kw)

    monkeypatch.setattr(fsio, "atomic_write", spy)
    cfg = write_config(tmp_path / "cfg.yaml", evaluator=faulty(tmp_path / "script"),
                       search={"n_trials": 6})
    run = tmp_path / "run"
    rc, out, err = search_cli(cfg, run)
    assert rc == 0, err
    files = {str(p) for p in run.rglob("*") if p.is_file()}
    locks = (".lock", ".study.journal.smoke.lock")  # the run's and its study's
    appended = {str(run / n) for n in ("study.journal", "evaluations.jsonl", *locks)}
    assert any(f.endswith(".png") for f in files) and str(run / "report.md") in files
    assert files - appended <= written, sorted(files - appended - written)
    umask = fsio._umask()
    modes = {oct(p.stat().st_mode & 0o777) for p in run.rglob("*") if p.is_file() and p.name not in locks}
    assert modes == {oct(0o666 & ~umask)}, modes
    record("safety", "a whole search writes every output atomically",
           "spy on common.fsio.atomic_write during a search with plots and report",
           f"{len(files - appended)} output files, all via temp file + rename; file modes "
           f"{sorted(modes)} (umask {oct(umask)})",
           "study.journal and evaluations.jsonl are append-only logs (one fsync'd record per "
           "write; a torn last record is skipped/repaired on resume)")


# ---- damaged logs left by a killed driver -----------------------------------------------------

@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("finished")
    cfg = write_config(d / "cfg.yaml", constraints=NO_MEM, evaluator=faulty(d / "script"),
                       search={"n_trials": 6})
    rc, out, err = search_cli(cfg, d / "run")
    assert rc == 0, err
    return cfg, d / "run"


def _copy(finished_run, tmp_path):
    cfg, run = finished_run
    dst = tmp_path / "run"
    shutil.copytree(run, dst)
    return cfg, dst


def test_partial_last_journal_line_is_repaired_on_resume(finished_run, tmp_path, record):
    cfg, run = _copy(finished_run, tmp_path)
    journal = run / "study.journal"
    with open(journal, "ab") as f:
        f.write(b'{"op_code":5,"worker_id":"dead-driver","trial_id":3,"user_at')  # cut mid-write
    rc, out, err = search_cli(cfg, run, "--resume", "--n-trials", "9")
    assert rc == 0, err
    _assert_finished(run, 9)
    assert journal.read_bytes().endswith(b"\n")
    study = load_study(run)  # every line parses: the new records were not glued to the fragment
    assert len(study.trials) == 9
    record("fault", "study journal ends in a partial line (driver killed mid-append)",
           "a cut JSON record without newline appended to study.journal, then `--resume "
           "--n-trials 9`",
           f"nothing: the fragment (never a valid record) is dropped before appending; "
           f"\"{summary_line(out)}\" / \"{_line(out, 'repaired')}\"",
           "the 6 finished trials; the study reaches 9 COMPLETE and the journal stays loadable")


def test_stale_journal_lock_of_a_killed_driver_does_not_stall_resume(finished_run, tmp_path,
                                                                     record):
    cfg, run = _copy(finished_run, tmp_path)
    lock = run / "study.journal.lock"
    os.symlink(run / "study.journal", lock)  # what Optuna's symlink lock leaves after SIGKILL
    t0 = time.monotonic()
    rc, out, err = search_cli(cfg, run, "--resume", "--n-trials", "8")
    wall = time.monotonic() - t0
    assert rc == 0, err
    _assert_finished(run, 8)
    assert wall < 25, f"resume waited {wall:.0f} s on a dead driver's journal lock"
    record("concurrency", "Optuna journal lock left by a driver killed inside a write",
           "`study.journal.lock` symlink present (as after SIGKILL during append), then "
           "`--resume --n-trials 8`",
           f"nothing: the run-dir lock proves no other driver is alive, the stale journal lock "
           f"is removed; resume took {wall:.1f} s (Optuna alone waits its 30 s grace period)",
           "all trials; 8 COMPLETE")


# ---- Ray binds to loopback, dashboard off (runtime check of the runner's ray.init) -----------

def test_local_ray_binds_loopback_with_dashboard_off(record):
    import ray

    ctx = ray.get_runtime_context()
    node = ray._private.worker.global_worker.node
    ips = sorted({node.node_ip_address} | {n["NodeManagerAddress"] for n in ray.nodes()})
    assert not node.address_info.get("webui_url")
    assert ctx.get_node_id()
    socks = listening(descendants(os.getpid()))
    assert socks, "found none of Ray's listening sockets"
    exposed = sorted({(ip, port) for ip, port in socks if not ipaddress.ip_address(ip).is_loopback})
    record("safety", "local Ray listens on loopback only, dashboard off",
           "runtime check of the Ray started by the runner's ensure_ray(): node IP, dashboard "
           "URL, and every listening TCP socket of the Ray processes (/proc/net/tcp)",
           f"node IP {', '.join(ips)}, no dashboard; {len(socks)} listening sockets, "
           f"{len(exposed)} not on loopback {exposed}",
           "fixed by this test: Ray listened on :: (all interfaces) before")
    assert ips == ["127.0.0.1"] and not exposed, (ips, exposed)


@pytest.fixture
def driver_only_plugin(tmp_path):
    """A `module:Class` evaluator importable in the driver but not by the Ray workers (a module
    next to the user's script, on the driver's sys.path only, not installed)."""
    import sys

    mod = tmp_path / "driver_only"
    mod.mkdir()
    (mod / "rel_driver_only_eval.py").write_text(
        "from rel_evaluators import Faulty\n\nclass Local(Faulty):\n    name = 'local'\n")
    sys.path.insert(0, str(mod))
    yield "rel_driver_only_eval:Local"
    sys.path.remove(str(mod))
    sys.modules.pop("rel_driver_only_eval", None)


def test_plugin_on_the_driver_path_only_reaches_the_workers(tmp_path, driver_only_plugin, record):
    cfg = write_config(tmp_path / "cfg.yaml", constraints=NO_MEM,
                       evaluator={"name": driver_only_plugin, "options": {}},
                       search={"n_trials": 3})
    rc, out, err = search_cli(cfg, tmp_path / "run")
    assert rc == 0, err
    _assert_finished(tmp_path / "run", 3)
    record("fault", "evaluator plug-in importable on the driver but not on the Ray workers",
           "`module:Class` from a directory on the driver's sys.path only (not on the "
           "workers' PYTHONPATH)",
           f"nothing: a probe task finds the workers cannot import it, so its directory joins "
           f"their PYTHONPATH (runtime_env.ship_plugins); \"{summary_line(out)}\"",
           "3/3 COMPLETE")


def test_plugin_not_shipped_stops_the_search_in_one_line(tmp_path, driver_only_plugin, record):
    cfg = write_config(tmp_path / "cfg.yaml", constraints=NO_MEM,
                       evaluator={"name": driver_only_plugin, "options": {}},
                       search={"n_trials": 3}, runtime_env={"ship_plugins": False})
    t0 = time.monotonic()
    rc, out, err = search_cli(cfg, tmp_path / "run")
    wall = time.monotonic() - t0
    msg = one_line_error(rc, err)
    assert "cannot import module 'rel_driver_only_eval'" in msg and "Ray node" in msg, msg
    assert wall < 60, wall  # the evaluation timeout (smoke: 60 s) plays no part
    assert not (tmp_path / "run").exists()  # a new run that never completed a trial: removed
    record("fault", "evaluator plug-in missing on the Ray workers (not shipped)",
           "`module:Class` on the driver's sys.path only, `runtime_env: {ship_plugins: false}`",
           f"exit 2 after {wall:.0f} s, one line: \"{msg.replace(str(tmp_path), '<tmp>')}\" "
           f"(the first evaluation's failure stops the search instead of failing every trial)",
           "nothing: the new run directory is removed (no trial had completed)")
