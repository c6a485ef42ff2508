"""The spatial weights of every candidate: the backbone's own (``spatial: backbone``), or the
scaled spatial backbone pretrained as an image denoiser on video frames, cached on disk.

With ``spatial: backbone`` nothing is pretrained: :func:`pretrained_spatial` returns the
weight files' tensors (read once per process) and the key is their content hash.

Key = sha256 of (scaled backbone, data geometry, the data's identity (``data_scoring``: the
bundled set's options, or the content key of your clips and encoders), pretrain options, code
and data versions). Files: ``<cache>/pretrained/<key>.safetensors`` (spatial state dict) and
``<key>.json`` (options, loss curve, wall time). A file lock makes concurrent workers wait
for one pretraining instead of repeating it. Frames are denoised independently (the image
UNet has no temporal layers), so this is image pretraining on the video frames.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from dataclasses import asdict
from typing import Any

import torch

from evaluators._common import CODE_VERSION
from evaluators._torch_setup import (
    NUM_TRAIN_TIMESTEPS,
    Scaled,
    TorchOptions,
    cache_root,
    data_scoring,
    data_splits,
    denoise_loss,
    mean_loss,
    validation_batches,
    weight_files,
    weights_key,
)
from evaluators._weight_sharing import locked_artifact
from evaluators.data import DATA_VERSION
from search_space.backbone import BackboneSpec

PRETRAIN_SEED = 1234  # fixed: the image backbone is one artefact per configuration
_MEMO: dict[str, tuple[dict[str, torch.Tensor], dict[str, Any]]] = {}


def pretrain_key(full: BackboneSpec, opts: TorchOptions, latent_channels: int) -> str:
    """Identity of the spatial weights :func:`pretrained_spatial` gives: the backbone weights'
    content hash, or the hash of everything the pretraining depends on. The device is not part
    of it (a backbone pretrained on CUDA serves CPU evaluations and vice versa); the precision
    is, unless fp32 (the keys before it existed)."""
    if opts.spatial == "backbone":
        return f"weights-{weights_key(opts)[:16]}"
    sc = Scaled.of(full, opts, latent_channels)
    parts = {"backbone": sc.backbone.to_dict(), "geometry": asdict(sc.geometry),
             "data": data_scoring(opts), "pretrain": asdict(opts.pretrain),
             "code": CODE_VERSION, "data_version": DATA_VERSION, "seed": PRETRAIN_SEED}
    if opts.precision != "fp32":
        parts["precision"] = opts.precision
    blob = json.dumps(parts, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def pretrained_spatial(full: BackboneSpec, opts: TorchOptions, latent_channels: int,
                       progress: bool = True) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """``(spatial state dict, metadata)`` of the pretrained scaled image backbone, or of the
    backbone's own weights with ``spatial: backbone``."""
    key = pretrain_key(full, opts, latent_channels)
    if opts.spatial == "backbone":  # the weights' own files: nothing to pretrain
        if key not in _MEMO:
            from search_space.modules import read_spatial_weights

            files = weight_files(opts)
            _MEMO[key] = (read_spatial_weights(files), {
                "key": key, "source": "backbone", "weights_sha256": weights_key(opts),
                "files": [str(f) for f in files]})
        return _MEMO[key]
    d = os.path.join(cache_root(opts), "pretrained")
    st_path = os.path.join(d, f"{key}.safetensors")
    if st_path in _MEMO:  # per cache file: another cache_dir gets its own copy on disk
        return _MEMO[st_path]
    # concurrent workers wait for one pretraining
    state, meta = locked_artifact(d, key, lambda: _pretrain(full, opts, latent_channels, progress))
    _MEMO[st_path] = (state, meta)
    return state, meta


def _lr_factor(step: int, steps: int, warmup: int = 20) -> float:
    """Linear warm-up, then cosine decay to 5% of the peak."""
    cos = 0.5 * (1 + math.cos(math.pi * min(step, steps) / max(1, steps)))
    return min(1.0, (step + 1) / warmup) * (0.05 + 0.95 * cos)


def _pretrain(full: BackboneSpec, opts: TorchOptions, latent_channels: int, progress: bool
              ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    from tqdm import tqdm

    from search_space.modules import build_image_model

    sc = Scaled.of(full, opts, latent_channels)
    train, val = data_splits(full, opts, latent_channels)
    p = opts.pretrain
    t0 = time.perf_counter()
    with opts.session(PRETRAIN_SEED) as rt:
        g = sc.geometry
        from search_space.task import VideoTask
        task = VideoTask(latent_channels, g.num_frames, g.latent_height, g.latent_width, p.batch,
                         g.text_tokens, g.text_dim)
        model = rt.module(build_image_model(sc.backbone, task))
        params = list(model.parameters())
        opt = torch.optim.AdamW(params, lr=p.lr, weight_decay=0.0)
        scaler = rt.grad_scaler()
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _lr_factor(s, p.steps))
        gen = torch.Generator().manual_seed(PRETRAIN_SEED)
        curve = []
        bar = tqdm(range(p.steps), desc=f"pretrain {sc.backbone.name}", disable=not progress,
                   leave=False, mininterval=2.0)
        ema = None
        for step in bar:
            idx = torch.randint(0, len(train), (p.batch,), generator=gen)
            x0 = train.latents[idx]
            t = torch.randint(0, NUM_TRAIN_TIMESTEPS, (p.batch,), generator=gen)
            noise = torch.randn(x0.shape, generator=gen)  # drawn on the CPU: same on every device
            x0, text, t, noise = rt.tensors(x0, train.text[idx], t, noise)
            loss = denoise_loss(model, x0, text, t, noise, input_grad=False, rt=rt)
            rt.optimizer_step(loss, opt, params, scaler, max_norm=1.0)
            sched.step()
            lv = float(loss.detach())
            ema = lv if ema is None else 0.95 * ema + 0.05 * lv
            if step % 20 == 0 or step == p.steps - 1:
                curve.append([step, round(ema, 5)])
                bar.set_postfix(loss=f"{ema:.4f}")
        # validation loss of the image model at the evaluation batch size
        eval_model = rt.module(build_image_model(sc.backbone, task.replace(batch=opts.batch)))
        eval_model.load_state_dict(model.state_dict())
        val_loss = mean_loss(eval_model, rt.batches(validation_batches(val, opts.batch)), rt)
    state = {k: v.detach().cpu().clone().contiguous()
             for k, v in model.spatial_state_dict().items()}
    meta = {"backbone": sc.backbone.name, "steps": p.steps, "lr": p.lr, "batch": p.batch,
            "train_loss_curve": curve, "val_loss_image": val_loss,
            "wall_time_s": round(time.perf_counter() - t0, 2), "device": str(rt.device),
            "precision": rt.precision, "code": CODE_VERSION,
            "data_version": DATA_VERSION}
    return state, meta
