"""The search's Ray: who may use it (token authentication), a `--ray-address` that is not a
Ray cluster, a suspended driver, how many evaluations run at once, and what a killed driver
leaves behind. Every driver here is a real `temponas search` process; the foreign clients are
real separate processes calling ``ray.init(address=...)``."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from netcheck import descendants
from rel_helpers import (
    cli,
    evaluation_counts,
    faulty,
    kill_session,
    load_study,
    one_line_error,
    states,
    subprocess_env,
    write_config,
)

pytestmark = [pytest.mark.fault, pytest.mark.timeout(150)]

NO_MEM = {"memory_budget_mb": None}
AUTH_VARS = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")


def _start(argv: list[str], log: Path, env: dict | None = None) -> subprocess.Popen:
    """A process in its own session, output to a file (a full pipe would block it)."""
    f = open(log, "w")  # noqa: SIM115 - lives as long as the process
    proc = subprocess.Popen(argv, env=env or subprocess_env(), stdout=f, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    proc.log = log
    return proc


def _wait_for(pred, timeout_s: float, proc: subprocess.Popen) -> None:
    t0 = time.monotonic()
    while not pred():
        if proc.poll() is not None:
            raise AssertionError(f"exited early ({proc.returncode}): {proc.log.read_text()[-2000:]}")
        assert time.monotonic() - t0 < timeout_s, "timed out waiting for the search"
        time.sleep(0.1)



def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _environ(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    return dict(kv.split("=", 1) for kv in raw.decode(errors="replace").split("\0") if "=" in kv)


# ---- one search with its own local Ray, started with --workers 64 ------------------------------

#: `temponas search` with one more child process of its own (not Ray's): a killed driver's
#: Ray is cleaned up, that child is not
WITH_CHILD = ("import subprocess, sys; subprocess.Popen(['sleep', '300']); "
              "from experiments.cli import main; sys.exit(main(sys.argv[1:]))")


@pytest.fixture(scope="module")
def own_ray_search(tmp_path_factory):
    """A `temponas search --workers 64` process that starts its own local Ray (1 s
    evaluations, long enough to outlive the tests that use it); the last test kills it."""
    tmp = tmp_path_factory.mktemp("own_ray")
    cfg = write_config(tmp / "cfg.yaml", constraints=NO_MEM,
                       evaluator=faulty(tmp / "script", sleep_s=1.0),
                       search={"n_trials": 400})
    proc = _start([sys.executable, "-c", WITH_CHILD, "search", str(cfg), "--out", str(tmp / "run"),
                   "--no-progress", "--workers", "64"], tmp / "driver.log")
    try:
        _wait_for(lambda: len(evaluation_counts(tmp / "run")) >= 1, 120, proc)
        procs = descendants(proc.pid)
        gcs = next(m.group(1) for p in procs
                   for m in [re.search(r"--gcs-address=(\S+)", _cmdline(p))] if m)
        gcs_pid = next(p for p in procs if "gcs_server" in _cmdline(p))
        yield {"proc": proc, "tmp": tmp, "gcs": gcs, "gcs_pid": gcs_pid, "procs": procs}
    finally:
        kill_session(proc)


def test_workers_capped_by_the_cluster_cpus(own_ray_search, record):
    proc, procs = own_ray_search["proc"], own_ray_search["procs"]
    raylet = next(_cmdline(p) for p in procs if "raylet/raylet" in _cmdline(p))
    cpus = float(re.search(r"static_resource_list=\S*?CPU,([\d.]+)", raylet).group(1))
    note = next(ln for ln in proc.log.read_text().splitlines() if ln.startswith("note: --workers"))
    have = len(os.sched_getaffinity(0))
    workers = [p for p in procs if _cmdline(p).startswith("ray::")]
    assert cpus <= have, f"the local Ray was started with {cpus:g} CPUs on a {have}-core machine"
    assert f"at most {int(cpus)} evaluation(s) in flight" in note, note
    assert proc.poll() is None
    record("bad input", "`--workers 64` on a machine with few cores",
           f"`temponas search <tmp>/cfg.yaml --workers 64` (own local Ray, {have} cores)",
           f"one line on stderr: \"{note}\"; the local Ray gets {cpus:g} CPUs, not 64",
           f"the search runs ({len(workers)} Ray worker/agent processes, not 67)")


FOREIGN = r"""
import os, sys
import ray, ray._private.ray_constants as rc
rc.ENABLE_RAY_CLUSTER = False  # keep 127.0.0.1, as the search does
try:
    ray.init(address=sys.argv[1], include_dashboard=False, logging_level="error")
    print("RAN in pid", ray.get(ray.remote(lambda: os.getpid()).remote(), timeout=60))
except Exception as e:
    print("REFUSED", type(e).__name__)
"""


def _foreign(gcs: str, **auth: str) -> tuple[str, str, float]:
    env = {k: v for k, v in subprocess_env().items() if k not in AUTH_VARS}
    env.update(auth)
    env["RAY_gcs_server_port_wait_time_s"] = "3"  # the intruder's patience; the refusal is Ray's
    t0 = time.monotonic()
    p = subprocess.run([sys.executable, "-c", FOREIGN, gcs], env=env, capture_output=True,
                       text=True, timeout=90)
    last = (p.stdout.strip().splitlines() or [""])[-1]
    return last, p.stderr, time.monotonic() - t0


def test_foreign_process_cannot_run_tasks_on_a_running_search(own_ray_search, rel_ray, record):
    gcs, gcs_pid = own_ray_search["gcs"], own_ray_search["gcs_pid"]
    token = _environ(gcs_pid).get("RAY_AUTH_TOKEN", "")
    assert _environ(gcs_pid).get("RAY_AUTH_MODE") == "token" and len(token) == 64
    no_token, err1, s1 = _foreign(gcs)
    other, err2, s2 = _foreign(gcs, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=os.environ["RAY_AUTH_TOKEN"])
    assert os.environ["RAY_AUTH_TOKEN"] != token  # the test session's own Ray has another token
    assert no_token.startswith("REFUSED") and other.startswith("REFUSED"), (no_token, other)
    assert "InvalidAuthToken" in err1 + err2 or "Unauthenticated" in err1 + err2, err1[-500:]
    # the control: the same client with the search's token does run (so the refusals above are
    # the token's doing, not the network's)
    right, _, s3 = _foreign(gcs, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token)
    assert right.startswith("RAN"), right
    # the token is in no file and on no command line
    tmp = own_ray_search["tmp"]
    temp_dirs = [Path(tempfile.gettempdir()) / m.group(1) for p in own_ray_search["procs"]
                 for m in [re.search(r"(temponas-ray-[^/\s]+)", _cmdline(p))] if m]
    assert temp_dirs and oct(temp_dirs[0].stat().st_mode & 0o777) == "0o700"
    files = [f for d in (tmp, temp_dirs[0]) for f in d.rglob("*") if f.is_file()]
    leaked = [str(f) for f in files if token.encode() in f.read_bytes()]
    leaked += [f"cmdline of {p}" for p in descendants(own_ray_search["proc"].pid)
               if token in _cmdline(p)]
    assert not leaked, leaked
    record("safety", "a foreign process connects to a running search's Ray",
           "`ray.init(address=<the search's GCS>)` + a task from a separate process: without a "
           "token, with another Ray's token, and (control) with the search's own token",
           f"refused without a token ({s1:.0f} s, Ray logs \"InvalidAuthToken\") and with another "
           f"Ray's token ({s2:.0f} s); with the search's per-run token the task runs ({s3:.0f} s)",
           f"token authentication on (RAY_AUTH_MODE=token, a new 256-bit token per run, in the "
           f"environment of the search's processes only); it is in none of the {len(files)} files "
           f"of the run and Ray's session folder (0700) and on no command line")


def test_killed_driver_leaves_no_ray_processes_or_temp_dir(own_ray_search, record):
    proc = own_ray_search["proc"]
    procs = descendants(proc.pid)
    temp = {Path(tempfile.gettempdir()) / m.group(1) for p in procs
            for m in [re.search(r"(temponas-ray-[^/\s]+)", _cmdline(p))] if m}
    assert procs and len(temp) == 1
    starts = {p: Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[19] for p in procs}

    def alive() -> list[int]:
        out = []
        for p, t in starts.items():
            try:
                st = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if st[0] != "Z" and st[19] == t:
                out.append(p)
        return out

    (sleeper,) = [p for p in procs if _cmdline(p).startswith("sleep 300")]
    starts.pop(sleeper)
    t0 = time.monotonic()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    while (alive() or any(d.exists() for d in temp)) and time.monotonic() - t0 < 30:
        time.sleep(0.1)
    gone_s = time.monotonic() - t0
    left = [_cmdline(p)[:60] for p in alive()]
    assert not left, left
    assert not any(d.exists() for d in temp), temp
    assert gone_s < 10, gone_s
    assert Path(f"/proc/{sleeper}").exists(), "the reaper killed a child that is not Ray's"
    os.kill(sleeper, signal.SIGKILL)
    record("fault", "driver with its own local Ray SIGKILLed: Ray processes and session folder",
           f"`kill -9` of a running `temponas search` (own local Ray: {len(procs) - 1} processes)",
           f"nothing: all {len(starts)} Ray processes (raylet, GCS, agents, workers) gone "
           f"{gone_s:.1f} s later, its private temp dir removed (Ray alone left the agents "
           f"running ~60 s and the session folder in /tmp/ray); the driver's other child "
           f"process (not Ray's) is left alone",
           "the run folder (resume as after any kill -9)")


# ---- --ray-address that is not a Ray cluster -------------------------------------------------

@pytest.fixture(scope="module")
def http_server(tmp_path_factory):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = _start([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
                  tmp_path_factory.mktemp("http") / "http.log", env=dict(os.environ))
    t0 = time.monotonic()
    while time.monotonic() - t0 < 20:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.1)
    yield f"127.0.0.1:{port}"
    kill_session(proc)


def _closed_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


ADDRESSES = {
    "http_server": ("an HTTP server (`python -m http.server`)", None, "not a Ray cluster's GCS"),
    "closed_port": ("a closed port", _closed_port, "nothing answers"),
    "unknown_host": ("a host name that does not resolve", lambda: "no-such-host.invalid:6379",
                     "unknown host"),
    "garbage": ("garbage", lambda: "garbage", "not an address"),
    "port_out_of_range": ("port 99999", lambda: "127.0.0.1:99999", "not an address"),
    "ray_without_token": ("the test's Ray, without its token", "ray", "requires|refused"),
    "ray_wrong_token": ("the test's Ray, with a wrong token", "ray", "refused this token"),
}


@pytest.mark.parametrize("case", list(ADDRESSES))
def test_ray_address_that_is_not_a_ray_cluster_fails_fast(case, tmp_path, http_server, rel_ray,
                                                           monkeypatch, record):
    what, make, expect = ADDRESSES[case]
    address = http_server if make is None else rel_ray if make == "ray" else make()
    if case == "ray_without_token":
        for k in AUTH_VARS:
            monkeypatch.delenv(k, raising=False)
    elif case == "ray_wrong_token":
        monkeypatch.setenv("RAY_AUTH_TOKEN", "0" * 64)
    cfg = write_config(tmp_path / "cfg.yaml", constraints=NO_MEM, search={"n_trials": 2})
    t0 = time.monotonic()
    rc, out, err = cli("search", str(cfg), "--out", str(tmp_path / "out"), "--no-progress",
                       "--ray-address", address)
    wall = time.monotonic() - t0
    msg = one_line_error(rc, err)
    assert re.search(expect, msg) and "--ray-address" in msg, msg
    assert wall < 15, wall
    assert not (tmp_path / "out").exists()
    record("bad input", f"`--ray-address` to {what}", "`temponas search <tmp>/cfg.yaml "
           f"--ray-address {address if make != 'ray' else '<test Ray GCS>'}`",
           f"exit 2 after {wall:.1f} s: \"{msg}\"", "nothing written")


def test_absurd_workers_refused_before_anything_starts(tmp_path, record):
    cfg = write_config(tmp_path / "cfg.yaml", constraints=NO_MEM, search={"n_trials": 2})
    t0 = time.monotonic()
    rc, out, err = cli("search", str(cfg), "--out", str(tmp_path / "out"), "--no-progress",
                       "--workers", "100000")
    wall = time.monotonic() - t0
    msg = one_line_error(rc, err)
    assert "--workers" in msg and "100000" in msg, msg
    assert not (tmp_path / "out").exists() and wall < 15
    record("bad input", "`--workers 100000`", "`temponas search <tmp>/cfg.yaml --workers 100000`",
           f"exit 2 after {wall:.1f} s: \"{msg}\"",
           "nothing written (no run folder, no FAIL or WAITING trials)")


# ---- a suspended driver ------------------------------------------------------------------------

SUSPEND_S = 13.0
BACKSTOP_S = 10.0
#: the driver, with its backstop (default: evaluator.timeout_s + max(30 s, timeout_s)) set to
#: 10 s once the test has created the file $REL_BACKSTOP_GO -- which it does while the driver
#: is stopped, so the short backstop can only act after the suspension (a new driver's first
#: evaluations wait for new Ray worker processes, which can take longer than 10 s on a loaded
#: machine) -- so that a 13 s suspension outlasts it without this test taking a minute
DRIVER = f"""
import os, sys
import experiments.scheduler as s
GO = os.environ["REL_BACKSTOP_GO"]
s.EvaluationScheduler.backstop_s = property(lambda self: {BACKSTOP_S} if os.path.exists(GO) else 300.0)
from experiments.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_suspended_driver_does_not_time_out_finished_evaluations(tmp_path, rel_ray, record):
    """Attempt 2 hangs where the worker's alarm cannot reach it (``stuck``): it is in flight,
    with attempt 3, when the driver is suspended. Attempt 3 finishes during the suspension and
    is collected; the stuck one is cancelled by the backstop after the driver resumed and,
    the suspension having overlapped it, re-queued (and then evaluated) instead of failed."""
    n = 8
    ev = {**faulty(tmp_path / "script", ["ok", "ok", "stuck"], sleep_s=1.0, hang_s=120),
          "timeout_s": 3.0}
    cfg = write_config(tmp_path / "cfg.yaml", constraints=NO_MEM, evaluator=ev,
                       search={"n_trials": n, "workers": 2})
    run = tmp_path / "run"
    attempts = tmp_path / "script" / "attempts.log"
    go = tmp_path / "backstop.go"
    proc = _start([sys.executable, "-c", DRIVER, "search", str(cfg), "--out", str(run),
                   "--no-progress", "--ray-address", rel_ray], tmp_path / "driver.log",
                  env={**subprocess_env(), "REL_BACKSTOP_GO": str(go)})
    try:
        _wait_for(lambda: len(evaluation_counts(run)) >= 2 and attempts.exists()
                  and len(attempts.read_text().splitlines()) >= 4, 120, proc)
        os.kill(proc.pid, signal.SIGSTOP)
        go.touch()  # the 10 s backstop from now on (the driver sees it once it runs again)
        time.sleep(SUSPEND_S)  # longer than the backstop
        os.kill(proc.pid, signal.SIGCONT)
        proc.wait(timeout=120)
    finally:
        kill_session(proc)
    log = proc.log.read_text()
    assert proc.returncode == 0, log[-3000:]
    study = load_study(run)
    st = states(study)
    reasons = [t.user_attrs.get("failure_reason", "") for t in study.trials if t.state.name == "FAIL"]
    assert st["COMPLETE"] == n and st["WAITING"] == 0 and st["RUNNING"] == 0, (st, reasons)
    assert len(reasons) == 1 and reasons[0].startswith("interrupted: timeout") \
        and "suspended" in reasons[0], reasons  # the stuck one: re-queued, not failed
    assert max(evaluation_counts(run).values()) == 1
    record("fault", "driver suspended (SIGSTOP, Ctrl-Z, laptop lid) while evaluations run",
           f"SIGSTOP to `temponas search` for {SUSPEND_S:g} s, longer than the driver's "
           f"{BACKSTOP_S:g} s backstop (no result that long after submission: cancelled), then "
           f"SIGCONT; in flight: one 1 s evaluation and one stuck in native code",
           f"nothing: the evaluation that finished meanwhile is collected (the suspension does not "
           f"count towards the backstop); the stuck one is cancelled after the backstop and, the "
           f"driver having been suspended meanwhile, re-queued: \"{reasons[0]}\"; exit 0",
           f"{n}/{n} COMPLETE (the re-queued trial evaluated again), no evaluation repeated")
