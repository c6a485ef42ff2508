"""Multi-fidelity search: the budget ladder, the rung studies and their pruners (Optuna's
SuccessiveHalvingPruner / HyperbandPruner on single-objective companion studies), and a real
short-training search climbing it through Ray with checkpoints in the run folder."""

from __future__ import annotations

import csv
from dataclasses import replace

import optuna
import pytest
from exp_helpers import counted_states, evaluation_counts, load_study

from experiments.cache import read_records
from experiments.config import parse_config
from experiments.ladder import Ladder, latency_edges, rung_budgets
from experiments.runner import SearchOptions, run_search
from search_space.errors import ConfigError

#: short training at test size (tiny backbone, 3 frames of 8x8, 12 pretraining steps)
TINY_TRAIN = {"scale": {"width_mult": 1.0, "num_frames": 3, "latent_height": 8, "latent_width": 8,
                        "text_tokens": 4},
              "data": {"num_train": 12, "num_val": 4, "patch": 2},
              "pretrain": {"steps": 12, "batch": 2, "lr": 3e-3},
              "batch": 2, "warmup": 2, "val_timesteps": 1, "cache_results": False,
              "spatial": "random"}  # the ladder, not the backbone, is under test: no pretraining


def test_rung_budgets():
    assert rung_budgets(4, 3, 30) == [4, 12, 30]
    assert rung_budgets(2, 4, 30) == [2, 8, 30]
    assert rung_budgets(1, 2, 4) == [1, 2, 4]
    assert rung_budgets(10, 3, 30) == [10, 30]


def test_latency_buckets_split_the_feasible_population():
    edges = latency_edges(list(range(100)), 4)
    assert edges == pytest.approx([24.75, 49.5, 74.25])
    lad = Ladder("successive_halving", 1, 2, 4, direction="maximize", latency_budget_ms=90.0)
    lad.edges = edges
    assert [lad.bucket(v) for v in (0, 30, 60, 80, 95)] == [0, 1, 2, 3, 4]  # 4: over budget
    assert latency_edges([1.0, 2.0], 1) == []


@pytest.mark.parametrize("data, msg", [
    ({"search": {"pruner": {"name": "asha"}}}, "search.pruner.name: 'asha' is not one of"),
    ({"search": {"pruner": {"name": "hyperband"}}}, "search.pruner: hyperband needs evaluator.budget"),
    ({"evaluator": {"budget": 4}, "search": {"pruner": {"name": "successive_halving",
                                                         "min_budget": 4}}},
     "search.pruner.min_budget: must be below evaluator.budget (4)"),
    ({"search": {"pruner": {"reduction_factor": 1}}}, "search.pruner.reduction_factor: must be >= 2"),
    ({"search": {"pruner": {"latency_buckets": 0}}}, "search.pruner.latency_buckets: must be >= 1"),
    ({"search": {"pruner": {"eta": 3}}}, "search.pruner.eta: unknown key"),
    ({"search": {"pruner": {"rung_val_fraction": 0}}}, "search.pruner.rung_val_fraction: must be in (0, 1]"),
])
def test_pruner_config_is_checked_key_by_key(data, msg):
    with pytest.raises(ConfigError) as e:
        parse_config({"name": "t", "backbone": "tiny", **data}, "mf.yaml")
    assert str(e.value).startswith("mf.yaml: ") and msg in str(e.value) and "\n" not in str(e.value)


def test_decisions_are_recorded_and_a_resumed_ladder_reattaches(tmp_path):
    """Optuna's SH pruner decides on the rung study; a new Ladder on the same storage (a
    resumed driver) finds the candidate's RUNNING rung trial and repeats its decisions."""
    from experiments.study import open_storage

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = open_storage(None, tmp_path)
    lad = Ladder("successive_halving", 1, 2, 4, direction="maximize", latency_budget_ms=None)
    lad.open(storage, "s", lambda: [])
    assert [s.study_name for s in lad.studies] == ["s.rungs0"]
    # the first candidate at rung 0 is the best so far: promoted; a worse one: pruned
    a = lad.attach("arch_a", 1.0)
    assert lad.decide(a, 1, 0.5) is False
    b = lad.attach("arch_b", 1.0)
    assert lad.decide(b, 1, 0.1) is True
    lad.finish(b, "PRUNED")
    # a driver restart: arch_a's rung trial is re-attached with its decision
    again = Ladder("successive_halving", 1, 2, 4, direction="maximize", latency_budget_ms=None)
    again.open(storage, "s", lambda: pytest.fail("edges are read back, not recomputed"))
    a2 = again.attach("arch_a", 1.0)
    assert a2.number == a.number
    assert again.decide(a2, 1, 123.0) is False  # the recorded decision, not a new one
    again.finish(a2, "COMPLETE", 0.9)
    st = again.studies[0].get_trials(deepcopy=False)
    assert {t.state.name for t in st} == {"COMPLETE", "PRUNED"}
    assert st[0].intermediate_values == {1: 0.5}


def test_bootstrap_count_promotes_nobody_before_enough_candidates(tmp_path):
    """Asynchronous SH promotes the first candidate of a rung whatever its score; with
    ``bootstrap_count`` the first candidates are pruned and a later one is promoted only
    against them."""
    from experiments.study import open_storage

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    lad = Ladder("successive_halving", 1, 2, 4, direction="maximize", latency_budget_ms=None,
                 bootstrap_count=2)
    lad.open(open_storage(None, tmp_path), "b", lambda: [])
    decisions = []
    for i, q in enumerate([0.9, 0.1, 0.5, 0.95]):
        t = lad.attach(f"arch_{i}", 1.0)
        decisions.append(lad.decide(t, 1, q))
        if decisions[-1]:
            lad.finish(t, "PRUNED")
    assert decisions == [True, True, True, False]  # 0.5 is not the best of three; 0.95 is


@pytest.fixture(scope="module")
def sh_run(tmp_path_factory, local_ray):
    cache = str(tmp_path_factory.mktemp("cache"))
    cfg = parse_config({
        "name": "sh", "backbone": "tiny",
        "space": {"defaults": {"kinds": ["none", "conv1d", "attn1d"], "heads": [2],
                               "kernel_t": [3]}},
        "evaluator": {"name": "short_train", "options": {**TINY_TRAIN, "cache_dir": cache},
                      "budget": 4, "seeds": [0]},
        "constraints": {"latency_budget_ms": 1.2},
        "search": {"sampler": "tpe", "n_trials": 8, "workers": 2,
                   "pruner": {"name": "successive_halving", "min_budget": 1,
                              "reduction_factor": 2, "latency_buckets": 2,
                              "rung_val_fraction": 0.5}}}, "sh.yaml")
    run_dir = tmp_path_factory.mktemp("sh") / "run"
    s = run_search(cfg, SearchOptions(out=str(run_dir), progress=False, write_plots=False))
    return cfg, run_dir, s, cache


def test_successive_halving_search_climbs_the_ladder(sh_run):
    cfg, run_dir, s, _ = sh_run
    study = load_study(run_dir, cfg.name)
    st = counted_states(study)
    assert st["COMPLETE"] + st["PRUNED"] == 8 and st["FAIL"] == 0
    assert s.pruned == st["PRUNED"] > 0 and s.complete == st["COMPLETE"] > 0
    with open(run_dir / "trials.csv", newline="") as f:
        rows = {int(r["number"]): r for r in csv.DictReader(f)}
    for t in study.trials:
        r = rows[t.number]
        if t.state.name == "PRUNED":  # recorded with the rung it reached
            assert int(r["rung"]) < 2 and int(r["budget"]) in (1, 2)
            assert t.user_attrs["failure_reason"].startswith("pruned: successive_halving")
        elif t.state.name == "COMPLETE" and not r["duplicate_of"]:
            assert (int(r["rung"]), int(r["budget"])) == (2, 4)
    assert "| pruned |" in (run_dir / "report.md").read_text()
    # one evaluation per (arch, rung); every rung above 0 continued from the rung below
    assert max(evaluation_counts(run_dir).values()) == 1
    for rec in read_records(run_dir):
        prev = {2: 1.0, 4: 2.0}.get(rec["budget"])
        assert rec["extras"].get("start_step") == prev, rec
        assert rec["cpu_s"] > 0
        # lower rungs are scored on half the held-out batches, under their own cache key
        lower = rec["budget"] < 4
        assert rec["extras"].get("val_fraction") == (0.5 if lower else None)
        assert rec["config_key"].endswith("~val0.5") == lower
    # the rung studies mirror the candidates; no checkpoint outlives its ladder
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(
        str(run_dir / "study.journal")))
    rungs = [n for n in optuna.get_all_study_names(storage) if n.startswith("sh.rungs")]
    assert len(rungs) == 3  # 2 latency buckets of feasible candidates + 1 over the budget
    n_rung_trials = sum(len(optuna.load_study(study_name=n, storage=storage).trials) for n in rungs)
    evaluated = {r["arch_id"] for r in read_records(run_dir)}
    assert n_rung_trials == len(evaluated)
    assert not list((run_dir / "checkpoints").rglob("*.safetensors"))


def test_a_laddered_score_equals_straight_training(sh_run):
    """The top-rung quality told to Optuna (rung 0 -> 1 -> 2 through Ray, checkpoints in the
    run folder) is the score of training straight to the top budget."""
    from evaluators import create_evaluator
    from search_space.arch import ArchConfig

    cfg, run_dir, _, cache = sh_run
    study = load_study(run_dir, cfg.name)
    done = next(t for t in study.trials if t.state.name == "COMPLETE"
                and "duplicate_of" not in t.user_attrs and not t.user_attrs.get("not_evaluated"))
    ev = create_evaluator("short_train", cfg.backbone_spec, {**TINY_TRAIN, "cache_dir": cache})
    arch = ArchConfig.from_json(done.user_attrs["candidate"]["arch"])
    assert done.values[0] == pytest.approx(ev.evaluate(arch, seed=0, budget=4).value, abs=1e-6)


def test_a_pruner_on_the_smoke_config_runs_each_rung_from_scratch(tmp_path, smoke_cfg, local_ray):
    """An evaluator without evaluate_resumable (params) still climbs the ladder: each rung is
    evaluated on its own."""
    from experiments.config import PrunerConfig

    cfg = replace(smoke_cfg, evaluator=replace(smoke_cfg.evaluator, budget=4),
                  search=replace(smoke_cfg.search, sampler="random", sampler_options={}, n_trials=6,
                                 pruner=PrunerConfig("hyperband", 1, 2, 1)))
    run_search(cfg, SearchOptions(out=str(tmp_path / "run"), progress=False, write_plots=False))
    study = load_study(tmp_path / "run", cfg.name)
    assert counted_states(study)["COMPLETE"] + counted_states(study)["PRUNED"] == 6
    assert {r["budget"] for r in read_records(tmp_path / "run")} <= {1, 2, 4}
