"""Torch modules: every temporal kind (registry-parametrized), spatial blocks, the builder."""

from __future__ import annotations

import json
import math
import os
import re

import pytest
import torch
from ss_helpers import TEMPORAL_KINDS, K, choice_for, mixed_arch, tiny_variant

from search_space.arch import ArchConfig, TemporalKind
from search_space.errors import ConfigError
from search_space.geometry import BlockOp, BlockSignature, network_blocks
from search_space.modules import (
    SPATIAL_BLOCKS,
    TEMPORAL_BLOCKS,
    build_block,
    build_image_model,
    build_model,
    example_inputs,
    input_specs,
    is_temporal_name,
    load_diffusers_unet,
    output_shape,
    temponas_name,
)
from search_space.presets import default_task, get_backbone
from search_space.task import VideoTask

torch.set_num_threads(min(2, torch.get_num_threads()))

B, T, C, H, W = 2, 3, 16, 4, 6


def temporal_sig(kind: TemporalKind) -> BlockSignature:
    return BlockSignature(BlockOp.TEMPORAL, kind=kind, in_channels=C, out_channels=C, batch=B,
                          frames=T, height=H, width=W, heads=2 if kind.is_attention else 0,
                          kernel_t=0 if kind.is_attention else 3,
                          kernel_s=3 if kind.uses_kernel_s else 0,
                          context_tokens=5 if kind.has_cross_attention else 0,
                          context_dim=12 if kind.has_cross_attention else 0, norm_groups=8)


def randomize_(module: torch.nn.Module, seed: int = 0) -> None:
    """Give every parameter a random value (undo the zero init) to test the mixing paths."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)


def test_registry_covers_every_kind():
    assert set(TEMPORAL_BLOCKS) == set(TEMPORAL_KINDS)
    assert set(SPATIAL_BLOCKS) == set(BlockOp) - {BlockOp.TEMPORAL}


@pytest.mark.parametrize("kind", sorted(TEMPORAL_BLOCKS, key=lambda k: k.value), ids=lambda k: k.value)
class TestTemporalKind:
    def test_shape_and_identity_at_init(self, kind):
        sig = temporal_sig(kind)
        block = build_block(sig)
        inputs = example_inputs(sig)
        assert tuple(x.shape for x in inputs) == tuple(s for _, s in input_specs(sig))
        out = block(*inputs)
        assert tuple(out.shape) == output_shape(sig) == (B * T, C, H, W)
        assert torch.equal(out, inputs[0])  # exact no-op: zero-initialized output projection

    def test_gradients_reach_every_parameter_after_one_step(self, kind):
        sig = temporal_sig(kind)
        block = build_block(sig)
        inputs = example_inputs(sig, seed=1)
        target = torch.randn(output_shape(sig), generator=torch.Generator().manual_seed(2))
        opt = torch.optim.SGD(block.parameters(), lr=0.1)
        for step in range(2):
            opt.zero_grad()
            loss = (block(*inputs) - target).pow(2).mean()
            loss.backward()
            if step == 0:  # at init only the zero-initialized projection can receive gradient
                opt.step()
        no_grad = [n for n, p in block.named_parameters()
                   if p.grad is None or not torch.isfinite(p.grad).all() or p.grad.abs().sum() == 0]
        assert not no_grad, f"no gradient after one step: {no_grad}"

    def test_mixes_frames_but_not_videos(self, kind):
        """The layout changes are right: frame t sees frame t-1 of the same video only."""
        sig = temporal_sig(kind)
        block = build_block(sig).eval()
        randomize_(block)
        inputs = example_inputs(sig, seed=3)
        x = inputs[0]
        x2 = x.clone()
        x2[0] += torch.randn(x2[0].shape, generator=torch.Generator().manual_seed(4))  # video 0, frame 0
        with torch.no_grad():
            d = (block(x2, *inputs[1:]) - block(*inputs)).abs().reshape(B, T, -1).amax(-1)
        assert d[0, 1] > 1e-4, "frame 1 does not depend on frame 0"
        assert torch.all(d[1] == 0), "video 1 depends on video 0"

    def test_position_table_is_not_persistent(self, kind):
        block = build_block(temporal_sig(kind))
        names = set(block.state_dict())
        assert all("pos_embed" not in n for n in names)
        assert {n for n, _ in block.named_parameters()} == names


def _blocks_of(backbone, task, arch):
    return network_blocks(backbone, task, arch)


SPATIAL_CASES = [(sa, lin) for sa in (True, False) for lin in (False, True)]


@pytest.mark.parametrize("self_attn, linear", SPATIAL_CASES)
def test_every_block_runs_standalone(self_attn, linear, small_task):
    bb = tiny_variant(self_attn, linear)
    arch = mixed_arch(bb, small_task)
    seen = set()
    for b in _blocks_of(bb, small_task, arch):
        module = build_block(b).eval()
        with torch.no_grad():
            out = module(*example_inputs(b))
        assert tuple(out.shape) == output_shape(b), b.path
        seen.add(b.sig.op_name)
    assert {op.value for op in SPATIAL_BLOCKS} <= seen


@pytest.fixture(scope="module")
def tiny_models(tiny, small_task):
    torch.manual_seed(0)
    image = build_image_model(tiny, small_task).eval()
    arch = mixed_arch(tiny, small_task)
    video = build_model(tiny, small_task, arch).eval()
    video.load_spatial_state_dict(image.state_dict())
    return image, video, arch


def _inputs(task, seed=0):
    g = torch.Generator().manual_seed(seed)
    lat = torch.randn(task.batch, task.latent_channels, task.num_frames, task.latent_height,
                      task.latent_width, generator=g)
    ts = torch.tensor([10.0, 700.0][:task.batch])
    text = torch.randn(task.batch, task.text_tokens, task.text_dim, generator=g)
    return lat, ts, text


def test_video_model_equals_image_model_at_init(tiny_models, small_task):
    image, video, _ = tiny_models
    lat, ts, text = _inputs(small_task)
    with torch.no_grad():
        y_img, y_vid = image(lat, ts, text), video(lat, ts, text)
    assert y_vid.shape == lat.shape
    assert torch.equal(y_vid, y_img)


def test_video_model_at_init_is_the_image_model_frame_by_frame(tiny, tiny_models, small_task):
    _, video, _ = tiny_models
    one = small_task.replace(num_frames=1, batch=1)
    frame_model = build_image_model(tiny, one).eval()
    frame_model.load_state_dict(video.spatial_state_dict())
    lat, ts, text = _inputs(small_task, seed=1)
    with torch.no_grad():
        y = video(lat, ts, text)
        for b, t in ((0, 0), (small_task.batch - 1, small_task.num_frames - 1)):
            y_bt = frame_model(lat[b:b + 1, :, t:t + 1], ts[b:b + 1], text[b:b + 1])
            torch.testing.assert_close(y_bt[:, :, 0], y[b:b + 1, :, t], rtol=1e-4, atol=1e-5)


def test_activation_shapes_follow_the_geometry(tiny_models, small_task):
    _, video, arch = tiny_models
    seen: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {}
    hooks = []
    for b in video.blocks:
        def hook(mod, args, out, path=b.path):
            seen[path] = (tuple(tuple(a.shape) for a in args), tuple(out.shape))
        hooks.append(video.get_submodule(b.path).register_forward_hook(hook))
    with torch.no_grad():
        video(*_inputs(small_task))
    for h in hooks:
        h.remove()
    assert list(seen) == [b.path for b in video.blocks]
    for b in video.blocks:
        ins, out = seen[b.path]
        assert ins == tuple(s for _, s in input_specs(b)), b.path
        assert out == output_shape(b), b.path
    assert video.blocks == network_blocks(video.backbone_spec, small_task, arch)


def test_spatial_names_do_not_depend_on_temporal_choices(tiny, small_task, tiny_models):
    image, video, _ = tiny_models
    other = build_model(tiny, small_task, ArchConfig.create(
        tiny.name, small_task, {"down0": choice_for(K.CONV3D), "mid": choice_for(K.ATTN1D, 2)},
        tiny.stage_ids))
    names = lambda m: {n for n, _ in m.named_parameters() if not is_temporal_name(n)}
    assert names(video) == names(other) == {n for n, _ in image.named_parameters()}
    temporal = {n.split(".temporal.")[0] for n, _ in other.named_parameters() if is_temporal_name(n)}
    assert temporal == {"stages.down0", "stages.mid"}
    other.load_spatial_state_dict(image.state_dict())  # strict on the spatial part
    for n, p in image.state_dict().items():
        assert torch.equal(other.state_dict()[n], p)
    bad = dict(image.state_dict())
    bad.pop("conv_in.conv.weight")
    with pytest.raises(Exception, match="conv_in.conv.weight"):
        other.load_spatial_state_dict(bad)


def test_frozen_backbone_trains_only_temporal_layers(tiny, small_task):
    small_task = small_task.replace(batch=1)
    model = build_model(tiny, small_task, mixed_arch(tiny, small_task))
    model.freeze_spatial()
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(is_temporal_name(n) for n in trainable)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    lat, ts, text = _inputs(small_task)
    before = model(lat, ts, text).detach()
    opt.zero_grad()
    model(lat, ts, text).pow(2).mean().backward()
    opt.step()
    assert not torch.equal(model(lat, ts, text).detach(), before)


def test_model_exports_with_static_shapes(tiny, small_task):
    """torch.export (the Core ML route) traces the builder's forward (skip plan, layout changes
    of a cross-attention temporal block) without graph breaks or data-dependent shapes."""
    arch = ArchConfig.create(tiny.name, small_task, {"mid": choice_for(K.XATTN1D)}, tiny.stage_ids)
    model = build_model(tiny, small_task, arch).eval()
    args = _inputs(small_task)
    ep = torch.export.export(model, args)
    with torch.no_grad():
        torch.testing.assert_close(ep.module()(*args), model(*args))


def test_batch_comes_from_the_input(tiny):
    """A network built for batch 1 (every temporal kind, trained-like random weights) runs
    batch 2, and each video's output is the one it gets alone (no mixing across videos)."""
    task1 = VideoTask(latent_channels=4, num_frames=3, latent_height=8, latent_width=8, batch=1,
                      text_tokens=5, text_dim=32)
    model = build_model(tiny, task1, mixed_arch(tiny, task1)).eval()
    randomize_(model, seed=3)
    args2 = _inputs(task1.replace(batch=2))
    with torch.no_grad():
        both = model(*args2)
        one = [model(*(a[i:i + 1] for a in args2)) for i in range(2)]
    assert both.shape == (2, 4, 3, 8, 8)
    torch.testing.assert_close(both, torch.cat(one), rtol=1e-4, atol=1e-5)


def test_sd15_builds_with_public_parameter_layout():
    """Meta-device build (no memory): diffusers-style names of SD-v1.5's UNet."""
    with torch.device("meta"):
        m = build_image_model(get_backbone("sd15"), default_task("sd15"))
    names = {n for n, _ in m.named_parameters()}
    for n in ("time_embed.linear_1.weight", "conv_in.conv.weight",
              "stages.down0.resnets.0.time_emb_proj.weight",
              "stages.down0.transformers.0.transformer_blocks.0.attn2.to_k.weight",
              "stages.up0.resnets.0.conv_shortcut.weight", "stages.down0.resample.conv.weight",
              "stages.mid.transformers.0.transformer_blocks.0.ff.net.0.proj.weight",
              "conv_out.norm.weight"):
        assert n in names, n
    assert sum(p.numel() for p in m.parameters()) == 859_520_964


DIFFUSERS_PARAMS = os.path.join(os.path.dirname(__file__), "data", "diffusers_unet_params.json")


@pytest.mark.parametrize("name", ["sd15", "sd21"])
def test_layout_is_diffusers_name_for_name_and_shape_for_shape(name):
    """Every parameter of diffusers' UNet2DConditionModel (names and shapes recorded from
    diffusers itself, see the fixture's provenance) maps onto exactly one of ours, same shape."""
    with open(DIFFUSERS_PARAMS) as f:
        ref = json.load(f)["models"][name]
    with torch.device("meta"):
        m = build_image_model(get_backbone(name), default_task(name))
    ours = {n: list(p.shape) for n, p in m.named_parameters()}
    mapped = {temponas_name(n): s for n, s in ref["params"].items()}
    assert len(mapped) == len(ref["params"])
    assert mapped == ours
    assert sum(math.prod(s) for s in mapped.values()) == ref["num_params"]


def test_diffusers_state_dict_loads_into_a_video_candidate(tiny, small_task):
    """Round trip through diffusers names: the renamed image weights load strictly."""
    image = build_image_model(tiny, small_task)
    inverse = {}
    for n in image.state_dict():  # build diffusers-style names from ours
        d = (n.replace("conv_in.conv.", "conv_in.").replace("time_embed.", "time_embedding.")
             .replace("conv_out.norm.", "conv_norm_out.").replace("conv_out.conv.", "conv_out."))
        m = re.match(r"stages\.(down|up)(\d+)\.(resnets|transformers|resample)\.(.+)", d)
        if m:
            role, i, kind, rest = m.groups()
            kind = {"resnets": "resnets", "transformers": "attentions",
                    "resample": "downsamplers.0" if role == "down" else "upsamplers.0"}[kind]
            d = f"{role}_blocks.{i}.{kind}.{rest}"
        d = re.sub(r"^stages\.mid\.(resnets|transformers)\.", lambda mm: "mid_block." + (
            "attentions." if mm.group(1) == "transformers" else "resnets."), d)
        inverse[d] = image.state_dict()[n]
    video = build_model(tiny, small_task, mixed_arch(tiny, small_task))
    load_diffusers_unet(video, inverse)
    for n, p in image.state_dict().items():
        assert torch.equal(video.state_dict()[n], p)
    bad = dict(inverse)
    bad["conv_in.weight"] = torch.zeros(1)
    with pytest.raises(ConfigError, match="conv_in.conv.weight: shape"):
        load_diffusers_unet(video, bad)
