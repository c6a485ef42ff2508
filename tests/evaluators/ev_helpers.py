"""Helpers of the evaluator tests (a uniquely named module: conftest names clash)."""

from __future__ import annotations

from search_space.arch import ArchConfig, StageChoice
from search_space.presets import default_task

#: proxy scale and data small enough for a busy 2-core machine (seconds per test)
TINY_TORCH = {
    "scale": {"width_mult": 1.0, "num_frames": 3, "latent_height": 8, "latent_width": 8,
              "text_tokens": 4},
    "data": {"num_train": 12, "num_val": 4, "patch": 2},
    "pretrain": {"steps": 12, "batch": 2, "lr": 3e-3},
    "batch": 2,
}
TINY_EXTRA = {"short_train": {"default_budget": 3, "val_timesteps": 1},
              "supernet": {"train": {"steps": 3, "checkpoint_every": 100}, "val_timesteps": 1}}


def tiny_options(name: str, cache_dir: str) -> dict:
    """Options that make a built-in evaluator run at test size (``{}`` for analytic ones)."""
    from evaluators._torch_setup import TorchOptions
    from evaluators.registry import BUILTIN, resolve

    if name not in BUILTIN:
        return {}
    cls = resolve(name)
    if not issubclass(cls.Options, TorchOptions):
        return {}
    return {**TINY_TORCH, **TINY_EXTRA.get(name, {}), "cache_dir": cache_dir}


def make_arch(backbone, choices: dict[str, StageChoice]) -> ArchConfig:
    return ArchConfig.create(backbone.name, default_task(backbone.name), choices, backbone.stage_ids)
