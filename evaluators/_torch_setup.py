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
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from common.hashing import files_sha256
from evaluators import _user_data
from evaluators._common import BaseOptions, BuiltinEvaluator
from evaluators._device import Runtime, check_device, resolve_device, torch_session
from evaluators.data import VideoGeometry, VideoSet, load_splits
from evaluators.options import parse_options
from evaluators.scale import DEFAULT_WIDTH_MULT, ProxyScale
from search_space.arch import ArchConfig
from search_space.backbone import BackboneSpec
from search_space.diffusers_config import weight_files_at
from search_space.errors import ConfigError

NUM_TRAIN_TIMESTEPS = 1000


@dataclass(frozen=True)
class DataOptions:
    """Where the videos come from (docs/proxies.md, docs/your_model.md).

    ``source: bundled`` renders ``num_train``/``num_val`` videos from images bundled with our
    dependencies (``seed``; ``patch`` pixels per latent of the fixed encoding). ``clips``: your
    clips (``path``: a folder or a CSV/JSONL manifest; at most ``num_train``/``num_val`` videos
    per split, ``val_fraction`` of the files by hash unless the manifest says, frames every
    ``stride``-th, ``windows`` per file, ``resize`` ``crop``|``stretch``, ``skip_bad``), encoded
    by your ``vae`` (a diffusers AutoencoderKL folder; else the fixed encoding) with captions
    from your ``text_encoder`` (a CLIP text model folder) or ``embeddings`` (a safetensors
    file), cached under ``cache_dir`` (default ``<cache_dir>/data``; not in the config key).
    ``latents``: ``path`` is a safetensors file of precomputed latents and text.
    """

    source: Literal["bundled", "clips", "latents"] = "bundled"
    num_train: int = 96
    num_val: int = 32
    seed: int = 0
    patch: int = 8
    path: str = ""
    stride: int = 1
    windows: int = 1
    resize: Literal["crop", "stretch"] = "crop"
    val_fraction: float = 0.2
    skip_bad: bool = False
    vae: str = ""
    text_encoder: str = ""
    embeddings: str = ""
    cache_dir: str = ""

    def __post_init__(self) -> None:
        for k in ("num_train", "num_val", "patch", "stride", "windows"):
            if getattr(self, k) < 1:
                raise ConfigError(f"data.{k}: must be >= 1, got {getattr(self, k)}")
        if not 0 < self.val_fraction < 1:
            raise ConfigError(f"data.val_fraction: must be in (0, 1), got {self.val_fraction}")
        user = ("path", "vae", "text_encoder", "embeddings")
        if self.source == "bundled":
            for k in user:
                if getattr(self, k):
                    raise ConfigError(f"data.{k}: needs data.source: clips (or latents for path); "
                                      f"the bundled videos use the fixed encoding")
        elif not self.path:
            raise ConfigError(f"data.path: required with data.source: {self.source}")
        if self.source == "latents":
            for k in user[1:]:
                if getattr(self, k):
                    raise ConfigError(f"data.{k}: not used with data.source: latents (the file holds "
                                      f"latents and text already)")
        if self.text_encoder and self.embeddings:
            raise ConfigError("data.embeddings: give either a text_encoder or embeddings, not both")


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
    ``spatial``: ``pretrained`` loads the cached image denoiser (pretrained at the proxy scale)
    into the spatial blocks, ``random`` keeps the seeded random init, ``backbone`` loads the
    backbone's own weights (``weights``: a safetensors file or a diffusers UNet folder; the
    experiment config fills it in, and makes ``backbone`` the default, when its backbone comes
    with weights) at the real width (``scale.width_mult`` unset or 1.0); ``cache_dir``: '' =
    ``$TEMPONAS_CACHE`` or ``~/.cache/temponas``; ``device``: ``auto`` (CUDA when this process
    can use a GPU, else CPU), ``cpu``, ``cuda`` or ``cuda:<index>`` (see
    ``evaluators._device``); ``precision``: ``fp32``, or ``bf16``/``fp16`` autocast.
    ``threads``, ``cache_dir``, ``device`` and the ``weights`` path do not change scores (not in
    the key; the weights' content hash is; CPU and CUDA scores are close, not bit-identical);
    ``precision`` does.
    """

    scale: ProxyScale = field(default_factory=ProxyScale)
    data: DataOptions = field(default_factory=DataOptions)
    pretrain: PretrainOptions = field(default_factory=PretrainOptions)
    batch: int = 2
    threads: int = 1
    spatial: Literal["pretrained", "random", "backbone"] = "pretrained"
    weights: str = ""
    cache_dir: str = ""
    device: str = "auto"
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"

    def __post_init__(self) -> None:
        if self.batch < 1:
            raise ConfigError(f"batch: must be >= 1, got {self.batch}")
        if self.threads < 1:
            raise ConfigError(f"threads: must be >= 1, got {self.threads}")
        real = self.spatial == "backbone"
        if real and not self.weights:
            raise ConfigError("spatial: backbone needs the backbone's weights (backbone: "
                              "{diffusers: DIR} or backbone_weights: FILE in the experiment "
                              "config, or the evaluator option weights: FILE|DIR)")
        w = self.scale.width_mult
        if w is None:  # unset: the real width for real weights, else the proxy default
            object.__setattr__(self, "scale", replace(self.scale, width_mult=1.0 if real
                                                      else DEFAULT_WIDTH_MULT))
        elif real and w != 1.0:
            raise ConfigError(f"scale.width_mult: {w:g} cannot hold the backbone's weights "
                              f"(spatial: backbone runs the real width, 1.0; frames and latent "
                              f"size may still shrink)")
        check_device(self.device)
        if (self.device.startswith("cuda") and self.resources is not None
                and not self.resources.get("num_gpus")):
            raise ConfigError(f"resources: device {self.device!r} needs num_gpus > 0 (an "
                              f"evaluation may only use the GPUs Ray reserved for it), or "
                              f"leave resources unset")

    def session(self, seed: int) -> contextlib.AbstractContextManager[Runtime]:
        """:func:`torch_session` with these options' threads, device and precision."""
        return torch_session(seed, self.threads, self.device, self.precision)

    def scoring_dict(self) -> dict[str, Any]:
        d = super().scoring_dict()
        d["data"] = data_scoring(self)
        key = weights_key(self)
        if key:  # the backbone weights' content, not their path
            d["weights_sha256"] = key
        return d


def weight_files(opts: TorchOptions) -> tuple[Path, ...]:
    """The safetensors files of ``opts.weights`` (``()`` unless ``spatial: backbone``)."""
    if opts.spatial != "backbone":
        return ()
    return weight_files_at(opts.weights, where="weights")


def weights_key(opts: TorchOptions) -> str:
    """Content hash (sha256 hex) of the backbone weights an evaluator runs ('' for none); the
    file hashes are cached on disk by (path, size, mtime), so each file is read once."""
    files = weight_files(opts)
    return files_sha256(files, cache_root(opts)) if files else ""


class TorchEvaluator(BuiltinEvaluator):
    """Base of the evaluators that run the (scaled) candidate network: backbone weights are
    checked against the backbone when the evaluator is made (one line naming the file and the
    first key that does not fit); their content hash is part of :attr:`config_key`
    (:meth:`TorchOptions.scoring_dict`)."""

    def __init__(self, backbone: BackboneSpec, options: Mapping[str, Any] | None = None,
                 where: str | None = None) -> None:
        super().__init__(backbone, options, where)
        try:  # the proxy's geometry fails here, before a search starts, not in every worker
            self.options.scale.check(backbone)
        except ConfigError as e:
            raise ConfigError(f"{where or f'evaluators.{self.name}'}.{e}") from None
        files = weight_files(self.options)
        if files:
            from search_space.modules import check_spatial_weights

            check_spatial_weights(self.options.scale.backbone(backbone), files)


def cache_root(opts: TorchOptions) -> str:
    root = opts.cache_dir or os.environ.get("TEMPONAS_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "temponas")
    os.makedirs(root, exist_ok=True)
    return root


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
                             s.text_tokens, bb.cross_attention_dim,
                             _user_data.pixels_per_latent(opts.data))
        return Scaled(bb, geom)


def scaled_arch(full: BackboneSpec, opts: TorchOptions, arch: ArchConfig) -> tuple[BackboneSpec, ArchConfig]:
    """The scaled candidate with the model batch of ``opts`` (same topology and choices)."""
    bb, sa = opts.scale.arch(full, arch)
    return bb, sa.with_task(sa.task.replace(batch=opts.batch))


def data_splits(full: BackboneSpec, opts: TorchOptions, latent_channels: int
                ) -> tuple[VideoSet, VideoSet]:
    """``(train, val)`` videos at the evaluator's scale: the ONE way every torch evaluator,
    the pretraining and the supernet get data. ``latents (N, C, T, H, W)``, ``text (N, L, D)``."""
    u = user_data(full, opts, latent_channels)
    return u.train, u.val


def user_data(full: BackboneSpec, opts: TorchOptions, latent_channels: int,
              progress: bool | None = None) -> _user_data.UserData:
    """Both splits with the channel std of the fixed encoding and what loading did."""
    sc = Scaled.of(full, opts, latent_channels)
    g, d = sc.geometry, opts.data
    if d.source == "bundled":
        train, val, std = load_splits(g, d.num_train, d.num_val, d.seed)
        return _user_data.UserData(train, val, std, {"source": "bundled"})
    w = opts.scale.width_mult
    _user_data.check_encoders(d, g, f" at scale.width_mult {w:g} (1.0 = real width)" if w != 1 else "")
    # the VAE / text encoder run on a GPU where this process has one (the driver encodes once),
    # unless device is cpu; like every device choice, it does not change the data key
    enc = "cpu" if opts.device == "cpu" else str(resolve_device("auto"))
    return _user_data.user_splits(d, cache_root(opts), g, progress, device=enc)


def data_key(opts: TorchOptions) -> str:
    """The identity of the data behind :func:`data_splits` (content hashes of the files used,
    data options, encoder weight hashes): 16 hex, part of every cache key."""
    return _user_data.data_key(opts.data, cache_root(opts))


def data_scoring(opts: TorchOptions) -> dict[str, Any]:
    """The data as config and pretraining keys hold it: the bundled set's options (as they
    always were), or the content key of your data."""
    d = opts.data
    if d.source == "bundled":
        return {"num_train": d.num_train, "num_val": d.num_val, "seed": d.seed, "patch": d.patch}
    return {"source": d.source, "key": data_key(opts)}


def prepare_data(full: BackboneSpec, opts: TorchOptions, latent_channels: int,
                 progress: bool | None = None) -> dict[str, Any]:
    """Load (encoding what the cache lacks) the data of an evaluator configuration; bad data
    raises here. What a search driver calls once before the first evaluation (nothing to do
    for the bundled videos: each worker renders them, they cannot be bad)."""
    if opts.data.source == "bundled":
        return {"source": "bundled"}
    return dict(user_data(full, opts, latent_channels, progress).info)


#: the option keys :func:`bundled_videos` and :func:`preview_frames` read (others are ignored)
VIDEO_OPTION_KEYS = ("scale", "data", "batch", "spatial", "weights", "cache_dir")


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


def preview_frames(backbone: BackboneSpec, options: Mapping[str, Any] | None = None, *,
                   latent_channels: int | None = None, split: str = "train", n: int = 8,
                   decoded: bool = False, where: str = "options"
                   ) -> tuple[np.ndarray, tuple[str, ...], VideoGeometry]:
    """``(frames (n, T, h, w, 3) uint8, sources, geometry)``: the first ``n`` videos of
    ``split`` as a torch evaluator with ``options`` sees them: their pixels (the bundled renders,
    or your clips decoded again) or, ``decoded``, what their latents decode to (your VAE's
    decoder, or the inverse of the fixed encoding). Text options are ignored (no text shown);
    ``latent_channels`` defaults to the VAE's (else 4)."""
    from evaluators.data import decode

    raw = {k: v for k, v in (options or {}).items() if k in VIDEO_OPTION_KEYS}
    if isinstance(raw.get("data"), Mapping):
        raw["data"] = {k: v for k, v in raw["data"].items() if k not in ("text_encoder", "embeddings")}
    opts = parse_options(TorchOptions, raw, where)
    d = opts.data
    C = latent_channels or (_user_data.vae_info(d.vae).latent_channels if d.vae else 4)
    if d.source == "bundled":
        train, val, std, g = bundled_videos(backbone, raw, latent_channels=C, min_videos=n, where=where)
        v = train if split == "train" else val
        frames = (decode(v.latents[:n], std, g.patch) * 255 + 0.5).astype(np.uint8) if decoded else v.pixels[:n]
        return frames, v.sources[:n], g
    g = Scaled.of(backbone, opts, C).geometry
    frames, sources = _user_data.preview(d, cache_root(opts), g, split, n, decoded)
    return frames, sources, g


@functools.lru_cache(maxsize=1)
def alphas_cumprod() -> torch.Tensor:
    """``(1000,)`` cumulative alphas of SD's scaled-linear schedule."""
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, NUM_TRAIN_TIMESTEPS, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, 0).float()


@functools.lru_cache(maxsize=8)
def _alphas_on(device: torch.device) -> torch.Tensor:
    return alphas_cumprod().to(device)


def noisy(x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``x_t`` for clean latents ``x0 (B, C, T, H, W)``, noise like it, timesteps ``t (B,)``
    (all on one device)."""
    ab = _alphas_on(x0.device)[t].view(-1, 1, 1, 1, 1)
    return ab.sqrt() * x0 + (1 - ab).sqrt() * noise


def denoise_loss(model: torch.nn.Module, x0: torch.Tensor, text: torch.Tensor, t: torch.Tensor,
                 noise: torch.Tensor, input_grad: bool = True, rt: Runtime | None = None
                 ) -> torch.Tensor:
    """Epsilon-prediction MSE of ``model`` on one batch (fp32 scalar); the forward pass runs
    under ``rt``'s autocast (tensors must already be on ``rt``'s device).

    ``input_grad``: the noisy input requires grad. Needed when only temporal params train:
    torch 2.13 CPU segfaults in GroupNorm backward inside a temporal block whose input does
    not require grad (spatial frozen); with it the backward runs normally.
    """
    xt = noisy(x0, noise, t)
    if input_grad and torch.is_grad_enabled():
        xt = xt.detach().requires_grad_(True)
    with rt.autocast() if rt is not None else contextlib.nullcontext():
        pred = model(xt, t, text)
    return torch.nn.functional.mse_loss(pred.float(), noise)


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
def mean_loss(model: torch.nn.Module, batches, rt: Runtime | None = None) -> float:
    """Mean denoising loss of ``model`` over fixed ``batches`` (eval mode, no grad; batches on
    ``rt``'s device, forward under its autocast)."""
    was = model.training
    model.eval()
    tot = 0.0
    for x0, text, t, noise in batches:
        tot += float(denoise_loss(model, x0, text, t, noise, input_grad=False, rt=rt))
    model.train(was)
    return tot / max(1, len(batches))
