"""Evaluators on a backbone's own weights (a tiny random diffusers UNet made with
save_pretrained): strict, frozen, real width, content hash in the key; kept weights rebuild the
evaluated network exactly."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from tiny_hf import save_tiny_unet

from evaluators import create_evaluator, evaluated_model, read_kept_weights, validation_loss
from search_space.arch import ArchConfig, StageChoice, TemporalKind
from search_space.diffusers_config import read_diffusers_unet
from search_space.errors import ConfigError
from search_space.modules import build_image_model, read_spatial_weights

K = TemporalKind
UNET_DIR: list = []


@pytest.fixture(scope="module")
def unet(tmp_path_factory):
    d = tmp_path_factory.mktemp("unet") / "tiny_unet"
    save_tiny_unet(d)
    UNET_DIR[:] = [d]
    return d, read_diffusers_unet(d).backbone


def options(weights, cache_dir, **kw):
    return {"spatial": "backbone", "weights": str(weights), "cache_dir": cache_dir,
            "scale": {"num_frames": 3, "latent_height": 8, "latent_width": 8, "text_tokens": 4},
            "data": {"num_train": 8, "num_val": 4, "patch": 2}, "batch": 2,
            "default_budget": 3, "val_timesteps": 1, **kw}


def _arch(bb):
    task = read_diffusers_unet(UNET_DIR[0]).default_task()
    return ArchConfig.create(bb.name, task, {"down0": StageChoice(K.ATTN1D, 1, heads=4),
                                             "up1": StageChoice(K.CONV1D, 1, kernel_t=3)},
                             bb.stage_ids)


def test_short_train_runs_the_backbone_weights_frozen_at_real_width(unet, tmp_path):
    d, bb = unet
    cache = str(tmp_path / "cache")
    ev = create_evaluator("short_train", bb, options(d, cache, keep_weights=True))
    assert ev.options.scale.width_mult == 1.0  # unset -> the real width
    arch = _arch(bb)
    r = ev.evaluate(arch, seed=1, budget=3)
    assert not (tmp_path / "cache" / "pretrained").exists()  # nothing pretrained
    path = tmp_path / "kept.safetensors"
    path.write_bytes(r.weights)
    model, meta = evaluated_model(str(path))
    assert meta["arch_id"] == arch.arch_id and meta["budget"] == 3 and meta["seed"] == 1
    # the evaluation's validation loss, bit for bit, from the rebuilt network
    assert validation_loss(model, bb, meta["options"]) == r.extras["val_loss"] == meta["val_loss"]
    # spatial = the file's tensors, untouched by training; temporal trained (no longer zero)
    ref = read_spatial_weights(read_diffusers_unet(d).weights)
    sd = model.state_dict()
    assert all(torch.equal(sd[k], v) for k, v in ref.items())
    tensors, _ = read_kept_weights(str(path))
    assert any(v.abs().sum() > 0 for k, v in tensors.items() if "proj_out" in k or "conv." in k)
    # the trained temporal layers change the image model's output; batch 1 and 2 both run
    image = build_image_model(bb, model.task).eval()
    image.load_spatial_state_dict(ref)
    g = torch.Generator().manual_seed(0)
    t = model.task
    lat = torch.randn(2, 4, t.num_frames, t.latent_height, t.latent_width, generator=g)
    ts, text = torch.tensor([100.0, 800.0]), torch.randn(2, t.text_tokens, t.text_dim, generator=g)
    with torch.no_grad():
        out2 = model(lat, ts, text)
        assert (out2 - image(lat, ts, text)).abs().max() > 1e-4
        torch.testing.assert_close(model(lat[:1], ts[:1], text[:1]), out2[:1], rtol=1e-4, atol=1e-5)
    # a cache hit brings the weights back
    again = ev.evaluate(arch, seed=1, budget=3)
    assert again.extras.get("cache_hit") == 1.0 and again.weights == r.weights


def test_weights_content_is_in_the_key_not_their_path(unet, tmp_path):
    d, bb = unet
    cache = str(tmp_path / "cache")
    key = create_evaluator("short_train", bb, options(d, cache)).config_key
    moved = tmp_path / "moved"
    shutil.copytree(d, moved)
    assert create_evaluator("short_train", bb, options(moved, cache)).config_key == key
    other = tmp_path / "other"
    save_tiny_unet(other, seed=1)
    assert create_evaluator("short_train", bb, options(other, cache)).config_key != key
    # the hash was stored once, keyed by (path, size, mtime)
    record = json.loads((tmp_path / "cache" / "file_hashes.json").read_text())
    st = next(iter(record.values()))
    assert len(st) == 3 and len(st[2]) == 64


@pytest.mark.parametrize("change, fragment", [
    ({"scale": {"width_mult": 0.5}}, "scale.width_mult: 0.5 cannot hold the backbone's weights"),
    ({"weights": ""}, "spatial: backbone needs the backbone's weights"),
    ({"weights": "/nonexistent/unet"}, "weights: /nonexistent/unet: no such file or folder"),
])
def test_bad_weight_options_are_one_line(unet, tmp_path, change, fragment):
    d, bb = unet
    with pytest.raises(ConfigError) as e:
        create_evaluator("short_train", bb, {**options(d, str(tmp_path)), **change})
    assert fragment in str(e.value) and "\n" not in str(e.value)


def test_weights_that_do_not_fit_fail_when_the_evaluator_is_made(unet, tmp_path):
    d, bb = unet
    wide = tmp_path / "wide"
    save_tiny_unet(wide, block_out_channels=(32, 128))
    with pytest.raises(ConfigError, match=r"wide/diffusion_pytorch_model.safetensors: .*does not "
                                          r"fit backbone 'tiny_unet'"):
        create_evaluator("short_train", bb, options(wide, str(tmp_path)))


def test_supernet_trains_on_the_backbone_weights_and_keys_their_content(unet, tmp_path):
    d, bb = unet
    cache = str(tmp_path / "cache")

    def opts(w):
        o = {k: v for k, v in options(w, cache).items() if k != "default_budget"}
        return {**o, "train": {"steps": 2}, "space": {"defaults": {"kinds": ["none", "conv1d", "attn1d"]}}}

    ev = create_evaluator("supernet", bb, opts(d))
    moved = tmp_path / "moved"
    shutil.copytree(d, moved)
    assert create_evaluator("supernet", bb, opts(moved)).training_key(4) == ev.training_key(4)
    other = tmp_path / "other"
    save_tiny_unet(other, seed=1)
    assert create_evaluator("supernet", bb, opts(other)).training_key(4) != ev.training_key(4)
    arch = _arch(bb)
    r = ev.evaluate(arch, seed=0)
    assert r.value == r.value and not (tmp_path / "cache" / "pretrained").exists()
    ref = read_spatial_weights(read_diffusers_unet(d).weights)
    sd = ev.subnet(arch).state_dict()  # the file's spatial tensors, frozen
    assert all(torch.equal(sd[k], v) for k, v in ref.items())
