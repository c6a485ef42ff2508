"""The study storage: one search per study when two run folders share it (a file storage and a
database server), and storage credentials that are never printed or written."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time

import pytest
from rel_helpers import (
    cli,
    evaluation_counts,
    faulty,
    one_line_error,
    search_cli,
    states,
    write_config,
)

pytestmark = [pytest.mark.fault, pytest.mark.timeout(120)]

NO_MEM = {"memory_budget_mb": None}



def _short(text: str, tmp) -> str:
    return text.replace(str(tmp), "<tmp>")


# ---- defect 9: one search per study when run folders share a storage ----------------------------

def test_second_run_folder_on_a_shared_storage_is_refused(tmp_path, rel_ray, record):
    """Run folder a (storage sqlite:///shared.db) copied to b, then both resumed at once: b is
    refused. The first resume runs in a thread of this process (its own driver, storage handle
    and flock; a process of its own only adds start-up time), the second through the CLI."""
    import threading

    from experiments.config import load_config
    from experiments.runner import SearchOptions, run_search

    db = tmp_path / "shared.db"
    cfg = write_config(tmp_path / "cfg.yaml", constraints=NO_MEM,
                       evaluator=faulty(tmp_path / "script", sleep_s=0.3),
                       search={"n_trials": 3, "workers": 1, "storage": f"sqlite:///{db}"})
    a, b = tmp_path / "a", tmp_path / "b"
    rc, out, err = search_cli(cfg, a)
    assert rc == 0, err
    shutil.copytree(a, b)  # e.g. a run folder copied to another disk, storage URL unchanged
    first: dict = {}

    def resume_a() -> None:
        try:
            first["summary"] = run_search(load_config(cfg), SearchOptions(
                n_trials=8, out=str(a), resume=True, progress=False, write_plots=False))
        except BaseException as e:  # noqa: BLE001 - reported by the assertion below
            first["error"] = e

    n0 = len(evaluation_counts(a))
    thread = threading.Thread(target=resume_a, daemon=True)
    thread.start()
    t0 = time.monotonic()
    while len(evaluation_counts(a)) <= n0:
        assert thread.is_alive(), first
        assert time.monotonic() - t0 < 60, "the first search made no progress"
        time.sleep(0.05)
    rc, out, err = search_cli(cfg, b, "--resume", "--n-trials", "8")
    running = thread.is_alive()
    thread.join(timeout=90)
    assert running and "error" not in first and first["summary"].complete == 5, first
    msg = one_line_error(rc, err)
    assert "is in use by another temponas search" in msg and str(a) in msg, msg
    assert f"pid {os.getpid()}" in msg
    import optuna

    study = optuna.load_study(study_name="smoke", storage=f"sqlite:///{db}")
    st = states(study)
    assert st["COMPLETE"] == 8 and len(study.trials) == 8, st  # no FAIL: nothing "recovered"
    record("concurrency", "two run folders on one `search.storage` (SQLite file) resumed at once",
           "run folder a (storage sqlite:///shared.db) copied to b; `--resume --n-trials 8` of a, "
           "and while it runs the same for b",
           f"exit 2: \"{_short(msg, tmp_path)}\"",
           "a finishes alone: 8 trials for a target of 8, none FAIL (without the lock b failed "
           "a's running trial as stale and a died with Optuna's UpdateFinishedTrialError)")


def test_study_lock_on_a_database_server_is_a_record_in_the_study(tmp_path, record):
    """For `postgresql://` and other servers the lock is a user attr of the study; exercised on
    a real Optuna RDBStorage (SQLite): held -> refused, holder dead -> taken over, released."""
    import optuna

    from experiments.storage_lock import ATTR, AttrStudyLock, StorageLockedError

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url = f"sqlite:///{tmp_path / 'server.db'}"
    study = optuna.create_study(study_name="s", storage=url, directions=["maximize", "minimize"])
    first = AttrStudyLock(study, tmp_path / "a", url).acquire()
    other = optuna.load_study(study_name="s", storage=url)  # another driver's handle
    with pytest.raises(StorageLockedError) as e:
        AttrStudyLock(other, tmp_path / "b", url).acquire()
    msg = str(e.value)
    assert f"pid {os.getpid()}" in msg and str(tmp_path / "a") in msg, msg
    first.release()
    assert other.user_attrs[ATTR] is None
    second = AttrStudyLock(other, tmp_path / "b", url).acquire()
    second.release()
    dead = subprocess.Popen(["true"])
    dead.wait()
    rec = {**json.loads(json.dumps(first.study.user_attrs.get(ATTR) or {})), "pid": dead.pid,
           "host": os.uname().nodename, "token": "dead", "heartbeat": time.time()}
    study.set_user_attr(ATTR, rec)  # what a SIGKILLed driver leaves behind
    third = AttrStudyLock(other, tmp_path / "c", url).acquire()
    assert other.user_attrs[ATTR]["run_dir"] == str(tmp_path / "c")
    third.release()
    record("concurrency", "study lock on a database server (`postgresql://...`)",
           "two drivers lock one study through its user attrs (real Optuna RDBStorage); then "
           "a lock record naming a dead pid on this host",
           f"the second is refused: \"{_short(msg, tmp_path)}\"",
           "after release the next driver takes it; a dead holder's record is taken over at "
           "once (another host's after 120 s without heartbeat)")


# ---- defect 14: storage credentials are never printed or written --------------------------------

SECRET = "s3cr3t-pw"


def test_storage_password_is_masked_everywhere(tmp_path, monkeypatch, record):
    """A `postgresql://user:password@host/db` storage (no server here; port 1 refuses): the
    error line, config.yaml, run.json and report.md hold the URL with `***`; the files holding
    it are 0600; a masked URL is opened again with TEMPONAS_STORAGE_PASSWORD."""
    import optuna

    from experiments.config import dump_config, load_config
    from experiments.report import write_report
    from experiments.rundir import RunMeta, private_perm

    url = f"postgresql://temponas:{SECRET}@127.0.0.1:1/studies"
    cfg_path = write_config(tmp_path / "pg.yaml", search={"storage": url})
    rc, out, err = search_cli(cfg_path, tmp_path / "run")
    msg = one_line_error(rc, err)
    assert SECRET not in out + err and "temponas:***@127.0.0.1:1/studies" in msg, msg
    import importlib.util

    if importlib.util.find_spec("psycopg") is not None:  # the dev extra: a real connection
        assert "connection failed" in msg, msg
    assert not (tmp_path / "run").exists()
    # what a run with this storage writes (the files of a real run, its study on a journal)
    cfg = load_config(cfg_path)
    run = tmp_path / "written"
    run.mkdir()
    (run / "config.yaml").write_text(dump_config(cfg))
    os.chmod(run / "config.yaml", private_perm(url))
    RunMeta(study_name="smoke", storage=url).write(run)
    study = optuna.create_study(study_name="smoke", directions=["maximize", "minimize"])
    write_report(run, study=study, cfg=cfg)
    for f in ("config.yaml", "run.json", "report.md"):
        text = (run / f).read_text()
        assert SECRET not in text and "temponas:***@127.0.0.1:1/studies" in text, f
        assert (run / f).stat().st_mode & 0o777 == 0o600, f
    assert "TEMPONAS_STORAGE_PASSWORD" in (run / "report.md").read_text()
    monkeypatch.delenv("TEMPONAS_STORAGE_PASSWORD", raising=False)
    rc, out, err = cli("pareto", str(run))
    no_pw = one_line_error(rc, err)
    assert "TEMPONAS_STORAGE_PASSWORD" in no_pw and "temponas:${PGPASSWORD}@" in no_pw, no_pw
    monkeypatch.setenv("TEMPONAS_STORAGE_PASSWORD", SECRET)
    rc, out, err = cli("pareto", str(run))
    reopened = one_line_error(rc, err)
    assert SECRET not in out + err and "cannot open the study storage" in reopened, reopened
    # the password named by an environment variable in the URL: expanded only to connect
    monkeypatch.setenv("TEMPONAS_TEST_PW", SECRET)
    ref = write_config(tmp_path / "ref.yaml",
                       search={"storage": url.replace(SECRET, "${TEMPONAS_TEST_PW}")})
    rc, out, err = search_cli(ref, tmp_path / "run")
    by_ref = one_line_error(rc, err)
    assert SECRET not in out + err and "temponas:${TEMPONAS_TEST_PW}@" in by_ref, by_ref
    assert "cannot open the study storage" in by_ref, by_ref  # expanded, then refused
    assert dump_config(load_config(ref)).count("${TEMPONAS_TEST_PW}") == 1
    record("safety", "storage URL with a password (`postgresql://user:password@host/db`)",
           "a config whose search.storage holds a password; the database is unreachable",
           f"exit 2, one line: \"{msg}\"; reopening the run without the password: "
           f"\"{_short(no_pw, tmp_path)}\"",
           "config.yaml, run.json and report.md hold `user:***@`, mode 0600; the password comes "
           "back from TEMPONAS_STORAGE_PASSWORD (or a `${NAME}` in the URL) and is never printed")


def test_run_files_naming_secrets_are_owner_only(tmp_path, record):
    """config.yaml of a run whose Ray workers get environment variables (tokens, as often as
    not) is 0600; a run without them keeps the usual mode."""
    from common.fsio import _umask
    from experiments.config import load_config
    from experiments.rundir import RunLock, open_search_study

    modes = {}
    for case, over in (("env_vars", {"runtime_env": {"env_vars": {"HF_TOKEN": "hf_abc"}}}),
                       ("plain", {})):
        cfg = load_config(write_config(tmp_path / f"{case}.yaml", **over))
        run = tmp_path / case
        with RunLock(run):
            open_search_study(run, cfg, directions=["maximize", "minimize"], sampler=None,
                              config_key="k", resume=False)
        modes[case] = (run / "config.yaml").stat().st_mode & 0o777
    assert modes == {"env_vars": 0o600, "plain": 0o666 & ~_umask()}, modes
    record("safety", "run files that may hold secrets are owner-only",
           "a run whose config has runtime_env.env_vars (e.g. HF_TOKEN), and one without",
           f"config.yaml mode {oct(modes['env_vars'])} vs {oct(modes['plain'])}",
           "a storage URL with credentials makes config.yaml, run.json and report.md 0600 too "
           "(password masked in all three)")
