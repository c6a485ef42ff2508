"""supernet: inherited weights are slices of the shared ones, every choice of the space is
covered, honest cache keys, resumable training, a cache hit on the second build, deterministic
scores, one training under concurrency, one-line errors."""

from __future__ import annotations

import os
import threading

import pytest
import torch
from ev_helpers import make_arch, tiny_options

import evaluators._supernet as sn
import evaluators._supernet_net as snn
from evaluators._torch_setup import scaled_arch
from evaluators._weight_sharing import ReusedBlocks, locked_artifact
from evaluators.registry import create_evaluator
from search_space.arch import ArchConfig, StageChoice, TemporalKind
from search_space.errors import ConfigError
from search_space.modules import build_model, is_temporal_name

#: a small space of the tiny backbone: two conv kernels, two head counts
SPACE = {"defaults": {"kinds": ["none", "conv1d", "attn1d"], "kernel_t": [3, 5], "heads": [2, 4]}}


def _opts(cache_dir: str, **over) -> dict:
    o = {**tiny_options("supernet", cache_dir), "space": SPACE}
    o["train"] = {**o["train"], **over.pop("train", {})}
    return {**o, **over}


@pytest.fixture(scope="module")
def ev(tiny, cache_dir):
    return create_evaluator("supernet", tiny, _opts(cache_dir, train={"steps": 6}))


def _arch(tiny, kt: int, heads: int):
    return make_arch(tiny, {"down0": StageChoice(TemporalKind.CONV1D, 1, kernel_t=kt),
                            "mid": StageChoice(TemporalKind.ATTN1D, 2, heads=heads)})


def test_subnet_temporal_weights_are_supernet_slices(ev, tiny):
    net, meta = ev.supernet(4)
    assert meta["steps"] == 6 and meta["cpu_s"] > 0
    small = ev.subnet(_arch(tiny, kt=3, heads=2))
    big = ev.subnet(_arch(tiny, kt=5, heads=4))
    conv5 = net.templates["down0-0-conv1d"].conv.weight  # (C, C, 5, 1, 1): the largest kernel
    assert conv5.shape[2] == 5 and conv5.abs().sum() > 0  # trained (it starts at zero)
    w3 = small.get_parameter("stages.down0.temporal.0.conv.weight")
    assert torch.equal(w3, conv5[:, :, 1:4])  # kernel 3 = centre of kernel 5
    assert torch.equal(big.get_parameter("stages.down0.temporal.0.conv.weight"), conv5)
    for name, p in small.named_parameters():  # head counts share every attention tensor
        if name.startswith("stages.mid.temporal."):
            assert torch.equal(p, big.get_parameter(name)), name
    assert small.arch.choice("mid").heads == 2 and big.arch.choice("mid").heads == 4
    n_temporal = sum(is_temporal_name(n) for n, _ in small.named_parameters())
    assert n_temporal and all(not p.requires_grad for n, p in small.named_parameters()
                              if not is_temporal_name(n))


def test_score_is_the_inherited_subnet_held_out_gain(ev, tiny):
    from evaluators._torch_setup import mean_loss

    arch = _arch(tiny, kt=3, heads=4)
    r = ev.evaluate(arch, seed=0)
    groups = ev._val_groups(4)
    vl = mean_loss(ev.subnet(arch, len(groups[0][0])), groups)  # an independent copy
    assert r.extras["val_loss"] == pytest.approx(vl, rel=1e-5)
    assert r.value == pytest.approx(r.extras["val_loss_image"] - vl, rel=1e-4, abs=1e-7)
    assert ev.evaluate(make_arch(tiny, {}), seed=0).value == pytest.approx(0.0, abs=1e-7)


def test_separate_sharing_has_one_module_per_variant(tiny, cache_dir):
    ev = create_evaluator("supernet", tiny, _opts(cache_dir, train={
        "kernel_sharing": "separate", "head_sharing": "separate"}))
    net = sn.Supernet(tiny, ev.space_for(sn.nominal_task(tiny)), ev.options)
    assert {"down0-0-conv1d-k3x0", "down0-0-conv1d-k5x0", "mid-1-attn1d-h2",
            "mid-1-attn1d-h4"} <= set(net.templates)


def test_config_key_is_honest(tiny, cache_dir):
    base = _opts(cache_dir)
    key = create_evaluator("supernet", tiny, base).config_key
    same = [{**base, "threads": 2, "cache_dir": cache_dir + "/x", "resources": {"num_cpus": 2}},
            {**base, "train": {**base["train"], "checkpoint_every": 7}},
            {**base, "device": "cpu"}, {**base, "data": {**base["data"], "cache_dir": cache_dir + "/d"}}]
    for o in same:
        assert create_evaluator("supernet", tiny, o).config_key == key
    changed = [{**base, "data": {**base["data"], "seed": 3}},
               {**base, "space": {"defaults": {"kinds": ["none", "conv1d"]}}},
               {**base, "train": {**base["train"], "steps": 4}},
               {**base, "train": {**base["train"], "kernel_sharing": "separate"}},
               {**base, "pretrain": {**base["pretrain"], "steps": 5}},
               {**base, "data": {**base["data"], "num_train": 10}},
               {**base, "spatial": "random"},
               {**base, "precision": "bf16"},
               {**base, "finetune_steps": 1}]
    keys = {create_evaluator("supernet", tiny, o).config_key for o in changed}
    assert key not in keys and len(keys) == len(changed)
    tk = create_evaluator("supernet", tiny, base).training_key(4)  # the weights follow the data
    assert create_evaluator("supernet", tiny, changed[0]).training_key(4) != tk
    # the space counts as resolved: {} and the default space written out are the same supernet
    full = create_evaluator("supernet", tiny, {**base, "space": {}})
    spelled = {**base, "space": full.space_for(sn.nominal_task(tiny)).to_dict()["stages"]}
    assert create_evaluator("supernet", tiny, spelled).config_key == full.config_key
    # scoring-only options do not retrain
    ft = create_evaluator("supernet", tiny, {**base, "finetune_steps": 2, "eval_batch": 4})
    assert ft.training_key(4) == create_evaluator("supernet", tiny, base).training_key(4)


def test_resume_after_interruption_gives_the_same_weights(tiny, tmp_path, monkeypatch):
    over = {"train": {"steps": 4, "checkpoint_every": 2, "ema": 0.5}}
    whole = create_evaluator("supernet", tiny, _opts(str(tmp_path / "a"), **over))
    ref = {k: v.clone() for k, v in whole.supernet(4)[0].state_dict().items()}
    sn._MEMO.clear()

    save = snn.save_checkpoint

    def save_then_crash(*args):
        save(*args)
        raise KeyboardInterrupt  # the process dies right after the first checkpoint

    monkeypatch.setattr(snn, "save_checkpoint", save_then_crash)
    cut = create_evaluator("supernet", tiny, _opts(str(tmp_path / "b"), **over))
    with pytest.raises(KeyboardInterrupt):
        cut.supernet(4)
    d = tmp_path / "b" / "supernet"
    key = cut.training_key(4)
    assert (d / f"{key}.ckpt.safetensors").exists() and not (d / f"{key}.safetensors").exists()
    monkeypatch.setattr(snn, "save_checkpoint", save)
    net, meta = create_evaluator("supernet", tiny, _opts(str(tmp_path / "b"), **over)).supernet(4)
    sn._MEMO.clear()
    assert meta["resumed_at_step"] == 2
    for k, v in net.state_dict().items():
        assert torch.equal(v, ref[k]), k
    assert not (d / f"{key}.ckpt.safetensors").exists()  # checkpoint dropped once stored


def test_concurrent_workers_build_once(tmp_path):
    calls = []

    def build():
        calls.append(1)
        threading.Event().wait(0.3)
        return {"w": torch.arange(3.0)}, {"built_by": threading.get_ident()}

    out = []
    ts = [threading.Thread(target=lambda: out.append(locked_artifact(str(tmp_path), "k", build)))
          for _ in range(3)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert len(calls) == 1 and len(out) == 3
    assert all(torch.equal(s["w"], torch.arange(3.0)) and m["key"] == "k" for s, m in out)
    assert sorted(os.listdir(tmp_path)) == ["k.json", "k.lock", "k.safetensors"]


def test_arch_outside_the_space_and_bad_options(ev, tiny, cache_dir):
    outside = make_arch(tiny, {"down0": StageChoice(TemporalKind.CONV3D, 1, kernel_t=3, kernel_s=3)})
    with pytest.raises(ConfigError, match=r"evaluator\.options\.space"):
        ev.evaluate(outside, seed=0)
    bad = [({"train": {"sampling": "greedy"}}, r"train\.sampling"),
           ({"space": {"bogus": {}}}, r"space\.bogus"),
           ({"train": {"ema": 1.5}}, r"train\.ema"),
           ({"finetune_lr": 0}, r"finetune_lr"),
           ({"eval_batch": 0}, r"eval_batch"),
           ({"train": {"stepz": 3}}, r"stepz")]
    for over, fragment in bad:
        with pytest.raises(ConfigError, match=fragment) as e:
            create_evaluator("supernet", tiny, _opts(cache_dir, **over))
        assert "\n" not in str(e.value), str(e.value)


@pytest.mark.parametrize("sharing", ["crop", "separate"])
def test_every_choice_of_the_space_is_covered(tiny, cache_dir, sharing):
    """Every stage choice of the default space gets a shared tensor of its exact shape for
    every temporal parameter (and nothing else)."""
    ev = create_evaluator("supernet", tiny, _opts(cache_dir, space={}, train={
        "kernel_sharing": sharing, "head_sharing": "shared" if sharing == "crop" else "separate"}))
    space = ev.space_for(sn.nominal_task(tiny))
    net, blocks, n = sn.Supernet(tiny, space, ev.options), ReusedBlocks(), 0
    for ss in space.stages:
        for c in space.stage_choices(ss.stage):
            arch = ArchConfig.create(tiny.name, space.task, {ss.stage: c}, tiny.stage_ids)
            bb, sa = scaled_arch(tiny, ev.options, arch)
            model = build_model(bb, sa.task, sa, blocks)
            shared = net.subnet_tensors(model)
            want = {k: p.shape for k, p in model.named_parameters() if is_temporal_name(k)}
            assert {k: v.shape for k, v in shared.items()} == want, (ss.stage, c)
            n += 1
    assert n == sum(len(space.stage_choices(ss.stage)) for ss in space.stages) > 10


def test_second_build_reads_the_cache_and_scores_are_deterministic(tiny, tmp_path, monkeypatch):
    o = _opts(str(tmp_path), train={"steps": 2})
    first = create_evaluator("supernet", tiny, o)
    info = first.setup(sn.nominal_task(tiny), progress=False)  # the driver trains it once
    key = first.training_key(4)
    assert info["supernet"]["key"] == key and (tmp_path / "supernet" / f"{key}.safetensors").exists()
    arch = _arch(tiny, kt=5, heads=2)
    r = first.evaluate(arch, seed=0)
    state = {k: v.clone() for k, v in first.supernet(4)[0].state_dict().items()}
    sn._MEMO.clear()
    monkeypatch.setattr(sn, "train_supernet", lambda *a, **k: pytest.fail("trained twice"))
    again = create_evaluator("supernet", tiny, o)
    net, meta = again.supernet(4)
    assert meta["key"] == key and all(torch.equal(v, state[k]) for k, v in net.state_dict().items())
    assert again.evaluate(arch, seed=1).value == r.value  # seed only matters with finetune_steps
    sn._MEMO.clear()
