"""Geometry invariants, skip routing, import hygiene, canonical-JSON properties."""

from __future__ import annotations

import itertools
import subprocess
import sys

from hypothesis import given, settings
from hypothesis import strategies as st
from ss_helpers import mixed_arch

from search_space.arch import ArchConfig, StageChoice, TemporalKind
from search_space.geometry import BlockOp, image_blocks, network_blocks, skip_routes
from search_space.presets import default_task, get_backbone, preset_names


def test_torch_free_modules_do_not_import_torch():
    code = ("import sys; import search_space, search_space.arch, search_space.geometry, "
            "search_space.space, search_space.flops, search_space.presets; "
            "assert 'torch' not in sys.modules, 'torch imported'; "
            "missing = [n for n in search_space.__all__ if not hasattr(search_space, n)]; "
            "assert not missing, missing")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_every_skip_is_consumed_in_sd_layouts():
    for name in ("sd15", "sd21"):
        blocks = image_blocks(get_backbone(name), default_task(name))
        routes = skip_routes(blocks)
        saved = sum(r.saves for r in routes)
        taken = sorted(r.takes for r in routes if r.takes >= 0)
        assert taken == list(range(saved))  # diffusers: 12 skips, 12 up ResNets, all consumed
        assert not any(r.drops for r in routes)


def test_skip_routes_match_channels_and_resolutions():
    for name in preset_names():
        bb, task = get_backbone(name), default_task(name)
        blocks = image_blocks(bb, task)
        outs = [b for b, r in zip(blocks, skip_routes(blocks)) if r.saves]
        for b, r in zip(blocks, skip_routes(blocks)):
            if r.takes >= 0:
                src = outs[r.takes]
                assert (src.sig.out_channels, src.sig.out_height) == (b.sig.skip_channels, b.sig.height)


def test_shapes_chain_block_to_block(tiny, tiny_task):
    blocks = [b for b in network_blocks(tiny, tiny_task, mixed_arch(tiny, tiny_task))
              if b.op is not BlockOp.TIME_EMBED]
    for prev, nxt in itertools.pairwise(blocks):
        assert (prev.sig.out_channels, prev.sig.out_height, prev.sig.out_width) == \
            (nxt.sig.in_channels, nxt.sig.height, nxt.sig.width), nxt.path
    assert blocks[-1].sig.out_shape == (tiny_task.batch, tiny_task.latent_channels,
                                        tiny_task.num_frames, tiny_task.latent_height,
                                        tiny_task.latent_width)


def test_temporal_blocks_follow_their_units(tiny, tiny_task):
    arch = mixed_arch(tiny, tiny_task)
    blocks = network_blocks(tiny, tiny_task, arch)
    for sid, c in arch:
        temporal = [b for b in blocks if b.stage == sid and b.op is BlockOp.TEMPORAL]
        assert [b.unit for b in temporal] == list(range(c.count))
        assert all(b.sig.kind is c.kind for b in temporal)
    assert sum(b.op is BlockOp.TEMPORAL for b in blocks) == arch.num_temporal_blocks


kinds = st.sampled_from(list(TemporalKind))
small = st.integers(min_value=0, max_value=9)


@settings(max_examples=200, deadline=None)
@given(kind=kinds, count=small, heads=small, kt=small, ks=small)
def test_choice_round_trip_and_canonical_form(kind, count, heads, kt, ks):
    c = StageChoice(kind, count, heads, kt, ks)
    assert StageChoice.from_dict(c.to_dict(), "c") == c
    assert StageChoice(c.kind, c.count, c.heads, c.kernel_t, c.kernel_s) == c  # idempotent
    if c.kind is TemporalKind.NONE:
        assert (c.count, c.heads, c.kernel_t, c.kernel_s) == (0, 0, 0, 0)


@settings(max_examples=50, deadline=None)
@given(data=st.data())
def test_arch_json_round_trip_property(data, tiny, tiny_task):
    choices = {sid: StageChoice(data.draw(kinds), data.draw(small), data.draw(small),
                                data.draw(small), data.draw(small)) for sid in tiny.stage_ids}
    arch = ArchConfig.create("tiny", tiny_task, choices, tiny.stage_ids)
    again = ArchConfig.from_json(arch.to_json())
    assert again == arch and again.arch_id == arch.arch_id
