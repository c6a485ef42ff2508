"""From pixels to latents and from captions to text tokens: your VAE and text encoder.

Latents
  * ``VaeEncoder``: a diffusers ``AutoencoderKL`` folder (``vae: DIR``, or a pipeline folder
    with ``vae/``). Latents = (posterior mean - ``shift_factor``) x ``scaling_factor`` (minus
    ``latents_mean``, over ``latents_std``, when the config has them), as diffusers pipelines
    scale them; frames are ``(x / 127.5 - 1)``. Decoding inverts that for previews.
  * no VAE: the fixed patch encoding of :mod:`evaluators.data` (``data.patch`` pixels per
    latent), latents divided by their channel std over the training split.

Text
  * ``ClipText``: a transformers ``CLIPTextModel`` folder (``text_encoder: DIR``, or a pipeline
    folder with ``text_encoder/``) and its tokenizer (in DIR, ``DIR/tokenizer/`` or the pipeline's
    ``tokenizer/`` next to DIR): ``last_hidden_state`` of the caption padded/truncated to the
    task's token count.
  * ``EmbeddingsFile``: precomputed ``(tokens, dim)`` tensors in a safetensors file, named by the
    clip's relative path or by its caption.
  * neither: a fixed word table (each word a seeded vector from its hash).

Configs are read and checked without importing diffusers/transformers (they take seconds to
import); the models load on first use. Errors name the config file.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from common.errors import ConfigError

TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "tokenizer_config.json")


def _read_json(path: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            d = json.load(f)
    except OSError as e:
        raise ConfigError(f"{path}: cannot read ({e.strerror})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: not a JSON config ({e})") from None
    if not isinstance(d, dict):
        raise ConfigError(f"{path}: expected a JSON object")
    return d


def model_dir(path: str, sub: str, where: str) -> str:
    """``path`` if it holds ``config.json``, else ``path/sub`` (a pipeline folder)."""
    p = os.path.abspath(os.path.expanduser(path))
    if not os.path.exists(p):
        raise ConfigError(f"{where}: {path}: no such directory")
    if os.path.isfile(os.path.join(p, "config.json")):
        return p
    if os.path.isfile(os.path.join(p, sub, "config.json")):
        return os.path.join(p, sub)
    raise ConfigError(f"{where}: {path}: no config.json here or in {sub}/ (expected a "
                      f"save_pretrained folder)")


def model_files(d: str) -> list[tuple[str, str]]:
    """``(relative name, path)`` of every file of a model folder (its identity)."""
    out = []
    for root, dirs, files in os.walk(d):
        dirs[:] = sorted(x for x in dirs if not x.startswith("."))
        for f in sorted(files):
            if not f.startswith("."):
                full = os.path.join(root, f)
                out.append((os.path.relpath(full, d).replace(os.sep, "/"), full))
    return out


def _require_hf(what: str) -> None:
    """A one-line error when the 'hf' extra (diffusers, transformers) is not installed."""
    import importlib.util

    for mod in ("diffusers", "transformers"):
        if importlib.util.find_spec(mod) is None:
            raise ConfigError(f"{what}: loading it needs {mod}, the 'hf' extra "
                              f"(pip install -e '.[hf]')")


@contextlib.contextmanager
def quiet_hf():
    """diffusers/transformers loading without their info logs and progress bars (they would
    flood the logs of every Ray worker); their verbosity is restored afterwards."""
    import diffusers.utils.logging as dlog
    import transformers.utils.logging as tlog

    old = dlog.get_verbosity(), tlog.get_verbosity()
    dlog.set_verbosity_error()
    tlog.set_verbosity_error()
    tlog.disable_progress_bar()
    try:
        yield
    finally:
        dlog.set_verbosity(old[0])
        tlog.set_verbosity(old[1])
        tlog.enable_progress_bar()


# ---- VAE --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class VaeInfo:
    """What the VAE's ``config.json`` says: latent channels, pixels per latent, scaling."""

    dir: str
    latent_channels: int
    factor: int
    scaling_factor: float
    shift_factor: float
    latents_mean: tuple[float, ...] | None
    latents_std: tuple[float, ...] | None

    @property
    def config_path(self) -> str:
        return os.path.join(self.dir, "config.json")


@functools.lru_cache(maxsize=16)
def vae_info(path: str, where: str = "data.vae") -> VaeInfo:
    d = model_dir(path, "vae", where)
    cfg_path = os.path.join(d, "config.json")
    cfg = _read_json(cfg_path)
    if cfg.get("_class_name") != "AutoencoderKL":
        raise ConfigError(f"{cfg_path}: _class_name is {cfg.get('_class_name')!r}, expected "
                          f"'AutoencoderKL' (a diffusers VAE)")
    try:
        ch = int(cfg["latent_channels"])
        factor = 2 ** (len(cfg["block_out_channels"]) - 1)
        scale = float(cfg.get("scaling_factor") or 0.18215)
        shift = float(cfg.get("shift_factor") or 0.0)
        mean = cfg.get("latents_mean")
        std = cfg.get("latents_std")
        mean = tuple(float(v) for v in mean) if mean is not None else None
        std = tuple(float(v) for v in std) if std is not None else None
    except (KeyError, TypeError, ValueError) as e:
        raise ConfigError(f"{cfg_path}: bad or missing {e} for an AutoencoderKL") from None
    for name, v in (("latents_mean", mean), ("latents_std", std)):
        if v is not None and len(v) != ch:
            raise ConfigError(f"{cfg_path}: {name} has {len(v)} values for {ch} latent channels")
    return VaeInfo(d, ch, factor, scale, shift, mean, std)


class VaeEncoder:
    """A diffusers AutoencoderKL: frames <-> scaled latents (loaded on first use)."""

    def __init__(self, info: VaeInfo, device: str = "cpu", batch_frames: int = 16) -> None:
        self.info = info
        self.device = torch.device(device)
        self.batch_frames = batch_frames

    @functools.cached_property
    def model(self):
        _require_hf(self.info.config_path)
        from diffusers import AutoencoderKL

        try:
            with quiet_hf():
                m = AutoencoderKL.from_pretrained(self.info.dir, local_files_only=True,
                                                  torch_dtype=torch.float32, low_cpu_mem_usage=False)
        except (OSError, ValueError, RuntimeError) as e:
            raise ConfigError(f"{self.info.config_path}: cannot load the VAE "
                              f"({type(e).__name__}: {str(e).splitlines()[0]})") from None
        return m.to(self.device).eval().requires_grad_(False)

    def _stats(self, c: int) -> tuple[torch.Tensor, torch.Tensor]:
        i = self.info
        mean = torch.tensor(i.latents_mean if i.latents_mean else [i.shift_factor] * c)
        std = torch.tensor(i.latents_std if i.latents_std else [1.0] * c)
        return mean.view(1, c, 1, 1), std.view(1, c, 1, 1)

    @torch.no_grad()
    def encode(self, frames: np.ndarray) -> torch.Tensor:
        """``(N, T, H, W, 3)`` uint8 -> ``(N, C, T, H/f, W/f)`` float32 latents."""
        N, T = frames.shape[:2]
        x = torch.from_numpy(np.ascontiguousarray(frames)).reshape(N * T, *frames.shape[2:])
        x = x.permute(0, 3, 1, 2).float() / 127.5 - 1.0
        outs = []
        for s in range(0, N * T, self.batch_frames):
            post = self.model.encode(x[s:s + self.batch_frames].to(self.device)).latent_dist
            outs.append(post.mean.float().cpu())
        z = torch.cat(outs)
        mean, std = self._stats(z.shape[1])
        z = (z - mean) * self.info.scaling_factor / std
        return z.reshape(N, T, *z.shape[1:]).permute(0, 2, 1, 3, 4).contiguous()

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> np.ndarray:
        """``(N, C, T, h, w)`` latents -> ``(N, T, h f, w f, 3)`` uint8 frames."""
        N, C, T, h, w = latents.shape
        z = latents.permute(0, 2, 1, 3, 4).reshape(N * T, C, h, w)
        mean, std = self._stats(C)
        z = z * std / self.info.scaling_factor + mean
        outs = []
        for s in range(0, N * T, self.batch_frames):
            outs.append(self.model.decode(z[s:s + self.batch_frames].to(self.device)).sample.float().cpu())
        x = ((torch.cat(outs).clamp(-1, 1) + 1) * 127.5 + 0.5).to(torch.uint8)
        return x.permute(0, 2, 3, 1).reshape(N, T, h * self.info.factor, w * self.info.factor, 3).numpy()


# ---- text -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TextInfo:
    """A CLIP text model folder and its tokenizer folder; ``dim`` = hidden size."""

    dir: str
    tokenizer_dir: str
    dim: int
    max_tokens: int

    @property
    def config_path(self) -> str:
        return os.path.join(self.dir, "config.json")


@functools.lru_cache(maxsize=16)
def text_info(path: str, where: str = "data.text_encoder") -> TextInfo:
    d = model_dir(path, "text_encoder", where)
    cfg_path = os.path.join(d, "config.json")
    cfg = _read_json(cfg_path)
    if cfg.get("model_type") != "clip_text_model":
        raise ConfigError(f"{cfg_path}: model_type is {cfg.get('model_type')!r}, expected "
                          f"'clip_text_model' (a transformers CLIPTextModel)")
    tok = next((t for t in (d, os.path.join(d, "tokenizer"), os.path.join(os.path.dirname(d), "tokenizer"))
                if any(os.path.isfile(os.path.join(t, f)) for f in TOKENIZER_FILES)), None)
    if tok is None:
        raise ConfigError(f"{where}: {path}: no tokenizer (tokenizer.json or vocab.json + merges.txt) "
                          f"in this folder, its tokenizer/ or ../tokenizer/")
    try:
        return TextInfo(d, tok, int(cfg["hidden_size"]), int(cfg.get("max_position_embeddings", 77)))
    except (KeyError, TypeError, ValueError) as e:
        raise ConfigError(f"{cfg_path}: bad or missing {e} for a CLIP text model") from None


class ClipText:
    """CLIPTextModel + tokenizer: captions -> ``(N, tokens, dim)`` last hidden states."""

    def __init__(self, info: TextInfo, device: str = "cpu", batch: int = 32) -> None:
        self.info = info
        self.device = torch.device(device)
        self.batch = batch

    @functools.cached_property
    def _parts(self):
        _require_hf(self.info.config_path)
        from transformers import CLIPTextModel, CLIPTokenizer

        try:
            with quiet_hf():
                tok = CLIPTokenizer.from_pretrained(self.info.tokenizer_dir, local_files_only=True)
                model = CLIPTextModel.from_pretrained(self.info.dir, local_files_only=True,
                                                      dtype=torch.float32)
        except (OSError, ValueError, RuntimeError, TypeError) as e:
            raise ConfigError(f"{self.info.config_path}: cannot load the text encoder "
                              f"({type(e).__name__}: {str(e).splitlines()[0]})") from None
        return tok, model.to(self.device).eval().requires_grad_(False)

    @torch.no_grad()
    def encode(self, captions: list[str], tokens: int) -> torch.Tensor:
        tok, model = self._parts
        outs = []
        for s in range(0, len(captions), self.batch):
            ids = tok(captions[s:s + self.batch], padding="max_length", max_length=tokens,
                      truncation=True, return_tensors="pt").input_ids
            outs.append(model(ids.to(self.device)).last_hidden_state.float().cpu())
        return torch.cat(outs)


class EmbeddingsFile:
    """Precomputed text embeddings: a safetensors file of ``(tokens, dim)`` tensors named by
    the clip's relative path or its caption (the first of the two that is present)."""

    def __init__(self, path: str, where: str = "data.embeddings") -> None:
        from safetensors import SafetensorError, safe_open

        self.path = os.path.abspath(os.path.expanduser(path))
        if not os.path.isfile(self.path):
            raise ConfigError(f"{where}: {path}: no such file")
        try:
            with safe_open(self.path, framework="pt") as f:
                self.names = set(f.keys())
        except (SafetensorError, OSError) as e:
            raise ConfigError(f"{self.path}: not a safetensors file ({e})") from None

    def lookup(self, rel: str, caption: str, tokens: int, dim: int) -> torch.Tensor:
        from safetensors import safe_open

        name = rel if rel in self.names else caption if caption in self.names else None
        if name is None:
            raise ConfigError(f"{self.path}: no embedding named {rel!r} or by its caption {caption!r}")
        with safe_open(self.path, framework="pt") as f:
            e = f.get_tensor(name).float()
        if e.dim() == 3 and e.shape[0] == 1:
            e = e[0]
        if e.dim() != 2 or e.shape[1] != dim or e.shape[0] < tokens:
            raise ConfigError(f"{self.path}: {name!r} has shape {tuple(e.shape)}, expected (>= {tokens} "
                              f"tokens, {dim}) for the task's text tokens and the backbone's "
                              f"cross-attention dim")
        return e[:tokens].clone()


def word_table_text(caption: str, tokens: int, dim: int) -> torch.Tensor:
    """The fixed text encoding: word ``i`` -> a unit-variance vector seeded by its sha256;
    padded with the ``<pad>`` vector to ``tokens``."""
    words = (caption.lower().split() or [])[:tokens]
    words += ["<pad>"] * (tokens - len(words))
    rows = [np.random.default_rng(int.from_bytes(hashlib.sha256(w.encode()).digest()[:8], "big"))
            .standard_normal(dim) for w in words]
    return torch.from_numpy(np.stack(rows).astype(np.float32))
