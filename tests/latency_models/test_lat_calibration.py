"""Calibration probes, the steady-state allocator, paired reference timing and boosted trees."""

from __future__ import annotations

import time

import numpy as np
import pytest
from lat_helpers import tiny_space

from latency_models._trees import BoostedTrees
from latency_models.backends.torch_cpu import (
    ReferenceOp,
    TimingPolicy,
    TorchCpuBackend,
    steady_allocator,
    time_callable,
)
from latency_models.probes import CAL_COST_CAP, calibration_probes, probes


def test_calibration_probes_are_new_distinct_and_cover_every_block_type():
    space = tiny_space()
    own = {p.sig for p in probes(space)}
    cal = calibration_probes(space, 60, seed=3)
    sigs = [p.sig for p in cal]
    assert len(sigs) == 60 == len(set(sigs))
    assert not own & set(sigs)
    assert {p.op_name for p in cal} >= {p.op_name for p in probes(space)}
    assert len({s.in_channels for s in sigs}) > len({s.in_channels for s in own})
    assert [p.sig for p in calibration_probes(space, 60, seed=3)] == sigs  # deterministic
    assert [p.sig for p in calibration_probes(space, 60, seed=4)] != sigs


def test_calibration_probes_stay_under_the_cost_cap():
    from latency_models.features import op_table

    space = tiny_space()

    def cost(s):
        t = op_table(s)
        return t.flops.sum() + 50.0 * t.act.sum()

    cap = CAL_COST_CAP * max(cost(p.sig) for p in probes(space))
    assert all(cost(p.sig) <= cap for p in calibration_probes(space, 40, seed=0))


def test_steady_allocator_is_idempotent():
    first = steady_allocator()
    assert steady_allocator() is first


def test_paired_reference_recovers_the_reference_latency():
    """A call that costs exactly two reference calls has ref_ms ~= median / 2."""
    ref = ReferenceOp()
    pol = TimingPolicy(warmup=2, warmup_s=0.0, min_runs=9, max_runs=9, time_limit_s=5.0)

    def twice():
        ref()
        ref()

    t = time_callable(twice, pol, time.thread_time_ns, reference=ref)
    assert t.runs == 9 and t.ref_ms > 0
    assert 1.4 <= t.median_ms / t.ref_ms <= 2.8
    assert np.isnan(time_callable(twice, pol, time.thread_time_ns).ref_ms)


def test_backend_rows_carry_ref_ms_and_the_allocator_mode():
    space = tiny_space()
    pol = TimingPolicy(warmup=1, warmup_s=0.0, min_runs=3, max_runs=4, time_limit_s=0.5)
    sig = probes(space)[0].sig
    paired = TorchCpuBackend(1, pol, paired=True)
    row = paired.time_block(sig)
    assert row.ref_ms > 0 and "malloc=" in paired.info.versions
    assert np.isnan(TorchCpuBackend(1, pol, paired=False).time_block(sig).ref_ms)


def test_boosted_trees_match_sklearn_and_roundtrip():
    from sklearn.ensemble import GradientBoostingRegressor

    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 5))
    y = np.sin(x[:, 0]) + x[:, 1] ** 2 + 0.1 * rng.normal(size=200)
    bt = BoostedTrees(n_trees=50, depth=3, learning_rate=0.1, subsample=1.0, min_leaf=2).fit(x, y)
    ref = GradientBoostingRegressor(n_estimators=50, max_depth=3, learning_rate=0.1,
                                    min_samples_leaf=2, random_state=0).fit(x, y)
    xt = rng.normal(size=(50, 5))
    np.testing.assert_allclose(bt.predict(xt), ref.predict(xt), rtol=1e-9, atol=1e-9)
    params, arrays = bt.state()
    again = BoostedTrees.from_state(params, {k: np.array(v) for k, v in arrays.items()})
    np.testing.assert_array_equal(again.predict(xt), bt.predict(xt))
    assert np.all(BoostedTrees().predict(xt) == 0)  # unfitted: no correction


@pytest.mark.parametrize("depth", [1, 4])
def test_boosted_trees_learn_a_step(depth):
    x = np.linspace(0, 1, 100)[:, None]
    y = (x[:, 0] > 0.5).astype(float)
    bt = BoostedTrees(n_trees=100, depth=depth, learning_rate=0.2, subsample=1.0).fit(x, y)
    assert np.allclose(bt.predict(np.array([[0.1], [0.9]])), [0, 1], atol=0.05)


def test_regression_trees_learn_a_jump_the_roofline_cannot_and_survive_save_load(tmp_path):
    """Synthetic truth (tests the fitting code, not a measurement): the roofline of lat_helpers,
    times 2.5 for attention blocks with head dim < 16 (a kernel-efficiency cliff). Calibration
    blocks provide the signatures; the trees must find the cliff on held-out signatures."""
    from lat_helpers import truth

    from latency_models import create_model, load_latency_model
    from latency_models._regression import MIN_TREE_SIGNATURES
    from latency_models.measurements import BlockRow, DeviceInfo, Measurements
    from search_space.geometry import BlockOp

    space = tiny_space()
    sigs = [p.sig for p in probes(space)] + [p.sig for p in calibration_probes(space, 160, seed=1)]
    assert len(sigs) >= MIN_TREE_SIGNATURES

    def cliff(s):
        attn = s.op is BlockOp.TEMPORAL and s.kind.is_attention
        return 2.5 if attn and s.in_channels // s.heads < 16 else 1.0

    t = truth()
    y = t.block_ms(sigs) * np.array([cliff(s) for s in sigs])
    test = set(range(0, len(sigs), 5))  # every 5th signature is never fitted on
    rows = [BlockRow(s, float(v), runs=5) for i, (s, v) in enumerate(zip(sigs, y)) if i not in test]
    m = Measurements(DeviceInfo("synthetic-device", "synthetic"), rows, [], source="synthetic")
    model = create_model("regression").fit(m, evaluate=False)
    held = [sigs[i] for i in sorted(test)]
    err = np.abs(model.block_ms(held) / y[sorted(test)] - 1)
    roof = create_model("roofline").fit(m, evaluate=False)
    err_roof = np.abs(roof.block_ms(held) / y[sorted(test)] - 1)
    on_cliff = np.array([cliff(s) > 1 for s in held])
    assert model.metadata["trees"] > 0 and on_cliff.sum() >= 3
    assert np.median(err_roof[on_cliff]) > 0.2  # one set of constants cannot have the cliff
    assert np.median(err[on_cliff]) < 0.1 and np.median(err) < 0.05
    model.save(tmp_path / "m")
    again = load_latency_model(tmp_path / "m")
    np.testing.assert_allclose(again.block_ms(held), model.block_ms(held), rtol=1e-12)
