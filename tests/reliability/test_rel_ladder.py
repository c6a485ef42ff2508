"""A multi-fidelity search (successive halving over a budget ladder of real short training) whose
driver is SIGKILLed mid-ladder: `--resume` re-attaches every candidate to its rung trial,
continues each from the checkpoint its last finished rung left in the run folder (nothing is
trained twice), and finishes the study exactly."""

from __future__ import annotations

import os
import signal
import time

import pytest
from rel_helpers import (
    TEMPONAS,
    cli,
    evaluation_counts,
    kill_session,
    load_study,
    states,
    subprocess_env,
    write_config,
)

pytestmark = [pytest.mark.fault, pytest.mark.timeout(240)]

N = 8
BUDGETS = (1, 2, 4)
TINY_TRAIN = {"scale": {"width_mult": 1.0, "num_frames": 3, "latent_height": 8, "latent_width": 8,
                        "text_tokens": 4},
              "data": {"num_train": 12, "num_val": 4, "patch": 2},
              "pretrain": {"steps": 12, "batch": 2, "lr": 3e-3},
              "batch": 2, "warmup": 2, "val_timesteps": 1, "cache_results": False,
              "spatial": "random"}  # the ladder, not the backbone, is under test: no pretraining


def _checkpoints(run) -> set[str]:
    return {str(p.relative_to(run)) for p in (run / "checkpoints").rglob("*.safetensors")}


def test_driver_killed_mid_ladder_resumes_from_checkpoints(tmp_path, record, rel_ray):
    import subprocess

    import optuna

    from experiments.cache import read_records
    from experiments.study import open_storage

    cfg = write_config(
        tmp_path / "sh.yaml", constraints={"memory_budget_mb": None, "latency_budget_ms": None},
        space={"defaults": {"kinds": ["none", "conv1d", "attn1d"], "heads": [2], "kernel_t": [3]}},
        evaluator={"name": "short_train", "budget": BUDGETS[-1], "seeds": [0], "timeout_s": 120,
                   "options": {**TINY_TRAIN, "cache_dir": str(tmp_path / "cache")}},
        search={"n_trials": N, "workers": 2,
                "pruner": {"name": "successive_halving", "min_budget": BUDGETS[0],
                           "reduction_factor": 2, "latency_buckets": 1}})
    run = tmp_path / "run"
    err = open(tmp_path / "driver.err", "w")  # noqa: SIM115 - lives as long as the process
    proc = subprocess.Popen(TEMPONAS + ["search", str(cfg), "--out", str(run), "--no-progress",
                                        "--ray-address", rel_ray],
                            env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=err,
                            start_new_session=True)
    try:
        t0 = time.monotonic()
        while not _checkpoints(run):  # a candidate finished a lower rung: it is mid-ladder
            assert proc.poll() is None, (tmp_path / "driver.err").read_text()[-2000:]
            assert time.monotonic() - t0 < 150, "no rung finished in time"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        kill_session(proc)
    kept = _checkpoints(run)
    before = len(read_records(run))
    storage = open_storage(None, run)
    rung_running = sum(
        1 for n in optuna.get_all_study_names(storage) if ".rungs" in n
        for t in optuna.load_study(study_name=n, storage=storage).trials if t.state.name == "RUNNING")
    assert kept and rung_running >= 1

    rc, out, err_text = cli("search", str(cfg), "--out", str(run), "--no-progress", "--resume")
    assert rc == 0, err_text
    study = load_study(run, "smoke")
    counted = [t for t in study.trials if "duplicate_of" not in t.user_attrs]
    st = states(study)
    assert sum(t.state.name in ("COMPLETE", "PRUNED") for t in counted) == N
    assert st["RUNNING"] == 0 and st["WAITING"] == 0, st
    for n in optuna.get_all_study_names(storage):
        if ".rungs" in n:
            rs = optuna.load_study(study_name=n, storage=storage)
            assert not [t for t in rs.trials if t.state.name == "RUNNING"], n
    # nothing trained twice; every rung above the first continued from the rung below,
    # including the rungs the resumed driver ran from the checkpoints the killed one left
    assert max(evaluation_counts(run).values()) == 1
    recs = read_records(run)
    prev = dict(zip(BUDGETS[1:], BUDGETS[:-1]))
    for r in recs:
        assert r["extras"].get("start_step") == prev.get(r["budget"]), r
    resumed = [r for r in recs[before:]
               if f"checkpoints/{r['arch_id']}/s0.b{prev.get(r['budget'])}.safetensors" in kept]
    assert resumed, "the resumed driver continued no candidate from a checkpoint left by the kill"
    assert not _checkpoints(run)  # every ladder ended: no checkpoint outlives its candidate
    record("fault", "driver SIGKILLed mid-ladder (successive halving over short training), "
                    "then `--resume`",
           f"`kill -9` of `temponas search` as soon as a candidate finished a lower rung "
           f"({len(kept)} checkpoint(s) in <run>/checkpoints/, {rung_running} rung trial(s) "
           f"RUNNING, {before} evaluations logged)",
           f"resume exit 0: \"{next(ln for ln in out.splitlines() if ' complete, ' in ln)}\"",
           f"{len(resumed)} rung(s) continued from the killed driver's checkpoints "
           f"(start_step = the rung below), no evaluation repeated, {N} trials counted, no rung "
           f"trial left RUNNING, checkpoints removed as each ladder ended")
