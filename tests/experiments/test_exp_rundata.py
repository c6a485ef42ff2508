"""Run folders for analysis: pareto.csv has one row per architecture, trials.csv per-stage and
extras columns, the study names its metrics, and ``experiments.load_run`` returns typed
DataFrames (also for a study written before metric names existed)."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import re
from dataclasses import replace
from pathlib import Path

import optuna
import pandas as pd
import pytest
from exp_helpers import best_by_arch, load_study

from experiments import load_run
from experiments.runner import SearchOptions, run_search
from experiments.trials import STAGE_FIELDS, pareto_front
from search_space.arch import ArchConfig, TemporalKind

ROOT = Path(__file__).resolve().parents[2]
# 5 architectures (mid: none, conv1d or attn1d x 1-2 blocks): a random sampler repeats them
TINY_SPACE = {"defaults": {"kinds": ["none"]},
              "mid": {"kinds": ["none", "conv1d", "attn1d"], "heads": [2], "kernel_t": [3]}}


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def repeat_run(tmp_path_factory, smoke_cfg, local_ray):
    cfg = replace(smoke_cfg, space=TINY_SPACE,
                  constraints=replace(smoke_cfg.constraints, memory_budget_mb=None,
                                      latency_budget_ms=None),
                  search=replace(smoke_cfg.search, sampler="random", sampler_options={},
                                 n_trials=10))
    run_dir = tmp_path_factory.mktemp("repeat") / "run"
    summary = run_search(cfg, SearchOptions(out=str(run_dir), progress=False))
    return run_dir, cfg, summary


def test_pareto_csv_has_one_row_per_architecture(repeat_run):
    run_dir, cfg, summary = repeat_run
    study = load_study(run_dir, cfg.name)
    best = study.best_trials
    rows = _rows(run_dir / "pareto.csv")
    ids = [r["arch_id"] for r in rows]
    assert len(best) > len(rows), "the sampler must have repeated a front architecture"
    assert len(ids) == len(set(ids)) == len({t.user_attrs["arch_id"] for t in best})
    assert {int(r["number"]) for r in rows} == best_by_arch(study)  # the earliest of each
    lat = [float(r["latency_ms"]) for r in rows]
    assert lat == sorted(lat)
    report = (run_dir / "report.md").read_text()
    assert f"## Pareto front ({len(rows)} architectures)" in report
    assert summary.front_size == len(rows)


def test_trials_csv_has_stage_and_extras_columns(repeat_run):
    run_dir, cfg, _ = repeat_run
    study = load_study(run_dir, cfg.name)
    rows = _rows(run_dir / "trials.csv")
    header = list(rows[0])
    stages = [s.stage for s in cfg.search_space.stages]
    stage_cols = [f"{s}.{f}" for s in stages for f in STAGE_FIELDS]
    assert header[header.index("failure_reason") + 1:] == stage_cols + ["extra.flops",
                                                                       "extra.memory_mb"]
    assert list(_rows(run_dir / "pareto.csv")[0]) == header
    by_number = {t.number: t for t in study.trials}
    for r in rows:
        t = by_number[int(r["number"])]
        arch = ArchConfig.from_json(t.user_attrs["candidate"]["arch"])
        for sid, c in arch.stages:
            assert r[f"{sid}.kind"] == c.kind.value
            assert [int(r[f"{sid}.{f}"]) for f in STAGE_FIELDS[1:]] == [
                c.count, c.heads, c.kernel_t, c.kernel_s]
        if r["duplicate_of"]:  # a repeat: told the first trial's values, nothing evaluated
            first = by_number[int(r["duplicate_of"])]
            assert first.user_attrs["arch_id"] == r["arch_id"] and t.values == first.values
            assert r["extra.flops"] == "" and r["eval_wall_time_s"] == ""
            continue
        extras = t.user_attrs["result"]["extras"]
        assert float(r["extra.flops"]) == pytest.approx(extras["flops"], rel=1e-5)
        assert float(r["extra.memory_mb"]) == pytest.approx(extras["memory_mb"], rel=1e-5)
    assert {r["mid.kind"] for r in rows} == {"none", "conv1d", "attn1d"}
    # a space smaller than n_trials: one counted trial per architecture, the rest repeats
    assert sum(1 for r in rows if not r["duplicate_of"]) == cfg.search_space.size() < len(rows)


def test_study_names_its_metrics(repeat_run):
    run_dir, cfg, _ = repeat_run
    study = load_study(run_dir, cfg.name)
    assert study.metric_names == ["quality", "latency_ms"]
    df = study.trials_dataframe()
    assert {"values_quality", "values_latency_ms"} <= set(df.columns)


def test_load_run_gives_typed_frames(repeat_run):
    run_dir, cfg, _ = repeat_run
    run = load_run(run_dir)
    study = load_study(run_dir, cfg.name)
    t, f = run.trials, run.front
    assert len(t) == len(study.trials) and list(t.columns) == list(f.columns)
    assert list(f["number"]) == [int(r["number"]) for r in _rows(run_dir / "pareto.csv")]
    assert run.stages == [s.stage for s in cfg.search_space.stages]
    assert run.meta.study_name == cfg.name and run.meta.objectives == ("quality", "latency_ms")
    assert run.config.identity() == cfg.identity()
    dt = t.dtypes
    assert dt["number"] == "int64" and dt["quality"] == "float64" and dt["latency_ms"] == "float64"
    assert dt["params"] == "Int64" and dt["mid.count"] == "Int64" and dt["mid.heads"] == "Int64"
    assert dt["feasible"] == "boolean" and dt["arch_id"] == "string"
    assert isinstance(dt["state"], pd.CategoricalDtype) and "COMPLETE" in dt["state"].categories
    assert isinstance(dt["mid.kind"], pd.CategoricalDtype)
    assert list(dt["mid.kind"].categories) == [k.value for k in TemporalKind]
    assert dt["extra.flops"] == "float64"
    # the same numbers as the CSV
    csv_rows = _rows(run_dir / "trials.csv")
    for (_, row), r in zip(t.iterrows(), csv_rows):
        assert row["number"] == int(r["number"]) and row["state"] == r["state"]
        assert row["latency_ms"] == pytest.approx(float(r["latency_ms"]), rel=1e-5)
        assert row["mid.kind"] == r["mid.kind"]
    assert f["feasible"].all()


def test_readme_pandas_analysis_runs(repeat_run):
    """The python block of README.md's run-folder section, on a real run."""
    run_dir, _, _ = repeat_run
    readme = (ROOT / "README.md").read_text()
    blocks = [b for b in re.findall(r"```python\n(.*?)```", readme, re.S) if "load_run" in b]
    assert len(blocks) == 1
    code = blocks[0]
    assert len([ln for ln in code.splitlines() if ln.strip()]) <= 6
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code.replace('"runs/default"', repr(str(run_dir))), "README.md", "exec"), {})
    text = out.getvalue()
    assert "mid" in text and "attn1d" in text and "latency_ms" in text


def test_a_study_without_metric_names_loads_and_resumes(tmp_path, smoke_cfg, local_ray,
                                                        monkeypatch):
    """A run written before metric names were set (as by earlier temponas): load_run reads it
    with every column; --resume continues it and names its metrics."""
    cfg = replace(smoke_cfg, search=replace(smoke_cfg.search, n_trials=4))
    run_dir = tmp_path / "run"
    with monkeypatch.context() as m:
        m.setattr(optuna.study.Study, "set_metric_names", lambda self, names: None)
        run_search(cfg, SearchOptions(out=str(run_dir), progress=False, write_plots=False))
    study = load_study(run_dir, cfg.name)
    assert study.metric_names is None
    assert json.loads((run_dir / "run.json").read_text())["format_version"] == 1
    run = load_run(run_dir)
    assert len(run.trials) == 4 and "up1.kind" in run.trials.columns
    assert run.trials["state"].isin(["COMPLETE", "PRUNED"]).all()
    run_search(cfg, SearchOptions(n_trials=6, out=str(run_dir), progress=False,
                                  write_plots=False, resume=True))
    study = load_study(run_dir, cfg.name)
    assert study.metric_names == ["quality", "latency_ms"] and len(study.trials) == 6
    assert len(load_run(run_dir).trials) == 6


def test_pareto_front_keeps_the_earliest_trial_of_each_architecture():
    """Pure logic on a real in-memory study: equal values of one arch are all in
    front_trials-style best_trials, and pareto_front keeps one, the earliest."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(directions=["maximize", "minimize"])
    study.set_user_attr("objectives", ["quality", "latency_ms"])
    points = [("a", 1.0, 1.0), ("b", 2.0, 2.0), ("a", 1.0, 1.0), ("c", 1.5, 3.0),
              ("b", 2.0, 2.0), ("d", 0.5, 0.5)]
    for aid, q, lat in points:
        study.add_trial(optuna.trial.create_trial(values=[q, lat], user_attrs={"arch_id": aid}))
    front = pareto_front(study)
    assert [(t.user_attrs["arch_id"], t.number) for t in front] == [("d", 5), ("a", 0), ("b", 1)]
    assert len(study.best_trials) == 5


def test_package_exports_resolve():
    import importlib

    import experiments

    assert sorted(experiments.__all__) == sorted(experiments._EXPORTS)
    for name in experiments.__all__:
        obj = getattr(experiments, name)
        mod = importlib.import_module(f"experiments.{experiments._EXPORTS[name]}")
        assert obj is getattr(mod, name)
    with pytest.raises(AttributeError):
        experiments.no_such_name  # noqa: B018


def test_report_names_the_proxys_heldout_tau(tmp_path, monkeypatch, repeat_run):
    """The report's proxy line reads the audit's committed result (``heldout``: tau on
    architectures the proxy was not chosen on); without one it says so."""
    import experiments.report as rep

    audit = tmp_path / "proxy_fidelity.json"
    audit.write_text(json.dumps({"n_archs": 24, "heldout_sample_seed": 1,
                                 "heldout": {"naswot": 0.25, "params": 0.37},
                                 "heldout_kendall_ci": {"naswot": [-0.16, 0.58]}}))
    h = rep.proxy_heldout("naswot", audit)
    assert h["kendall"] == 0.25 and h["ci"] == [-0.16, 0.58] and h["n_archs"] == 24
    assert rep.proxy_heldout("supernet", audit) is None
    assert rep.proxy_heldout("naswot", tmp_path / "missing.json") is None
    run_dir, cfg, _ = repeat_run  # evaluator: params
    monkeypatch.setattr(rep, "PROXY_FIDELITY_JSON", audit)
    line = rep._proxy_line(cfg)
    assert "`params` ranks candidates like short training with Kendall τ +0.37" in line
    assert "24 held-out" in line
    monkeypatch.setattr(rep, "PROXY_FIDELITY_JSON", tmp_path / "missing.json")
    assert "has no held-out Kendall τ" in rep._proxy_line(cfg)
    assert "- quality proxy fidelity: " in (run_dir / "report.md").read_text()
