"""Analytic costs: params exact, FLOPs equal to torch's FlopCounterMode, memory model sanity,
public SD parameter counts."""

from __future__ import annotations

import pytest
import torch
from ss_helpers import TEMPORAL_KINDS, K, choice_for, mixed_arch, tiny_variant
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from search_space.arch import ArchConfig, StageChoice
from search_space.flops import (
    backbone_params,
    block_activation_elements,
    block_cost,
    image_cost,
    network_cost,
)
from search_space.geometry import BlockOp, image_blocks, network_blocks
from search_space.modules import build_block, build_model, example_inputs
from search_space.presets import SNAPGEN_V_NOTES, default_task, get_backbone, preset_names

torch.set_num_threads(min(2, torch.get_num_threads()))

SD15_UNET_PARAMS = 859_520_964   # runwayml/stable-diffusion-v1-5 unet (diffusers)
SD21_UNET_PARAMS = 865_910_724   # stabilityai/stable-diffusion-2-1-base unet (diffusers)


def counted_flops(module, inputs) -> int:
    """FlopCounterMode with the math SDPA path (CPU fused SDPA is not counted by torch)."""
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as fc:
        module(*inputs)
    return fc.get_total_flops()


def _all_block_cases():
    """(id, BlockInstance) for every spatial op variant and every temporal kind."""
    task = default_task("tiny").replace(num_frames=3, latent_height=8, latent_width=8, batch=2,
                                        text_tokens=5)
    cases = {}
    for sa in (True, False):
        for lin in (False, True):
            bb = tiny_variant(sa, lin)
            for b in network_blocks(bb, task, mixed_arch(bb, task)):
                key = b.sig.op_name
                if b.op is BlockOp.SPATIAL_TRANSFORMER:
                    key += f"[self_attn={b.sig.self_attn},linear={lin},depth={b.sig.depth}]"
                elif b.op is BlockOp.RESNET:
                    key += f"[skip={b.sig.skip_channels > 0},shortcut={b.sig.in_channels + b.sig.skip_channels != b.sig.out_channels}]"
                cases.setdefault(key, b)
    bb = get_backbone("tiny")
    for kind in TEMPORAL_KINDS:  # second kernel/heads setting per kind
        c = StageChoice(kind, 1, heads=4) if kind.is_attention else StageChoice(kind, 1, kernel_t=5, kernel_s=3)
        arch = ArchConfig.create("tiny", task, {"down1": c}, bb.stage_ids)
        b = next(b for b in network_blocks(bb, task, arch) if b.op is BlockOp.TEMPORAL)
        cases[f"{b.sig.op_name}[alt]"] = b
    return sorted(cases.items())


BLOCK_CASES = _all_block_cases()


def test_cases_cover_every_kind_and_op():
    ops = {b.sig.op_name for _, b in BLOCK_CASES}
    assert {f"temporal:{k.value}" for k in TEMPORAL_KINDS} <= ops
    assert {op.value for op in BlockOp if op is not BlockOp.TEMPORAL} <= ops


@pytest.mark.parametrize("block", [b for _, b in BLOCK_CASES], ids=[k for k, _ in BLOCK_CASES])
def test_block_params_and_flops_are_exact(block):
    module = build_block(block).eval()
    cost = block_cost(block)
    assert cost.params == sum(p.numel() for p in module.parameters())
    assert cost.flops == counted_flops(module, example_inputs(block))
    assert cost.activation_mb > 0


def test_network_params_and_flops_are_exact(tiny, small_task):
    arch = mixed_arch(tiny, small_task)
    model = build_model(tiny, small_task, arch).eval()
    cost = network_cost(tiny, small_task, arch)
    assert cost.params == sum(p.numel() for p in model.parameters())
    g = torch.Generator().manual_seed(0)
    t = small_task
    args = (torch.randn(t.batch, t.latent_channels, t.num_frames, t.latent_height, t.latent_width, generator=g),
            torch.full((t.batch,), 500.0), torch.randn(t.batch, t.text_tokens, t.text_dim, generator=g))
    assert cost.flops == counted_flops(model, args)
    assert cost.params == cost.params_where(True) + cost.params_where(False)
    assert cost.params_where(False) == backbone_params(tiny)
    assert cost.memory_mb == pytest.approx(cost.weights_mb + cost.peak_activation_mb)
    assert cost.weights_mb == pytest.approx(cost.params * 2 / 2 ** 20)


def test_public_stable_diffusion_parameter_counts():
    for name, public in (("sd15", SD15_UNET_PARAMS), ("sd21", SD21_UNET_PARAMS)):
        got = backbone_params(get_backbone(name))
        assert abs(got - public) / public < 0.01, (name, got)
        assert got == public  # the layout is diffusers', parameter for parameter


def test_snapgen_v_backbone_matches_its_documented_size():
    p = backbone_params(get_backbone("snapgen_v"))
    assert 0.33e9 <= p <= 0.35e9, p  # the notes claim ~0.34B = SD-v1.5 / ~2.5
    assert "0.34B" in SNAPGEN_V_NOTES
    assert 2.3 <= SD15_UNET_PARAMS / p <= 2.7


@pytest.mark.parametrize("name", preset_names())
def test_backbone_params_is_task_independent(name):
    bb = get_backbone(name)
    task = default_task(name)
    assert image_cost(bb, task).params == backbone_params(bb, task.latent_channels)


def test_memory_model_orders_attention_kinds(tiny, tiny_task):
    """attn3d's T*H*W score matrix dominates attn1d's T x T one; costs grow with the count."""
    def cost(c):
        return network_cost(tiny, tiny_task, ArchConfig.create("tiny", tiny_task, {"down0": c}, tiny.stage_ids))
    none = cost(StageChoice())
    a1, a3 = cost(choice_for(K.ATTN1D)), cost(choice_for(K.ATTN3D))
    assert none.peak_activation_mb <= a1.peak_activation_mb < a3.peak_activation_mb
    assert none.params < a1.params == a3.params
    assert a1.flops < a3.flops
    blocks = network_blocks(tiny, tiny_task, ArchConfig.create(
        "tiny", tiny_task, {"down0": choice_for(K.ATTN3D)}, tiny.stage_ids))
    t3 = next(b for b in blocks if b.op is BlockOp.TEMPORAL).sig
    scores = t3.batch * t3.heads * (t3.frames * t3.height * t3.width) ** 2
    assert block_activation_elements(t3) >= 2 * scores


def test_peak_includes_live_skips(tiny, tiny_task):
    cost = image_cost(tiny, tiny_task)
    assert cost.peak_activation_mb >= max(c.activation_mb for _, c in cost.per_block)
    assert cost.peak_path in {b.path for b in image_blocks(tiny, tiny_task)}


def test_per_stage_sums_to_total(tiny, tiny_task):
    cost = network_cost(tiny, tiny_task, mixed_arch(tiny, tiny_task))
    per = cost.per_stage()
    assert next(iter(per)) == "stem" and list(per)[-1] == "head"
    assert sum(d["params"] for d in per.values()) == cost.params
    assert sum(d["flops"] for d in per.values()) == cost.flops
