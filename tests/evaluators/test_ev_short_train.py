"""short_train: only temporal params change, held-out loss improves, budgets, cache."""

from __future__ import annotations

import glob
import os

import pytest
import torch
from ev_helpers import tiny_options

from evaluators._pretrain import pretrained_spatial
from evaluators.registry import create_evaluator
from search_space.modules import is_temporal_name


@pytest.fixture(scope="module")
def st(tiny, cache_dir):
    return create_evaluator("short_train", tiny, {**tiny_options("short_train", cache_dir),
                                                  "lr": 5e-3, "cache_results": False})


def test_trains_only_temporal_params_and_beats_image_only(st, tiny, temporal_arch):
    spatial, _ = pretrained_spatial(tiny, st.options, 4)
    model = st.trained_model(temporal_arch, seed=0, budget=12)
    state = model.state_dict()
    for k, v in spatial.items():  # frozen spatial weights are the pretrained ones, untouched
        assert torch.equal(state[k], v), k
    temporal = {k: v for k, v in state.items() if is_temporal_name(k)}
    assert temporal and any(v.abs().sum() > 0 for k, v in temporal.items() if "proj_out" in k or "conv" in k)
    r = st.evaluate(temporal_arch, seed=0, budget=12)
    assert r.extras["val_loss"] < r.extras["val_loss_image"]
    assert r.value == pytest.approx(r.extras["val_loss_image"] - r.extras["val_loss"])
    assert r.value > 0


def test_image_only_arch_scores_zero(st, image_arch):
    assert st.evaluate(image_arch, seed=0, budget=2).value == 0.0


def test_budgets_in_one_run_equal_separate_runs(st, temporal_arch):
    both = st.evaluate_budgets(temporal_arch, seed=1, budgets=[2, 4])
    assert both[2].value == st.evaluate(temporal_arch, seed=1, budget=2).value
    assert both[4].value == st.evaluate(temporal_arch, seed=1, budget=4).value
    assert both[2].value != both[4].value


def test_result_cache_hit(tiny, cache_dir, temporal_arch):
    ev = create_evaluator("short_train", tiny, tiny_options("short_train", cache_dir))
    r1 = ev.evaluate(temporal_arch, seed=5, budget=3)
    files = glob.glob(os.path.join(cache_dir, "results", "short_train", ev.config_key,
                                   f"{temporal_arch.arch_id}.b3.s5.json"))
    assert len(files) == 1 and "cache_hit" not in r1.extras
    r2 = create_evaluator("short_train", tiny, tiny_options("short_train", cache_dir)).evaluate(
        temporal_arch, seed=5, budget=3)
    assert r2.extras.get("cache_hit") == 1.0 and r2.value == r1.value


def test_pretrained_backbone_is_cached_as_safetensors(tiny, cache_dir, st):
    pretrained_spatial(tiny, st.options, 4)
    files = glob.glob(os.path.join(cache_dir, "pretrained", "*.safetensors"))
    assert files
    from safetensors.torch import load_file
    state = load_file(files[0])
    assert state and not any(is_temporal_name(k) for k in state)


def test_training_on_from_a_checkpoint_equals_training_straight(st, tiny, cache_dir, temporal_arch):
    """Budget 2 -> checkpoint -> budget 5 in a fresh evaluator (another Ray worker) gives the
    score of training straight to 5: weights, EMA average, AdamW state, generator and step
    all travel in the safetensors blob."""
    from evaluators._train_state import TrainState

    r2, blob2 = st.evaluate_resumable(temporal_arch, seed=3, budget=2)
    assert r2.value == st.evaluate(temporal_arch, seed=3, budget=2).value
    state = TrainState.from_bytes(blob2)
    assert state.step == 2 and state.meta["arch_id"] == temporal_arch.arch_id
    assert state.opt and all({"exp_avg", "exp_avg_sq", "step"} <= set(v) for v in state.opt.values())
    other = create_evaluator("short_train", tiny, {**tiny_options("short_train", cache_dir),
                                                   "lr": 5e-3, "cache_results": False})
    r5, blob5 = other.evaluate_resumable(temporal_arch, seed=3, budget=5, checkpoint=blob2)
    straight = st.evaluate(temporal_arch, seed=3, budget=5)
    assert r5.value == pytest.approx(straight.value, abs=1e-6, rel=0)
    assert r5.extras["val_loss"] == pytest.approx(straight.extras["val_loss"], abs=1e-6, rel=0)
    assert r5.extras["train_loss_ema"] == pytest.approx(straight.extras["train_loss_ema"], abs=1e-6)
    assert TrainState.from_bytes(blob5).step == 5 and r5.value != r2.value


def test_a_checkpoint_of_another_run_is_refused(st, temporal_arch):
    from search_space.errors import ConfigError

    _, blob = st.evaluate_resumable(temporal_arch, seed=3, budget=2)
    with pytest.raises(ConfigError, match="checkpoint: seed '3' does not match"):
        st.evaluate_resumable(temporal_arch, seed=4, budget=5, checkpoint=blob)
    with pytest.raises(ConfigError, match="beyond budget 1"):
        st.evaluate_resumable(temporal_arch, seed=3, budget=1, checkpoint=blob)
    with pytest.raises(ConfigError, match="not a readable safetensors blob"):
        st.evaluate_resumable(temporal_arch, seed=3, budget=5, checkpoint=b"garbage!" * 4)


def test_a_partial_validation_score_is_not_cached_as_the_score(tiny, cache_dir, temporal_arch):
    """val_fraction < 1 (a lower rung's decision): scored on evenly spaced validation batches,
    marked in its extras, never written to the result cache; training is unaffected."""
    from evaluators._torch_setup import validation_subset
    from evaluators._train_state import TrainState

    assert validation_subset(list(range(16)), 0.25) == [0, 5, 10, 15]
    assert validation_subset(list(range(16)), 1.0) == list(range(16))
    assert validation_subset(list(range(3)), 0.1) == [0]
    ev = create_evaluator("short_train", tiny, {**tiny_options("short_train", cache_dir),
                                                "val_timesteps": 2})
    part, blob = ev.evaluate_resumable(temporal_arch, seed=6, budget=2, val_fraction=0.5)
    assert part.extras["val_fraction"] == 0.5
    assert not glob.glob(os.path.join(cache_dir, "results", "short_train", ev.config_key,
                                      f"{temporal_arch.arch_id}.b2.s6.json"))
    full, blob_full = ev.evaluate_resumable(temporal_arch, seed=6, budget=2)
    assert "val_fraction" not in full.extras and full.value != part.value
    a, b = TrainState.from_bytes(blob), TrainState.from_bytes(blob_full)  # the same training
    assert a.step == b.step and all(torch.equal(a.live[k], b.live[k]) for k in a.live)
