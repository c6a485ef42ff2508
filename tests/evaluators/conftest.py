"""Fixtures of the evaluator tests: the tiny backbone, a shared cache, two tiny archs."""

from __future__ import annotations

import pytest
from ev_helpers import make_arch

from search_space.arch import ArchConfig, StageChoice, TemporalKind
from search_space.presets import get_backbone


@pytest.fixture(scope="session")
def tiny():
    return get_backbone("tiny")


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("temponas_cache"))


@pytest.fixture(scope="session")
def temporal_arch(tiny) -> ArchConfig:
    """conv1d after every unit of the down stages, attn1d in mid, conv2p1d in up1."""
    return make_arch(tiny, {
        "down0": StageChoice(TemporalKind.CONV1D, 1, kernel_t=3),
        "down1": StageChoice(TemporalKind.CONV3D, 1, kernel_t=3, kernel_s=3),
        "mid": StageChoice(TemporalKind.ATTN1D, 1, heads=4),
        "up0": StageChoice(TemporalKind.XATTN1D, 1, heads=4),
        "up1": StageChoice(TemporalKind.CONV2P1D, 2, kernel_t=3, kernel_s=3),
    })


@pytest.fixture(scope="session")
def image_arch(tiny) -> ArchConfig:
    return make_arch(tiny, {})
