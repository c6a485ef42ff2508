"""Tiny random diffusers models made by diffusers itself (``save_pretrained``), for tests that
need a real model folder without a download."""

from __future__ import annotations

from pathlib import Path

#: 2 levels, CrossAttnDown+Down / Up+CrossAttnUp, the stage ids of the ``tiny`` preset
TINY_UNET = dict(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64),
                 down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                 up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), layers_per_block=1,
                 attention_head_dim=8, cross_attention_dim=32, norm_num_groups=8)


def save_tiny_unet(path: str | Path, seed: int = 0, **overrides):
    """A random tiny ``UNet2DConditionModel`` saved with ``save_pretrained`` to ``path``;
    every parameter (norms and biases included) is perturbed so none keeps a trivial init.
    Returns the model (eval mode)."""
    import diffusers
    import torch

    torch.manual_seed(seed)
    unet = diffusers.UNet2DConditionModel(**{**TINY_UNET, **overrides})
    with torch.no_grad():
        for p in unet.parameters():
            p.add_(0.05 * torch.randn_like(p))
    unet.save_pretrained(path)
    return unet.eval()
