"""Kept weights: the temporal weights a ``short_train`` evaluation scored, as safetensors bytes.

Tensors: the temporal parameters (``stages.<sid>.temporal.<i>...``) exactly as evaluated (the
averaged weights the validation loss was computed with). Metadata (strings): ``format``,
``arch_id``, ``seed``, ``budget``, ``val_loss`` (``float.hex``: exact), ``evaluator``,
``config_key``, ``options`` (JSON of the evaluator options), ``backbone`` (JSON of the
evaluator's full backbone), ``eval_backbone`` / ``eval_arch`` (JSON of the network the
evaluation ran: the scaled backbone and the scaled arch with its task), ``spatial`` (the
identity of the spatial weights: ``weights-<sha256>`` for the backbone's own weights, else the
pretraining key) and ``spatial_sha256`` (content hash of the spatial tensors).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

import torch

FORMAT = "temponas-temporal-weights"
_SPATIAL_SHA: dict[str, str] = {}


def state_sha256(state: Mapping[str, torch.Tensor]) -> str:
    """Content hash of a state dict (names, dtypes, shapes, bytes; sorted by name)."""
    h = hashlib.sha256()
    for k in sorted(state):
        t = state[k].detach().contiguous().cpu()
        h.update(f"{k}\0{t.dtype}\0{tuple(t.shape)}\n".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def spatial_sha256(key: str, state: Mapping[str, torch.Tensor]) -> str:
    """:func:`state_sha256` of the spatial state known by ``key`` (computed once per process)."""
    if key not in _SPATIAL_SHA:
        _SPATIAL_SHA[key] = state_sha256(state)
    return _SPATIAL_SHA[key]


def pack(tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> bytes:
    """safetensors bytes of ``tensors`` with ``meta`` (values JSON-encoded unless strings)."""
    from safetensors.torch import save

    md = {"format": FORMAT}
    for k, v in meta.items():
        md[k] = v if isinstance(v, str) else json.dumps(v, sort_keys=True)
    return save({k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}, metadata=md)


def read_kept_weights(path: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """``(temporal tensors, metadata)`` of a kept-weights file; ``val_loss`` as a float, the
    JSON fields decoded. Raises ``ConfigError`` naming the file if it is not one."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    from search_space.errors import ConfigError

    try:
        with safe_open(path, framework="pt") as f:
            md = dict(f.metadata() or {})
        tensors = load_file(path)
    except Exception as e:  # noqa: BLE001 - safetensors/OS errors of a user file
        raise ConfigError(f"{path}: not a readable safetensors file ({type(e).__name__})") from None
    if md.get("format") != FORMAT:
        raise ConfigError(f"{path}: not a temponas kept-weights file (format {md.get('format')!r})")
    meta: dict[str, Any] = dict(md)
    for k in ("seed", "budget", "options", "backbone", "eval_backbone", "eval_arch"):
        if k in meta:
            meta[k] = json.loads(meta[k])
    meta["val_loss"] = float.fromhex(md["val_loss"])
    return tensors, meta

