"""The scaled spatial backbone pretrained as an image denoiser on video frames, cached on disk.

Key = sha256 of (scaled backbone, data geometry, data options, pretrain options, code and data
versions). Files: ``<cache>/pretrained/<key>.safetensors`` (spatial state dict) and
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
    data_splits,
    denoise_loss,
    locked_artifact,
    mean_loss,
    torch_session,
    validation_batches,
)
from evaluators.data import DATA_VERSION
from search_space.backbone import BackboneSpec

PRETRAIN_SEED = 1234  # fixed: the image backbone is one artefact per configuration
_MEMO: dict[str, tuple[dict[str, torch.Tensor], dict[str, Any]]] = {}


def pretrain_key(full: BackboneSpec, opts: TorchOptions, latent_channels: int) -> str:
    sc = Scaled.of(full, opts, latent_channels)
    blob = json.dumps({"backbone": sc.backbone.to_dict(), "geometry": asdict(sc.geometry),
                       "data": asdict(opts.data), "pretrain": asdict(opts.pretrain),
                       "code": CODE_VERSION, "data_version": DATA_VERSION,
                       "seed": PRETRAIN_SEED}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def pretrained_spatial(full: BackboneSpec, opts: TorchOptions, latent_channels: int,
                       progress: bool = True) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """``(spatial state dict, metadata)`` of the pretrained scaled image backbone."""
    key = pretrain_key(full, opts, latent_channels)
    if key not in _MEMO:
        _MEMO[key] = locked_artifact(os.path.join(cache_root(opts), "pretrained"), key,
                                     lambda: _pretrain(full, opts, latent_channels, progress))
    return _MEMO[key]


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
    with torch_session(PRETRAIN_SEED, opts.threads):
        g = sc.geometry
        from search_space.task import VideoTask
        task = VideoTask(latent_channels, g.num_frames, g.latent_height, g.latent_width, p.batch,
                         g.text_tokens, g.text_dim)
        model = build_image_model(sc.backbone, task)
        opt = torch.optim.AdamW(model.parameters(), lr=p.lr, weight_decay=0.0)
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
            noise = torch.randn(x0.shape, generator=gen)
            loss = denoise_loss(model, x0, train.text[idx], t, noise, input_grad=False)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            lv = float(loss.detach())
            ema = lv if ema is None else 0.95 * ema + 0.05 * lv
            if step % 20 == 0 or step == p.steps - 1:
                curve.append([step, round(ema, 5)])
                bar.set_postfix(loss=f"{ema:.4f}")
        # validation loss of the image model at the evaluation batch size
        eval_model = build_image_model(sc.backbone, task.replace(batch=opts.batch))
        eval_model.load_state_dict(model.state_dict())
        val_loss = mean_loss(eval_model, validation_batches(val, opts.batch))
    state = {k: v.detach().clone().contiguous() for k, v in model.spatial_state_dict().items()}
    meta = {"backbone": sc.backbone.name, "steps": p.steps, "lr": p.lr, "batch": p.batch,
            "train_loss_curve": curve, "val_loss_image": val_loss,
            "wall_time_s": round(time.perf_counter() - t0, 2), "code": CODE_VERSION,
            "data_version": DATA_VERSION}
    return state, meta
