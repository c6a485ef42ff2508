"""Rebuild the network a kept-weights file (:mod:`evaluators._kept`) was evaluated with."""

from __future__ import annotations

from typing import Any

import torch

from evaluators._kept import read_kept_weights, state_sha256


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
