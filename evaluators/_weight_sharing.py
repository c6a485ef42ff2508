"""Plumbing of training on shared weights (the supernet; the pretraining's artefact too):
a locked, atomically written safetensors + JSON artefact, resumable training checkpoints
(tensors + AdamW state in safetensors, never pickle), candidates run on shared tensors, and
training batches drawn from a seed alone (so a resumed run draws the same batches).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

import torch

from common.fsio import atomic_path, atomic_write_json, file_lock
from evaluators._torch_setup import NUM_TRAIN_TIMESTEPS
from evaluators.data import VideoSet


def save_tensors(path: str, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None
                 ) -> None:
    """Write a safetensors file atomically (contiguous CPU copies of ``tensors``)."""
    from safetensors.torch import save_file

    with atomic_path(path, durable=False) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp),
                  metadata=metadata)


def locked_artifact(directory: str, key: str,
                    build: Callable[[], tuple[dict[str, torch.Tensor], dict[str, Any]]]
                    ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """``(tensors, metadata)`` stored as ``<directory>/<key>.safetensors`` + ``<key>.json``.

    If absent, ``build()`` makes them while holding ``<key>.lock``: concurrent processes (Ray
    workers) wait for that one build and then read its files instead of repeating it. The
    metadata gets ``key``.
    """
    from safetensors.torch import load_file

    st_path, meta_path = (os.path.join(directory, f"{key}.{ext}") for ext in ("safetensors", "json"))
    with file_lock(os.path.join(directory, f"{key}.lock")):
        if os.path.exists(st_path) and os.path.exists(meta_path):
            with open(meta_path, encoding="utf-8") as f:
                return load_file(st_path), json.load(f)
        tensors, meta = build()
        meta = {**meta, "key": key}
        save_tensors(st_path, tensors, {"key": key})
        atomic_write_json(meta_path, meta, indent=1)  # written last: its presence marks completion
        return tensors, meta


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
    """Restore the state written by :func:`optimizer_tensors` into a fresh ``opt`` (AdamW
    keeps ``step`` on the CPU and the moments on the parameters' device)."""
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
    atomic_write_json(f"{path}.json", {**meta, "step": step}, indent=1, durable=False)


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


class FunctionalModel:
    """``model`` run on the given tensors instead of its own parameters
    (``torch.func.functional_call``): callable like the model, e.g. by ``denoise_loss``.
    Gradients flow to the tensors (e.g. views of shared weights); buffers stay the model's."""

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
    """One training batch ``(x0 (B, C, T, H, W), text (B, L, D), t (B,), noise like x0)``
    drawn on the CPU from ``videos`` by ``seed`` alone (the same on every device)."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, len(videos), (batch,), generator=g)
    t = torch.randint(0, NUM_TRAIN_TIMESTEPS, (batch,), generator=g)
    x0 = videos.latents[idx]
    return x0, videos.text[idx], t, torch.randn(x0.shape, generator=g)
