"""Fixtures for search_space tests: the tiny preset and small tasks."""

from __future__ import annotations

import pytest

from search_space.backbone import BackboneSpec
from search_space.presets import default_task, get_backbone
from search_space.task import VideoTask


@pytest.fixture(scope="session")
def tiny() -> BackboneSpec:
    return get_backbone("tiny")


@pytest.fixture(scope="session")
def tiny_task() -> VideoTask:
    return default_task("tiny")


@pytest.fixture(scope="session")
def small_task() -> VideoTask:
    """Smaller than the tiny preset's task: 3 frames of 8x8, batch 2 (B and T both > 1)."""
    return VideoTask(latent_channels=4, num_frames=3, latent_height=8, latent_width=8, batch=2,
                     text_tokens=5, text_dim=32)
