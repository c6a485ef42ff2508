"""MIL features of converted Core ML programs: operator classes, FLOPs, weights, compression
bits, and the analytic block features of ``latency_models.features`` checked against them."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
import torch
from torch import nn

from latency_models.ane import mil
from latency_models.ane.recipes import compress
from latency_models.backends import convert_module
from latency_models.features import COMPUTE_CLASSES, OpClass, op_table
from latency_models.probes import probes
from search_space.arch import TemporalKind
from search_space.backbone import unet
from search_space.geometry import image_blocks
from search_space.modules import build_block, build_image_model, example_inputs, input_specs
from search_space.presets import default_task, get_backbone
from search_space.space import default_space
from search_space.task import VideoTask

pytestmark = pytest.mark.coreml


def _ops(module, example, specs=None, target="iOS17"):
    return mil.program_ops(convert_module(module, example, input_names=[n for n, _ in specs], target=target)._mil_program)


class _Tiny(nn.Module):
    """conv 3x3 -> depthwise 3x3 -> 1x1 conv -> tokens -> LayerNorm -> attention -> linear."""

    def __init__(self):
        super().__init__()
        self.c3 = nn.Conv2d(4, 8, 3, padding=1)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.pw = nn.Conv2d(8, 16, 1)
        self.ln = nn.LayerNorm(16)
        self.q = nn.Linear(16, 16)

    def forward(self, x):
        x = self.pw(torch.relu(self.dw(self.c3(x))))
        t = self.ln(x.flatten(2).transpose(1, 2))             # (1, 64, 16)
        a = torch.softmax(self.q(t) @ t.transpose(1, 2), -1)  # (1, 64, 64)
        return a @ t


def test_operator_classes_and_flops_of_a_small_network():
    ops = _ops(_Tiny().eval(), (torch.rand(1, 4, 8, 8),), [("x", (1, 4, 8, 8))])
    by = Counter((o.op_type, OpClass(o.cls).name) for o in ops)
    assert by[("conv", "CONV")] == 2 and by[("conv", "LINEAR")] == 1       # 3x3 + depthwise; 1x1
    assert by[("linear", "LINEAR")] == 1 and by[("matmul", "ATTN")] == 2    # q; two activation matmuls
    assert by[("softmax", "ATTN")] == 1 and by[("layer_norm", "NORM")] == 1
    assert by[("transpose", "LAYOUT")] >= 1 and by[("relu", "ELTWISE")] == 1
    convs = sorted((o for o in ops if o.op_type == "conv"), key=lambda o: o.flops)
    assert [c.flops for c in convs] == [2 * 64 * 8 * 9, 2 * 64 * 16 * 8, 2 * 64 * 8 * 4 * 9]
    assert [c.weights for c in convs] == [8 * 9 + 8, 8 * 16 + 16, 8 * 4 * 9 + 8]
    mm = [o for o in ops if o.op_type == "matmul"]
    assert sorted(o.flops for o in mm) == [2 * 64 * 64 * 16] * 2 and all(o.weights == 0 for o in mm)
    assert all(o.weight_bits in (0, 16) for o in ops)


def test_weight_compression_bits_are_read_from_the_program():
    m = nn.Sequential(nn.Conv2d(64, 64, 3), nn.ReLU(), nn.Conv2d(64, 64, 3)).eval()
    ml = convert_module(m, (torch.rand(1, 64, 12, 12),), input_names=["x"], target="iOS17")
    for prec, bits in (("fp16", 16), ("lut6", 6), ("lut2", 2), ("w8a16", 8)):
        ops = mil.program_ops(compress(ml, prec)._mil_program)
        conv = [o for o in ops if o.op_type == "conv"]
        assert len(conv) == 2 and all(o.weight_bits == bits for o in conv), prec
        assert all(o.weights == 64 * 64 * 9 + 64 for o in conv)


def _tiny_space():
    return default_space(get_backbone("tiny"), default_task("tiny"))


@pytest.mark.parametrize("kind", [TemporalKind.CONV3D, TemporalKind.CONV2P1D, TemporalKind.ATTN1D,
                                  TemporalKind.XATTN3D, None])
def test_analytic_block_features_agree_with_the_converted_program(kind):
    """Compute per class and weights agree exactly up to biases/norm scales; the converted
    program moves more activations (GroupNorm lowering, layout copies) but within 2.5x."""
    ps = [p for p in probes(_tiny_space()) if (p.sig.kind is kind if kind else p.op_name == "resnet")]
    sig = ps[0].sig
    ops = _ops(build_block(sig), example_inputs(sig), input_specs(sig))
    got, want = mil.totals(ops), op_table(sig).totals()
    for c in ("conv", "conv3d", "linear", "attn"):
        assert got[f"{c}_gflop"] == pytest.approx(want[f"{c}_gflop"], rel=1e-9, abs=1e-12), c
    assert got["weight_melem"] == pytest.approx(want["weight_melem"], rel=0.01)
    assert 1.0 <= got["act_melem"] / want["act_melem"] <= 2.5
    assert got["n_ops"] >= want["n_ops"]


def test_unet_converted_per_block_matches_the_whole_network():
    """The SD-2.1 features are summed over unique blocks: exact for compute and weights, as a
    one-level UNet converted in one piece shows (the network adds only glue: concats)."""
    bb = unet("micro", (16,), down_resnets=(1,), up_resnets=(2,), down_transformers=(1,),
              up_transformers=(1,), mid_resnets=1, mid_transformers=0, heads=(2,),
              cross_attention_dim=8, norm_groups=8)
    task = VideoTask(latent_channels=4, num_frames=1, latent_height=8, latent_width=8, batch=2,
                     text_tokens=4, text_dim=8)
    net = build_image_model(bb, task)
    specs = (("latents", (2, 4, 1, 8, 8)), ("timesteps", (2,)), ("text", (2, 4, 8)))
    g = torch.Generator().manual_seed(0)
    ex = tuple(torch.rand(s, generator=g) for _, s in specs)
    whole = mil.totals(_ops(net, ex, specs))
    per_block: Counter = Counter()
    for sig, n in Counter(b.sig for b in image_blocks(bb, task)).items():
        per_block.update(mil.aggregate(_ops(build_block(sig), example_inputs(sig), input_specs(sig)), n))
    parts = mil.totals(per_block)
    for k in ("conv_gflop", "linear_gflop", "attn_gflop", "weight_melem"):
        assert parts[k] == pytest.approx(whole[k], rel=0.002), k
    assert math.isclose(parts["conv3d_gflop"], whole["conv3d_gflop"])


def test_extraction_writes_tables_the_fit_reads(tmp_path):
    """A temponas block through the extraction path: per-precision programs, hashes, tables."""
    from latency_models.ane.extract import (
        _cache_doc,
        extract_probe,
        ops_hash,
        probe_program,
        write_tables,
    )
    from latency_models.ane.fitset import load_programs
    from latency_models.ane.recipes import load_recipes

    sig = max((p.sig for p in probes(_tiny_space()) if p.sig.kind is TemporalKind.ATTN1D),
              key=lambda s: s.in_channels)
    res = extract_probe(sig, {"fp16", "lut6"})
    rec = load_recipes()["temponas_probes"]
    docs = [_cache_doc(rec, p, r, "test", probe_program(sig), sig.to_dict()) for p, r in res.items()]
    write_tables(docs, tmp_path)
    progs = load_programs(tmp_path)
    assert set(progs) == {f"{probe_program(sig)}@fp16", f"{probe_program(sig)}@lut6"}
    for p, r in res.items():
        prog = progs[f"{probe_program(sig)}@{p}"]
        assert prog.meta["ops_sha256"] == ops_hash(r["ops"])
        compute = np.isin(prog.cls, [int(c) for c in COMPUTE_CLASSES])
        got = float((prog.flops * prog.count)[compute].sum()) / 1e9
        assert got == pytest.approx(sum(op_table(sig).totals()[f"{c}_gflop"]
                                        for c in ("conv", "conv3d", "linear", "attn")))
        big = prog.weights > 2048  # coremltools compresses weights above its default threshold
        assert big.any() and set(prog.weight_bits[big]) == ({16} if p == "fp16" else {6})
