"""Every sampler a config can name drives SearchSpace.suggest in an ask/tell loop (two
objectives, constraints set); the hypervolume helpers agree with Optuna."""

from __future__ import annotations

import numpy as np
import optuna
import pytest

from experiments.config import SAMPLERS, parse_config
from experiments.hypervolume import hypervolume, hypervolume_history, pareto_mask
from experiments.study import make_sampler
from search_space.errors import ConfigError

SPACE = {"defaults": {"kinds": ["none", "conv1d", "attn1d"], "heads": [2], "kernel_t": [3]}}


@pytest.mark.parametrize("name", SAMPLERS)
def test_every_sampler_runs_ask_tell_with_constraints(name):
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    cfg = parse_config({"name": "s", "backbone": "tiny", "space": SPACE})
    space = cfg.search_space
    opts = {"n_startup_trials": 3} if name in ("gp", "tpe") else (
        {"population_size": 4} if name == "nsga2" else {})
    study = optuna.create_study(directions=["maximize", "minimize"],
                                sampler=make_sampler(name, opts, seed=0))
    ids = []
    n_trials = 4 if name == "gp" else 8  # a GP step costs seconds here: test one
    for _ in range(n_trials):
        t = study.ask()
        arch = space.suggest(t)
        assert space.contains(arch)
        ids.append(arch.arch_id)
        n = arch.num_temporal_blocks
        t.set_constraint("latency_ms", n - 4.0)
        study.tell(t, [float(n), float(n) ** 0.5 + len(arch.arch_id)])
    assert len(study.trials) == n_trials
    assert all(all(v <= 0 for v in t.constraints.values()) for t in study.best_trials)


def test_sampler_options_are_checked():
    with pytest.raises(ConfigError, match="search.sampler_options.popsize: not an option of the nsga2"):
        make_sampler("nsga2", {"popsize": 3}, 0)


def test_hypervolume_matches_optuna_and_brute_force():
    from optuna._hypervolume import compute_hypervolume

    rng = np.random.default_rng(0)
    pts = rng.random((60, 2))
    ref = np.array([1.1, 1.2])
    mask = pareto_mask(pts)
    assert hypervolume(pts, ref) == pytest.approx(compute_hypervolume(pts[mask], ref))
    # brute force on a grid
    g = np.linspace(0, 1.2, 601)
    X, Y = np.meshgrid(g[:-1] + 0.001, g[:-1] + 0.001)
    cell = (g[1] - g[0]) ** 2
    dom = np.zeros_like(X, dtype=bool)
    for x, y in pts[mask]:
        dom |= (X >= x) & (Y >= y)
    dom &= (X <= ref[0]) & (Y <= ref[1])
    assert hypervolume(pts, ref) == pytest.approx(dom.sum() * cell, rel=0.01)
    hist = hypervolume_history(pts, ref)
    assert np.all(np.diff(hist) >= -1e-12) and hist[-1] == pytest.approx(hypervolume(pts, ref))
    # duplicates of a front point are all on the front (as in study.best_trials)
    dup = np.vstack([pts[mask][:1], pts])
    assert pareto_mask(dup)[0] and pareto_mask(dup)[1 + int(np.argmax(mask))]


def test_latency_parity_plot_comes_from_a_fitted_model_dir(tmp_path):
    from experiments.plots import latency_parity_png

    assert latency_parity_png("iphone16pm") is None  # a shipped prior has no measurements
    (tmp_path / "report").mkdir()
    (tmp_path / "report" / "parity.png").write_bytes(b"\x89PNG")
    assert latency_parity_png(str(tmp_path)) == tmp_path / "report" / "parity.png"


def test_a_resumed_session_gets_a_fresh_sampler_seed():
    from experiments.runner import _resume_seed

    seeds = {_resume_seed(0, n) for n in range(1, 200)}
    assert len(seeds) == 199 and 0 not in seeds
    assert _resume_seed(3, 10) == _resume_seed(3, 10) != _resume_seed(4, 10)


def _over_memory_rate(sampler: str, opts: dict, way: str, seed: int, n: int = 60) -> float:
    """Share of over-memory proposals after the first 20 trials. Toy objectives on the tiny
    space: quality rewards attention, which is what costs memory (over budget from 2 attention
    blocks on). ``way``: ``driver`` tells an over-memory trial what the driver tells it
    (:func:`~experiments.ledger.not_evaluated_values`, violated memory constraint); ``pruned``:
    PRUNED (before issue 14)."""
    from optuna.trial import TrialState

    from experiments.ledger import not_evaluated_values

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = parse_config({"name": "s", "backbone": "tiny", "space": SPACE}).search_space
    study = optuna.create_study(directions=["maximize", "minimize"],
                                sampler=make_sampler(sampler, opts, seed))
    over = []
    for _ in range(n):
        t = study.ask()
        arch = space.suggest(t)
        n_attn, n_tmp = arch.to_json().count('"attn1d"'), arch.num_temporal_blocks
        lat = float(n_tmp + n_attn)
        t.set_constraint("memory_mb", n_attn - 1.0)
        over.append(n_attn > 1)
        if n_attn <= 1:
            study.tell(t, [float(n_tmp + 2 * n_attn), lat])
        elif way == "driver":
            study.tell(t, not_evaluated_values(["quality", "latency_ms"], "maximize",
                                               {"latency_ms": lat}))
        else:
            study.tell(t, state=TrialState.PRUNED)
    return float(np.mean(over[20:]))


def test_over_memory_trials_teach_the_samplers():
    """NSGA-II ignores PRUNED trials: told as the driver tells them (worst quality, violated
    memory constraint) it proposes fewer over-memory candidates; TPE (the default) steers
    away from the region (random proposes it about half the time)."""
    seeds = range(4)
    nsga = {w: np.mean([_over_memory_rate("nsga2", {"population_size": 8}, w, s) for s in seeds])
            for w in ("driver", "pruned")}
    assert nsga["driver"] < 0.85 * nsga["pruned"], nsga
    tpe = np.mean([_over_memory_rate("tpe", {}, "driver", s) for s in seeds])
    rnd = np.mean([_over_memory_rate("random", {}, "driver", s) for s in seeds])
    assert tpe < 0.75 * rnd, (tpe, rnd)
