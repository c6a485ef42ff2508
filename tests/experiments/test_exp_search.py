"""End-to-end searches with real Optuna journal storage and a real local Ray (2 CPUs)."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from dataclasses import replace

import pytest
from exp_helpers import (
    best_by_arch,
    check_duplicates,
    counted_states,
    evaluation_counts,
    load_study,
    states,
)

from experiments.rundir import RunDirError, RunLock
from experiments.runner import SearchOptions, run_search
from experiments.trials import trial_attrs

pytestmark = pytest.mark.usefixtures("local_ray")


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory, smoke_cfg):
    run_dir = tmp_path_factory.mktemp("smoke") / "run"
    s = run_search(smoke_cfg, SearchOptions(out=str(run_dir), progress=False))
    return run_dir, s


def test_smoke_search_end_to_end(smoke_run, smoke_cfg):
    run_dir, s = smoke_run
    study = load_study(run_dir, smoke_cfg.name)
    st = counted_states(study)
    assert st["COMPLETE"] == smoke_cfg.search.n_trials  # over-memory ones are COMPLETE too
    assert st["FAIL"] == 0 and states(study)["RUNNING"] == 0
    # every architecture counted once; a sampler's repeats are told its first outcome
    counted = [t for t in study.trials if "duplicate_of" not in t.user_attrs]
    ids = [t.user_attrs["arch_id"] for t in counted]
    assert len(ids) == len(set(ids))
    assert check_duplicates(study) == s.duplicates == len(study.trials) - len(counted)
    for f in ("config.yaml", "run.json", "study.journal", "evaluations.jsonl", "trials.csv",
              "pareto.csv", "report.md", "plots/pareto_front.png", "plots/hypervolume.png",
              "plots/stage_latency.png"):
        assert (run_dir / f).exists(), f
    rows = _rows(run_dir / "trials.csv")
    assert [int(r["number"]) for r in rows] == [t.number for t in study.trials]
    for r in rows:
        assert (run_dir / "archs" / f"{r['arch_id']}.json").exists()
    report = (run_dir / "report.md").read_text()
    assert "## Pareto front" in report and "temponas export" in report
    # the iphone16pm prior's own validation numbers, read from its metadata
    from latency_models import load_latency_model

    v = load_latency_model("iphone16pm").metadata["validation"]
    assert f"median |error| {v['lofo_median_abs_pct']:.1f}%" in report and "borrowed" in report
    assert not list(run_dir.rglob("*.tmp"))
    # every evaluation ran once, on a Ray worker
    counts = evaluation_counts(run_dir)
    assert counts and max(counts.values()) == 1
    assert s.evaluations_run == len(counts)


def test_pareto_csv_equals_best_trials(smoke_run, smoke_cfg):
    run_dir, _ = smoke_run
    study = load_study(run_dir, smoke_cfg.name)
    assert study.best_trials
    rows = _rows(run_dir / "pareto.csv")
    assert sorted(int(r["number"]) for r in rows) == sorted(best_by_arch(study))
    for r in rows:
        assert r["feasible"] == "true"
        assert float(r["latency_ms"]) <= smoke_cfg.constraints.latency_budget_ms
        assert float(r["memory_mb"]) <= smoke_cfg.constraints.memory_budget_mb


def test_memory_infeasible_trials_are_never_evaluated(smoke_run, smoke_cfg):
    """Over the memory budget: COMPLETE (so NSGA-II learns the region) with the worst quality
    and a violated memory constraint, never evaluated, never on the front."""
    import math

    run_dir, _ = smoke_run
    study = load_study(run_dir, smoke_cfg.name)
    budget = smoke_cfg.constraints.memory_budget_mb
    over = [t for t in study.trials if t.user_attrs.get("not_evaluated")]
    assert over, "the smoke space must contain over-budget candidates"
    evaluated = {a for a, *_ in evaluation_counts(run_dir)}
    for t in over:
        assert t.state.name == "COMPLETE"
        assert t.values[0] == -math.inf and t.values[1] == trial_attrs(t)["latency_ms"]
        assert trial_attrs(t)["memory_mb"] > budget
        assert t.user_attrs["failure_reason"].startswith("memory:")
        assert t.constraints["memory_mb"] > 0
        assert t.user_attrs["arch_id"] not in evaluated
    assert not {t.number for t in over} & {t.number for t in study.best_trials}
    for t in study.trials:
        if t.user_attrs["arch_id"] in evaluated:
            assert trial_attrs(t)["memory_mb"] <= budget
    rows = {int(r["number"]): r for r in _rows(run_dir / "trials.csv")}
    for t in over:
        r = rows[t.number]
        assert r["quality"] == "" and r["not_evaluated"] == "true" and r["feasible"] == "false"
    assert "| memory |" in (run_dir / "report.md").read_text()


def test_resume_after_interrupt_and_crash_completes_without_repeats(tmp_path, smoke_cfg):
    """Ctrl-C after 5 trials, then a driver 'crash' that leaves a RUNNING trial whose
    evaluation already finished; --resume ends with exactly n_trials COMPLETE, nothing RUNNING,
    and no evaluation run twice."""
    cfg = replace(smoke_cfg, constraints=replace(smoke_cfg.constraints, memory_budget_mb=None))
    n = 14
    run_dir = tmp_path / "run"

    def stop(done):
        if done == 5:
            raise KeyboardInterrupt

    s1 = run_search(cfg, SearchOptions(n_trials=n, out=str(run_dir), progress=False,
                                       write_plots=False, on_trial=stop))
    assert s1.interrupted
    study = load_study(run_dir, cfg.name)
    assert counted_states(study)["COMPLETE"] == 5
    # simulate a driver killed between evaluation and tell: a RUNNING trial of an arch whose
    # evaluation is in the log but was never told to Optuna
    from evaluators import create_evaluator
    from experiments.cache import CachedEval, EvalCache, EvalKey

    stale = study.ask()  # a re-queued trial of the Ctrl-C, or a new one
    orphan = cfg.search_space.suggest(stale)
    ev = create_evaluator(cfg.evaluator.name, cfg.backbone_spec, cfg.evaluator.options)
    r = ev.evaluate(orphan, seed=0, budget=0)
    EvalCache(run_dir).put(CachedEval(EvalKey(orphan.arch_id, ev.config_key, 0, 0), r.value,
                                      dict(r.extras), r.wall_time_s))
    assert states(study)["RUNNING"] == 1

    with pytest.raises(RunDirError, match="already holds study"):
        run_search(cfg, SearchOptions(n_trials=n, out=str(run_dir), progress=False))
    s2 = run_search(cfg, SearchOptions(n_trials=n, out=str(run_dir), progress=False,
                                       write_plots=False, resume=True))
    assert stale.number in s2.recovered
    study = load_study(run_dir, cfg.name)
    st = states(study)
    assert counted_states(study)["COMPLETE"] == n and st["RUNNING"] == 0 and st["WAITING"] == 0
    assert all(t.user_attrs["failure_reason"].startswith("interrupted")
               for t in study.trials if t.state.name == "FAIL")
    check_duplicates(study)
    assert s2.cache_hits >= 1
    assert max(evaluation_counts(run_dir).values()) == 1
    # a finished study resumed again runs nothing
    s3 = run_search(cfg, SearchOptions(n_trials=n, out=str(run_dir), progress=False,
                                       write_plots=False, resume=True))
    assert s3.complete == 0 and s3.evaluations_run == 0
    rows = {int(r["number"]) for r in _rows(run_dir / "pareto.csv")}
    assert rows == best_by_arch(study)


def test_resume_refuses_a_different_config(tmp_path, smoke_cfg):
    run_dir = tmp_path / "run"
    cfg = replace(smoke_cfg, search=replace(smoke_cfg.search, n_trials=2))
    run_search(cfg, SearchOptions(out=str(run_dir), progress=False, write_plots=False))
    other = replace(cfg, evaluator=replace(cfg.evaluator, name="flops"))
    from search_space.errors import ConfigError

    with pytest.raises(ConfigError, match=r"evaluator.name: differs from the run being resumed"):
        run_search(other, SearchOptions(out=str(run_dir), resume=True, progress=False))


def test_second_search_on_a_locked_run_dir_is_refused(tmp_path, smoke_cfg):
    run_dir = tmp_path / "run"
    code = ("import sys, time; from experiments.rundir import RunLock; "
            f"RunLock({str(run_dir)!r}).acquire(); print('locked', flush=True); time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunDirError, match=rf"another temponas search is running .*pid {holder.pid}"):
            run_search(smoke_cfg, SearchOptions(out=str(run_dir), progress=False))
    finally:
        holder.kill()
        holder.wait()
    # the holder died without cleaning up: the lock is not stuck
    with RunLock(run_dir):
        assert json.loads((run_dir / ".lock").read_text())["pid"] > 0


def _front_member(run_dir):
    return _rows(run_dir / "pareto.csv")[0]["arch_id"]


def test_export_json_and_torch_of_a_front_member(smoke_run, smoke_cfg, tmp_path):
    import torch
    from safetensors.torch import load_file

    from experiments.export import export_arch
    from search_space.arch import ArchConfig
    from search_space.modules import build_model, network_example_inputs

    run_dir, _ = smoke_run
    aid = _front_member(run_dir)
    export_arch(run_dir, aid, "json", tmp_path / "j")
    arch = ArchConfig.load(str(tmp_path / "j" / f"{aid}.json"))
    assert arch.arch_id == aid
    metrics = json.loads((tmp_path / "j" / f"{aid}.metrics.json").read_text())
    assert metrics["latency_ms"] <= smoke_cfg.constraints.latency_budget_ms
    export_arch(run_dir, aid, "torch", tmp_path / "t")
    assert (tmp_path / "t" / "LOADING.md").exists()
    model = build_model(smoke_cfg.backbone_spec, arch.task, arch)
    model.load_state_dict(load_file(str(tmp_path / "t" / "model.safetensors")))
    x = network_example_inputs(arch.task)
    with torch.no_grad():
        assert model(*x).shape == x[0].shape
    assert not list(tmp_path.rglob("*.tmp"))


@pytest.mark.coreml
def test_export_coreml_writes_an_mlpackage(smoke_run, tmp_path):
    from experiments.cli import main

    run_dir, _ = smoke_run
    aid = _front_member(run_dir)
    rc = main(["export", str(run_dir), "--arch-id", aid, "--format", "coreml",
               "--out", str(tmp_path)])
    assert rc == 0
    pkg = tmp_path / f"{aid}.mlpackage"
    assert (pkg / "Manifest.json").exists()
    assert any(p.name.endswith(".mlmodel") for p in pkg.rglob("*"))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_cli_pareto_plot_and_errors(smoke_run, tmp_path, capsys):
    from experiments.cli import main

    run_dir, _ = smoke_run
    assert main(["pareto", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert "on the feasible front" in out
    assert main(["export", str(run_dir), "--arch-id", "000000000000", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --arch-id: '000000000000' is not an architecture") and err.count("\n") == 1
    assert main(["pareto", str(tmp_path / "nope")]) == 2
    assert "no such run directory" in capsys.readouterr().err
    assert main(["search", str(tmp_path / "missing.yaml")]) == 2
    assert "no such config file" in capsys.readouterr().err
    assert main(["search", "experiments/configs/smoke.yaml", "--workers", "0"]) == 2


def test_exhaustive_sampler_visits_every_architecture_once(tmp_path, smoke_cfg):
    space = {"defaults": {"kinds": ["none"]}, "mid": {"kinds": ["none", "conv1d", "attn1d"],
                                                       "heads": [2], "kernel_t": [3]}}
    cfg = replace(smoke_cfg, space=space, constraints=replace(smoke_cfg.constraints,
                                                              memory_budget_mb=None),
                  search=replace(smoke_cfg.search, sampler="exhaustive", sampler_options={},
                                 n_trials=50))
    size = cfg.search_space.size()
    s = run_search(cfg, SearchOptions(out=str(tmp_path / "run"), progress=False, write_plots=False))
    study = load_study(tmp_path / "run", cfg.name)
    ids = [t.user_attrs["arch_id"] for t in study.trials]
    assert s.n_trials == size == len(ids) == len(set(ids))
    assert set(ids) == {a.arch_id for a in cfg.search_space.enumerate()}


def test_any_optuna_storage_url_sqlite(tmp_path, smoke_cfg):
    from experiments.rundir import open_run
    from experiments.trials import front_trials

    url = f"sqlite:///{tmp_path / 'study.db'}"
    cfg = replace(smoke_cfg, search=replace(smoke_cfg.search, n_trials=4, storage=url))
    run_dir = tmp_path / "run"
    run_search(cfg, SearchOptions(out=str(run_dir), progress=False, write_plots=False))
    assert (tmp_path / "study.db").exists() and not (run_dir / "study.journal").exists()
    run = open_run(run_dir)  # pareto/plot/export find the study through run.json
    st = counted_states(run.study)
    assert st["COMPLETE"] == 4
    assert {t.number for t in front_trials(run.study)} == {t.number for t in run.study.best_trials}
