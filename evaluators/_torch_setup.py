"""What every torch-based evaluator shares: options, the scaled candidate, the bundled data,
the DDPM noise schedule and the epsilon-prediction denoising loss.

Noise schedule: Stable Diffusion's ``scaled_linear`` betas (``sqrt(beta)`` linear from
``sqrt(0.00085)`` to ``sqrt(0.012)``, 1000 steps); the model predicts the added noise
``eps`` from ``x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps``; loss = MSE(eps_hat, eps).
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from evaluators._common import BaseOptions
from evaluators.data import VideoGeometry, VideoSet, load_splits
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


# ---- on-disk artefacts: safetensors + JSON, written atomically, built once under a lock -----
def atomic_write_json(path: str, obj: Any) -> None:
    """Write ``obj`` as JSON to ``path`` atomically (temp file + rename)."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1, sort_keys=True)
    os.replace(tmp, path)


def save_tensors(path: str, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None
                 ) -> None:
    """Write a safetensors file atomically (contiguous copies of ``tensors``)."""
    from safetensors.torch import save_file

    tmp = f"{path}.tmp{os.getpid()}"
    save_file({k: v.detach().contiguous() for k, v in tensors.items()}, tmp, metadata=metadata)
    os.replace(tmp, path)


def locked_artifact(directory: str, key: str,
                    build: Callable[[], tuple[dict[str, torch.Tensor], dict[str, Any]]]
                    ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """``(tensors, metadata)`` stored as ``<directory>/<key>.safetensors`` + ``<key>.json``.

    If absent, ``build()`` makes them while holding ``<key>.lock``: concurrent processes (Ray
    workers) wait for that one build and then read its files instead of repeating it.
    """
    from safetensors.torch import load_file

    os.makedirs(directory, exist_ok=True)
    st_path, meta_path = (os.path.join(directory, f"{key}.{ext}") for ext in ("safetensors", "json"))
    with open(os.path.join(directory, f"{key}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if os.path.exists(st_path) and os.path.exists(meta_path):
                with open(meta_path, encoding="utf-8") as f:
                    return load_file(st_path), json.load(f)
            tensors, meta = build()
            meta = {**meta, "key": key}
            save_tensors(st_path, tensors, {"key": key})
            atomic_write_json(meta_path, meta)  # written last: its presence marks completion
            return tensors, meta
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def optimizer_tensors(opt: torch.optim.Optimizer, prefix: str = "opt.") -> dict[str, torch.Tensor]:
    """The per-parameter state of ``opt`` (e.g. AdamW's step/exp_avg/exp_avg_sq) as named
    tensors ``<prefix><param index>.<name>`` (for a safetensors checkpoint)."""
    out = {}
    for idx, st in opt.state_dict()["state"].items():
        for k, v in st.items():
            out[f"{prefix}{idx}.{k}"] = v if torch.is_tensor(v) else torch.tensor(float(v))
    return out


def load_optimizer_tensors(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor],
                           prefix: str = "opt.") -> None:
    """Restore the state written by :func:`optimizer_tensors` into a fresh ``opt``."""
    sd = opt.state_dict()
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, v in tensors.items():
        if name.startswith(prefix):
            idx, k = name[len(prefix):].split(".", 1)
            state.setdefault(int(idx), {})[k] = v.clone()
    sd["state"] = state
    opt.load_state_dict(sd)


def save_checkpoint(path: str, step: int, groups: dict[str, dict[str, torch.Tensor]],
                    opt: torch.optim.Optimizer, meta: dict[str, Any]) -> None:
    """A resumable training checkpoint: ``<path>.safetensors`` (every tensor of ``groups`` as
    ``<group>.<name>``, plus the optimizer state) and ``<path>.json`` (``step`` and ``meta``),
    each written atomically, the JSON last."""
    tensors = {f"{g}.{k}": v for g, d in groups.items() for k, v in d.items()}
    tensors.update(optimizer_tensors(opt))
    save_tensors(f"{path}.safetensors", tensors)
    atomic_write_json(f"{path}.json", {**meta, "step": step})


def load_checkpoint(path: str, groups: dict[str, dict[str, torch.Tensor]],
                    opt: torch.optim.Optimizer) -> dict[str, Any] | None:
    """Copy a checkpoint of :func:`save_checkpoint` into ``groups`` and ``opt`` (in place) and
    return its metadata (with ``step``), or ``None`` if there is none."""
    if not (os.path.exists(f"{path}.json") and os.path.exists(f"{path}.safetensors")):
        return None
    from safetensors.torch import load_file

    with open(f"{path}.json", encoding="utf-8") as f:
        meta = json.load(f)
    tensors = load_file(f"{path}.safetensors")
    with torch.no_grad():
        for g, d in groups.items():
            for k, v in d.items():
                v.copy_(tensors[f"{g}.{k}"])
    load_optimizer_tensors(opt, tensors)
    return meta


def drop_checkpoint(path: str) -> None:
    for ext in ("safetensors", "json"):
        if os.path.exists(f"{path}.{ext}"):
            os.remove(f"{path}.{ext}")


# ---- running candidates on shared weights ---------------------------------------------------
class FunctionalModel:
    """``model`` run on the given tensors instead of its own parameters
    (``torch.func.functional_call``): callable like the model, e.g. by :func:`denoise_loss`.
    Gradients flow to the tensors (e.g. views of shared weights)."""

    def __init__(self, model: torch.nn.Module, tensors: dict[str, torch.Tensor]) -> None:
        self.model, self.tensors = model, tensors

    def __call__(self, *args: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(self.model, self.tensors, args)


class ReusedBlocks:
    """A ``block_factory`` for ``build_model`` that builds one module per (block path,
    signature) and hands it to every later candidate with that block. Only for models run
    through :class:`FunctionalModel` (their own parameters are never used): building a
    candidate then costs milliseconds instead of ~70 ms."""

    def __init__(self) -> None:
        from search_space.modules import build_block

        self._build = build_block
        self._mods: dict[Any, torch.nn.Module] = {}

    def __call__(self, block: Any) -> torch.nn.Module:
        key = (block.path, block.sig)
        if key not in self._mods:
            self._mods[key] = self._build(block)
        return self._mods[key]


def seeded_batch(videos: VideoSet, batch: int, seed: int
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One training batch ``(x0, text, t, noise)`` drawn from ``videos`` by ``seed`` alone (so
    a resumed run draws the same batches)."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, len(videos), (batch,), generator=g)
    t = torch.randint(0, NUM_TRAIN_TIMESTEPS, (batch,), generator=g)
    x0 = videos.latents[idx]
    return x0, videos.text[idx], t, torch.randn(x0.shape, generator=g)
