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
    return save({k: v.detach().contiguous().clone() for k, v in tensors.items()}, metadata=md)


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


def evaluated_model(path: str, weights: str | None = None) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The network a kept-weights file was evaluated with, rebuilt exactly: its (scaled)
    backbone and task, the spatial weights the evaluation used (``weights``: where the
    backbone's weight files are on this machine, default the evaluation's path; the proxy's
    pretrained image denoiser from the cache, pretrained again if missing; or the seeded random
    init) -- checked against the recorded hash -- and the kept temporal weights. Returns
    ``(model in eval mode, metadata)``."""
    from dataclasses import replace

    from evaluators._pretrain import pretrained_spatial
    from evaluators._short_train import ShortTrainOptions
    from evaluators._torch_setup import weights_key
    from evaluators.options import parse_options
    from search_space.arch import ArchConfig
    from search_space.backbone import BackboneSpec
    from search_space.errors import ConfigError
    from search_space.modules import build_model, is_temporal_name

    tensors, meta = read_kept_weights(path)
    full = BackboneSpec.from_dict(meta["backbone"], f"{path}: backbone")
    eb = BackboneSpec.from_dict(meta["eval_backbone"], f"{path}: eval_backbone")
    earch = ArchConfig.from_dict(meta["eval_arch"], where=f"{path}: eval_arch")
    opts = parse_options(ShortTrainOptions, meta["options"], f"{path}: options")
    if weights is not None and opts.spatial == "backbone":
        opts = replace(opts, weights=weights)
    if opts.spatial == "random":
        torch.manual_seed(int(meta["seed"]))
    model = build_model(eb, earch.task, earch)
    if opts.spatial != "random":
        state, _ = pretrained_spatial(full, opts, earch.task.latent_channels, progress=False)
        model.load_spatial_state_dict(state)
    got = (weights_key(opts) if opts.spatial == "backbone"
           else state_sha256(model.spatial_state_dict()))
    if got != meta["spatial_sha256"]:
        raise ConfigError(f"{path}: the spatial weights on this machine ({meta['spatial']}, "
                          f"sha256 {got[:12]}) are not those the evaluation ran "
                          f"({meta['spatial_sha256'][:12]})")
    own = {k for k in model.state_dict() if is_temporal_name(k)}
    if set(tensors) != own:
        bad = sorted(set(tensors) ^ own)[0]
        raise ConfigError(f"{path}: temporal weights do not fit arch {meta['arch_id']} (first "
                          f"bad key {bad!r})")
    model.load_state_dict(tensors, strict=False)
    return model.eval(), meta
