"""diffusers UNet2DConditionModel folders (made by diffusers' own save_pretrained, tiny, random):
config -> BackboneSpec, strict weight loading, frame-by-frame equivalence with diffusers."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import diffusers
import pytest
import torch
from ss_helpers import mixed_arch
from tiny_hf import save_tiny_unet

from search_space.diffusers_config import backbone_from_config, read_diffusers_unet
from search_space.errors import ConfigError
from search_space.modules import (
    build_image_model,
    build_model,
    check_spatial_weights,
    load_spatial_weights,
)
from search_space.presets import get_backbone
from search_space.task import VideoTask

save_unet = save_tiny_unet  # the lead's scratch check, kept (see tiny_hf.TINY_UNET)


@pytest.fixture(scope="module")
def unet_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("unet")
    return d, save_unet(d)


TASK = VideoTask(latent_channels=4, num_frames=3, latent_height=8, latent_width=8, batch=2,
                 text_tokens=5, text_dim=32)


def _inputs(task, seed=0):
    g = torch.Generator().manual_seed(seed)
    lat = torch.randn(task.batch, 4, task.num_frames, task.latent_height, task.latent_width,
                      generator=g)
    return lat, torch.tensor([15.0, 640.0][:task.batch]), torch.randn(
        task.batch, task.text_tokens, task.text_dim, generator=g)


def test_config_becomes_the_backbone(unet_dir):
    d, _ = unet_dir
    info = read_diffusers_unet(d)
    bb = info.backbone
    assert info.weights == (d / "diffusion_pytorch_model.safetensors",)
    assert read_diffusers_unet(d / "config.json").backbone == bb
    assert bb.name == d.name and bb.latent_channels == 4 and info.sample_size == 8
    assert bb.cross_attention_dim == 32 and bb.norm_groups == 8 and not bb.linear_projection
    got = {s.id: (s.channels, s.resnets, s.transformers, s.heads) for s in bb.stages}
    assert got == {"down0": (32, 1, 1, 8), "down1": (64, 1, 0, 8), "mid": (64, 2, 1, 8),
                   "up0": (64, 2, 0, 8), "up1": (32, 2, 2, 8)}
    assert info.default_task().latent_height == 8


def test_public_sd_configs_match_the_presets():
    """SD-1.5 (attention_head_dim 8 = heads) and SD-2.1 ([5,10,20,20] heads = head dim 64),
    from their public config.json files, are exactly the sd15/sd21 presets."""
    with open(Path(__file__).parent / "data" / "diffusers_unet_params.json") as f:
        models = json.load(f)["models"]
    for name in ("sd15", "sd21"):
        bb = backbone_from_config(models[name]["config"], name)
        ref = get_backbone(name)
        assert bb.stages == ref.stages and bb.cross_attention_dim == ref.cross_attention_dim
        assert bb.linear_projection == ref.linear_projection


def test_image_model_reproduces_diffusers_frame_by_frame(unet_dir):
    d, unet = unet_dir
    bb = read_diffusers_unet(d).backbone
    model = build_image_model(bb, TASK).eval()
    load_spatial_weights(model, read_diffusers_unet(d).weights)
    lat, ts, text = _inputs(TASK)
    with torch.no_grad():
        ours = model(lat, ts, text)
        ref = torch.stack([unet(lat[:, :, f], ts, encoder_hidden_states=text).sample
                           for f in range(TASK.num_frames)], dim=2)
    diff = (ours - ref).abs().max().item()
    assert diff <= 1e-5, diff


def test_every_temporal_kind_keeps_the_output_at_init(unet_dir):
    d, _ = unet_dir
    info = read_diffusers_unet(d)
    image = build_image_model(info.backbone, TASK).eval()
    video = build_model(info.backbone, TASK, mixed_arch(info.backbone, TASK)).eval()
    for m in (image, video):
        load_spatial_weights(m, info.weights)
    args = _inputs(TASK, seed=1)
    with torch.no_grad():
        assert torch.equal(image(*args), video(*args))


def test_weights_that_do_not_fit_name_the_file_and_key(unet_dir, tmp_path):
    d, _ = unet_dir
    other = tmp_path / "wide"
    save_unet(other, block_out_channels=(32, 128))
    files = read_diffusers_unet(other).weights
    bb = read_diffusers_unet(d).backbone
    with pytest.raises(ConfigError) as e:
        check_spatial_weights(bb, files)
    msg = str(e.value)
    assert msg.startswith(f"{files[0]}: ") and "shape" in msg and "\n" not in msg
    deeper = tmp_path / "deeper"
    save_unet(deeper, layers_per_block=2)
    with pytest.raises(ConfigError, match=r"deeper/diffusion_pytorch_model\.safetensors: unexpected key 'down_blocks\.0\."):
        check_spatial_weights(bb, read_diffusers_unet(deeper).weights)
    from safetensors.torch import load_file, save_file

    state = load_file(str(read_diffusers_unet(d).weights[0]))
    del state["mid_block.attentions.0.proj_in.bias"]
    save_file(state, str(tmp_path / "partial.safetensors"))
    with pytest.raises(ConfigError, match=r"partial.safetensors: missing key "
                                          r"'mid_block.attentions.0.proj_in.bias'.*\(1 missing, 0"):
        check_spatial_weights(bb, [tmp_path / "partial.safetensors"])


def _edited(src, tmp_path, **changes):
    d = tmp_path / "edited"
    d.mkdir(exist_ok=True)
    cfg = json.loads((src / "config.json").read_text())
    cfg.update(changes)
    (d / "config.json").write_text(json.dumps(cfg))
    return d


@pytest.mark.parametrize("key,value", [
    ("addition_embed_type", "text_time"), ("class_embed_type", "timestep"),
    ("time_cond_proj_dim", 32), ("encoder_hid_dim", 64), ("dual_cross_attention", True),
    ("only_cross_attention", True), ("mid_block_only_cross_attention", True),
    ("resnet_time_scale_shift", "scale_shift"), ("conv_in_kernel", 1), ("act_fn", "gelu"),
    ("norm_eps", 1e-6), ("downsample_padding", 0), ("attention_type", "gated"),
    ("reverse_transformer_layers_per_block", [[1], [1]]), ("time_embedding_type", "fourier"),
    ("flip_sin_to_cos", False), ("num_attention_heads", 4), ("dropout", 0.1),
    ("mid_block_type", "UNetMidBlock2DSimpleCrossAttn"), ("out_channels", 8),
    ("down_block_types", ["AttnDownBlock2D", "DownBlock2D"]), ("cross_attention_dim", [32, 64]),
    ("brand_new_key", 1)])
def test_what_temponas_cannot_represent_is_one_line_naming_the_key(unet_dir, tmp_path, key, value):
    d, _ = unet_dir
    with pytest.raises(ConfigError) as e:
        read_diffusers_unet(_edited(d, tmp_path, **{key: value}))
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(str(tmp_path / "edited" / "config.json"))
    assert key in msg


def test_what_diffusers_writes_for_sdxl_like_conditioning_is_refused(tmp_path):
    """A real folder diffusers writes with extra conditioning (time_cond_proj_dim, as LCM)."""
    save_unet(tmp_path / "lcm", time_cond_proj_dim=16)
    with pytest.raises(ConfigError, match="time_cond_proj_dim: 16 is not supported"):
        read_diffusers_unet(tmp_path / "lcm")


def test_a_config_that_is_not_a_unet_names_the_file(tmp_path):
    vae = diffusers.AutoencoderKL(block_out_channels=(8,), norm_num_groups=8, latent_channels=4,
                                  sample_size=16)
    vae.save_pretrained(tmp_path / "vae")
    with pytest.raises(ConfigError, match=r"vae/config.json: not a diffusers UNet2DConditionModel "
                                          r"config \(_class_name: 'AutoencoderKL'\)"):
        read_diffusers_unet(tmp_path / "vae")
    with pytest.raises(ConfigError, match="no config.json in this folder"):
        read_diffusers_unet(tmp_path)
    shutil.rmtree(tmp_path / "vae")
