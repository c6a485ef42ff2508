"""Bundled video data: deterministic, split by source, previewable; the proxy scale."""

from __future__ import annotations

import numpy as np
import pytest

from evaluators import data as D
from evaluators.scale import ProxyScale
from search_space.errors import ConfigError
from search_space.geometry import network_blocks
from search_space.presets import default_task, get_backbone
from search_space.space import default_space

GEOM = D.VideoGeometry(latent_channels=4, num_frames=3, latent_height=4, latent_width=4,
                       text_tokens=4, text_dim=16, patch=4)


def test_deterministic_for_a_seed_and_seed_matters():
    a = D.render_videos("train", 6, GEOM, seed=3)
    b = D.render_videos("train", 6, GEOM, seed=3)
    c = D.render_videos("train", 6, GEOM, seed=4)
    assert np.array_equal(a[0], b[0]) and a[2] == b[2] and np.array_equal(a[3], b[3])
    assert not np.array_equal(a[0], c[0])


def test_split_by_source():
    train, val = set(D.split_sources("train")), set(D.split_sources("val"))
    assert train and val and not train & val
    assert {D.SOURCES[s][0] for s in val} == {"photo", "terrain", "digits"}
    tr, va, _ = D.load_splits(GEOM, 10, 6, 0)
    assert set(tr.sources) <= train and set(va.sources) <= val
    assert set(tr.sources) == train  # every training source is used


def test_videos_move_and_latents_have_the_task_shape():
    tr, va, std = D.load_splits(GEOM, 10, 6, 0)
    assert tr.latents.shape == (10, 4, 3, 4, 4) and va.latents.shape == (6, 4, 3, 4, 4)
    assert tr.text.shape == (10, 4, 16)
    # frames differ (camera/digit motion) but are correlated (the same scene)
    x = tr.latents
    assert (x[:, :, 1:] - x[:, :, :-1]).abs().mean() > 0
    assert abs(float(tr.latents.std()) - 1.0) < 0.2  # normalized by train channel std
    assert std.shape == (4,)


def test_encoding_is_orthonormal_and_decodes():
    E = D.encoding_matrix(6, 4)
    assert np.allclose(E @ E.T, np.eye(6), atol=1e-5)
    with pytest.raises(ConfigError, match="data.patch"):
        D.encoding_matrix(16, 2)
    tr, _, std = D.load_splits(GEOM, 4, 2, 0)
    rec = D.decode(tr.latents, std, GEOM.patch)
    assert rec.shape == (4, 3, 16, 16, 3)
    # the luma-mean channel is exact: patch means of the decoded frames match the originals
    orig = tr.pixels.astype(np.float32) / 255
    m = lambda v: v.reshape(4, 3, 4, 4, 4, 4, 3).mean(axis=(3, 5, 6))
    assert np.abs(m(rec) - m(orig)).max() < 0.05


def test_preview_png_and_gif(tmp_path):
    from PIL import Image
    tr, _, std = D.load_splits(GEOM, 4, 2, 0)
    png = D.save_preview(tr, str(tmp_path / "strip.png"), max_videos=3)
    gif = D.save_preview(tr, str(tmp_path / "anim.gif"), max_videos=3, decoded=True, channel_std=std)
    with Image.open(png) as im:
        assert im.size == (3 * 16, 3 * 16)
    with Image.open(gif) as im:
        assert im.n_frames == 3


def test_scale_keeps_topology_and_temporal_choices():
    full = get_backbone("snapgen_v")
    space = default_space(full, default_task("snapgen_v"))
    scale = ProxyScale()
    rng = np.random.default_rng(0)
    for _ in range(5):
        arch = space.sample(rng)
        bb, sa = scale.arch(full, arch)
        assert bb.stage_ids == full.stage_ids
        for s, t in zip(full.stages, bb.stages):
            assert (s.resnets, s.transformers, s.transformer_depth) == (t.resnets, t.transformers,
                                                                       t.transformer_depth)
            assert t.channels <= s.channels
        for (sid, c), (sid2, c2) in zip(arch.stages, sa.stages):
            assert sid == sid2 and (c.kind, c.count, c.kernel_t, c.kernel_s) == (
                c2.kind, c2.count, c2.kernel_t, c2.kernel_s)
        full_ops = [(b.op, b.sig.kind, b.stage, b.path) for b in network_blocks(full, arch.task, arch)]
        small_ops = [(b.op, b.sig.kind, b.stage, b.path) for b in network_blocks(bb, sa.task, sa)]
        assert full_ops == small_ops
        assert sa.task.num_frames == scale.num_frames and sa.task.text_dim == bb.cross_attention_dim


def test_scale_rejects_bad_values():
    with pytest.raises(ConfigError, match="scale.width_mult"):
        ProxyScale(width_mult=0)
    full = get_backbone("snapgen_v")
    arch = default_space(full, default_task("snapgen_v")).sample(np.random.default_rng(0))
    with pytest.raises(ConfigError, match="scale.latent_height"):
        ProxyScale(latent_height=10).arch(full, arch)


def test_bundled_videos_as_an_evaluator_configuration_sees_them():
    from evaluators import bundled_videos

    opts = {"scale": {"num_frames": 3, "latent_height": 4, "latent_width": 4, "text_tokens": 4},
            "data": {"num_train": 2, "num_val": 2, "patch": 4}, "steps": 5}  # steps: not a data key
    train, val, std, geom = bundled_videos(get_backbone("tiny"), opts, latent_channels=4, min_videos=3)
    assert (geom.num_frames, geom.latent_height, geom.patch) == (3, 4, 4)
    assert len(train) == len(val) == 3  # min_videos raises num_train/num_val
    assert tuple(train.latents.shape[1:]) == (4, 3, 4, 4) and std.shape == (4,)
    with pytest.raises(ConfigError, match=r"cfg\.data\.num_train"):
        bundled_videos(get_backbone("tiny"), {"data": {"num_train": "x"}}, where="cfg")
