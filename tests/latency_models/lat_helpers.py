"""Synthetic measurements for testing the FITTING code (not measurements: the numbers come
from a known roofline plus log-normal noise, so the tests know the truth)."""

from __future__ import annotations

import numpy as np

from latency_models._roofline import RooflineModel
from latency_models.measurements import BlockRow, DeviceInfo, Measurements, NetworkRow
from latency_models.probes import probes, random_archs
from search_space.presets import default_task, get_backbone
from search_space.space import default_space

TRUE_CONSTANTS = {"conv_ms_per_gflop": 9.0, "conv3d_ms_per_gflop": 12.0, "linear_ms_per_gflop": 6.0,
                  "attn_ms_per_gflop": 14.0, "conv_ms_per_mact": 0.8, "conv3d_ms_per_mact": 0.8,
                  "linear_ms_per_mact": 0.8, "attn_ms_per_mact": 1.5, "eltwise_ms_per_mact": 0.8,
                  "norm_ms_per_mact": 2.5, "layout_ms_per_mact": 1.2,
                  "ms_per_mweight": 0.5, "ms_per_op": 0.004, "ms_per_block": 0.03}
NET_ALPHA, NET_BETA, NET_GAMMA = 1.1, 0.4, 0.08  # ms per temporal block inside a network


def truth(constants=None) -> RooflineModel:
    m = RooflineModel(p=1.0)
    m.set_constants(constants or TRUE_CONSTANTS)
    return m


def true_network_ms(t: RooflineModel, arch, backbone) -> float:
    return NET_ALPHA * t.raw_ms(arch, backbone) + NET_BETA + NET_GAMMA * arch.num_temporal_blocks


def tiny_space():
    bb = get_backbone("tiny")
    return default_space(bb, default_task("tiny"))


def synthetic(noise: float = 0.03, n_networks: int = 16, seed: int = 0, repeats: int = 2,
              constants=None, device: str = "synthetic-device") -> Measurements:
    rng = np.random.default_rng(seed)
    space = tiny_space()
    t = truth(constants)
    sigs = [p.sig for p in probes(space)]
    ms = t.block_ms(sigs)
    blocks = [BlockRow(s, float(v * np.exp(rng.normal(0, noise))), runs=10, repeat=r)
              for r in range(repeats) for s, v in zip(sigs, ms)]
    nets = []
    for a in random_archs(space, n_networks, seed):
        v = true_network_ms(t, a, space.backbone)
        nets += [NetworkRow(a, space.backbone, float(v * np.exp(rng.normal(0, noise))), runs=5, repeat=r)
                 for r in range(repeats)]
    info = DeviceInfo(device=device, backend="synthetic", compute_units="none", precision="fp32")
    return Measurements(info, blocks, nets, source="synthetic")
