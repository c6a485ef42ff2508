"""What every torch-based evaluator shares: options, the scaled candidate, the bundled data,
the DDPM noise schedule and the epsilon-prediction denoising loss.

Noise schedule: Stable Diffusion's ``scaled_linear`` betas (``sqrt(beta)`` linear from
``sqrt(0.00085)`` to ``sqrt(0.012)``, 1000 steps); the model predicts the added noise
``eps`` from ``x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps``; loss = MSE(eps_hat, eps).
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from evaluators._common import BaseOptions
from evaluators.data import VideoGeometry, VideoSet, load_splits
from evaluators.options import parse_options
from evaluators.scale import ProxyScale
from search_space.arch import ArchConfig
from search_space.backbone import BackboneSpec
from search_space.errors import ConfigError

NUM_TRAIN_TIMESTEPS = 1000


@dataclass(frozen=True)
class DataOptions:
    """The bundled video set: how many videos per split, its seed, pixels per latent."""

    num_train: int = 96
    num_val: int = 32
    seed: int = 0
    patch: int = 8

    def __post_init__(self) -> None:
        for k in ("num_train", "num_val", "patch"):
            if getattr(self, k) < 1:
                raise ConfigError(f"data.{k}: must be >= 1, got {getattr(self, k)}")


@dataclass(frozen=True)
class PretrainOptions:
    """Image-denoiser pretraining of the scaled spatial backbone (once, cached on disk)."""

    steps: int = 400
    lr: float = 2e-3
    batch: int = 2

    def __post_init__(self) -> None:
        if self.steps < 0 or self.batch < 1 or self.lr <= 0:
            raise ConfigError("pretrain: steps >= 0, batch >= 1 and lr > 0 required")


@dataclass(frozen=True)
class TorchOptions(BaseOptions):
    """Options of every evaluator that runs the scaled network.

    ``batch``: videos per forward pass; ``threads``: torch CPU threads during an evaluation;
    ``spatial``: ``pretrained`` loads the cached image denoiser into the spatial blocks,
    ``random`` keeps the seeded random init; ``cache_dir``: '' = ``$TEMPONAS_CACHE`` or
    ``~/.cache/temponas``. ``threads`` and ``cache_dir`` do not change scores (not in the key).
    """

    scale: ProxyScale = field(default_factory=ProxyScale)
    data: DataOptions = field(default_factory=DataOptions)
    pretrain: PretrainOptions = field(default_factory=PretrainOptions)
    batch: int = 2
    threads: int = 1
    spatial: Literal["pretrained", "random"] = "pretrained"
    cache_dir: str = ""

    def __post_init__(self) -> None:
        if self.batch < 1:
            raise ConfigError(f"batch: must be >= 1, got {self.batch}")
        if self.threads < 1:
            raise ConfigError(f"threads: must be >= 1, got {self.threads}")


def cache_root(opts: TorchOptions) -> str:
    root = opts.cache_dir or os.environ.get("TEMPONAS_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "temponas")
    os.makedirs(root, exist_ok=True)
    return root


@contextlib.contextmanager
def torch_session(seed: int, threads: int) -> Iterator[None]:
    """Seeded, deterministic, ``threads``-thread torch for one evaluation (restored after)."""
    old_threads = torch.get_num_threads()
    old_det = torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.manual_seed(seed)
    try:
        yield
    finally:
        torch.set_num_threads(old_threads)
        torch.use_deterministic_algorithms(old_det)


@dataclass(frozen=True)
class Scaled:
    """The scaled backbone and the data geometry of an evaluator configuration."""

    backbone: BackboneSpec
    geometry: VideoGeometry

    @staticmethod
    def of(full: BackboneSpec, opts: TorchOptions, latent_channels: int) -> Scaled:
        bb = opts.scale.backbone(full)
        s = opts.scale
        geom = VideoGeometry(latent_channels, s.num_frames, s.latent_height, s.latent_width,
                             s.text_tokens, bb.cross_attention_dim, opts.data.patch)
        return Scaled(bb, geom)


def scaled_arch(full: BackboneSpec, opts: TorchOptions, arch: ArchConfig) -> tuple[BackboneSpec, ArchConfig]:
    """The scaled candidate with the model batch of ``opts`` (same topology and choices)."""
    bb, sa = opts.scale.arch(full, arch)
    return bb, sa.with_task(sa.task.replace(batch=opts.batch))


def data_splits(full: BackboneSpec, opts: TorchOptions, latent_channels: int
                ) -> tuple[VideoSet, VideoSet]:
    g = Scaled.of(full, opts, latent_channels).geometry
    train, val, _ = load_splits(g, opts.data.num_train, opts.data.num_val, opts.data.seed)
    return train, val


#: the option keys :func:`bundled_videos` reads (an evaluator's other options are ignored)
VIDEO_OPTION_KEYS = ("scale", "data", "batch", "spatial")


def bundled_videos(backbone: BackboneSpec, options: Mapping[str, Any] | None = None, *,
                   latent_channels: int = 4, min_videos: int = 0, where: str = "options"
                   ) -> tuple[VideoSet, VideoSet, torch.Tensor, VideoGeometry]:
    """``(train, val, channel_std, geometry)``: the bundled videos exactly as a torch evaluator
    of ``backbone`` with ``options`` (its ``scale``/``data`` keys; others are ignored) sees them,
    each split holding at least ``min_videos`` videos. Bad options raise ``ConfigError`` naming
    ``<where>.<key>``."""
    raw = {k: v for k, v in (options or {}).items() if k in VIDEO_OPTION_KEYS}
    opts = parse_options(TorchOptions, raw, where)
    g = Scaled.of(backbone, opts, latent_channels).geometry
    train, val, std = load_splits(g, max(min_videos, opts.data.num_train),
                                  max(min_videos, opts.data.num_val), opts.data.seed)
    return train, val, std, g


@functools.lru_cache(maxsize=1)
def alphas_cumprod() -> torch.Tensor:
    """``(1000,)`` cumulative alphas of SD's scaled-linear schedule."""
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, NUM_TRAIN_TIMESTEPS, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, 0).float()


def noisy(x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``x_t`` for clean latents ``x0 (B, C, T, H, W)``, noise like it, timesteps ``t (B,)``."""
    ab = alphas_cumprod()[t].view(-1, 1, 1, 1, 1)
    return ab.sqrt() * x0 + (1 - ab).sqrt() * noise


def denoise_loss(model: torch.nn.Module, x0: torch.Tensor, text: torch.Tensor, t: torch.Tensor,
                 noise: torch.Tensor, input_grad: bool = True) -> torch.Tensor:
    """Epsilon-prediction MSE of ``model`` on one batch (scalar).

    ``input_grad``: the noisy input requires grad. Needed when only temporal params train:
    torch 2.13 CPU segfaults in GroupNorm backward inside a temporal block whose input does
    not require grad (spatial frozen); with it the backward runs normally.
    """
    xt = noisy(x0, noise, t)
    if input_grad and torch.is_grad_enabled():
        xt = xt.detach().requires_grad_(True)
    return torch.nn.functional.mse_loss(model(xt, t, text), noise)


def fixed_batches(videos: VideoSet, n_batches: int, batch: int, seed: int
                  ) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]:
    """``n_batches`` batches ``(x0, text, t, noise)`` drawn from ``videos`` by ``seed``."""
    g = torch.Generator().manual_seed(seed)
    out = []
    n = len(videos)
    for _ in range(n_batches):
        idx = torch.randint(0, n, (batch,), generator=g)
        x0 = videos.latents[idx]
        t = torch.randint(0, NUM_TRAIN_TIMESTEPS, (batch,), generator=g)
        noise = torch.randn(x0.shape, generator=g)
        out.append((x0, videos.text[idx], t, noise))
    return out


#: fixed seed of the validation noise: every candidate and seed is scored on the same draws
VAL_NOISE_SEED = 0x5EED


def validation_batches(val: VideoSet, batch: int, timesteps_per_video: int = 2
                       ) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Fixed validation batches: every val video at ``timesteps_per_video`` stratified
    timesteps with fixed noise (independent of the evaluation seed). A last partial batch
    is dropped (choose ``num_val * timesteps_per_video`` divisible by ``batch``)."""
    g = torch.Generator().manual_seed(VAL_NOISE_SEED)
    n = len(val)
    k = timesteps_per_video
    items = []
    for j in range(k):
        lo, hi = j * NUM_TRAIN_TIMESTEPS // k, (j + 1) * NUM_TRAIN_TIMESTEPS // k
        for i in range(n):
            t = int(torch.randint(lo, hi, (1,), generator=g))
            items.append((i, t))
    out = []
    for s in range(0, len(items) - batch + 1, batch):
        chunk = items[s:s + batch]
        idx = torch.tensor([i for i, _ in chunk])
        t = torch.tensor([t for _, t in chunk])
        x0 = val.latents[idx]
        noise = torch.randn(x0.shape, generator=g)
        out.append((x0, val.text[idx], t, noise))
    return out


def validation_subset(batches: list, fraction: float) -> list:
    """``round(len(batches) * fraction)`` (at least 1) evenly spaced batches: every noise-level
    stratum and a spread of videos; all of them at ``fraction`` 1. The same subset for every
    candidate, so subset scores rank candidates against each other."""
    if fraction >= 1 or not batches:
        return list(batches)
    k = max(1, round(len(batches) * fraction))
    n = len(batches)
    return [batches[round(i * (n - 1) / max(1, k - 1))] for i in range(k)] if k > 1 else [batches[0]]


@torch.no_grad()
def mean_loss(model: torch.nn.Module, batches) -> float:
    """Mean denoising loss of ``model`` over fixed ``batches`` (eval mode, no grad)."""
    was = model.training
    model.eval()
    tot = 0.0
    for x0, text, t, noise in batches:
        tot += float(denoise_loss(model, x0, text, t, noise, input_grad=False))
    model.train(was)
    return tot / max(1, len(batches))
