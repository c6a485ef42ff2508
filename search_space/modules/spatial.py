"""The spatial blocks of the SD-style image UNet, parameter layout as in diffusers'
``UNet2DConditionModel`` (so SD-v1.5/2.1 weights map name by name, modulo the prefix).

Spatial blocks run on ``N = batch * frames`` images: ``x (N, C, H, W)``; ``N`` comes from the
input (channels and sizes from the signature).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from search_space.geometry import BlockSignature
from search_space.modules.common import Attention, FeedForward


class TimeEmbedding(nn.Module):
    """``timesteps (B,) -> (B*T, temb_dim)``: sinusoidal(C0) -> ``linear_1`` -> SiLU -> ``linear_2``,
    repeated for every frame (flip_sin_to_cos, freq_shift 0, as SD)."""

    def __init__(self, sig: BlockSignature) -> None:
        super().__init__()
        self.frames = sig.frames
        half = sig.in_channels // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / half)
        self.register_buffer("freqs", freqs, persistent=False)
        self.linear_1 = nn.Linear(sig.in_channels, sig.out_channels)
        self.linear_2 = nn.Linear(sig.out_channels, sig.out_channels)

    def forward(self, timesteps: torch.Tensor) -> torch.Tensor:
        ang = timesteps.float()[:, None] * self.freqs.float()[None, :]  # fp32 even in a half model
        emb = torch.cat([torch.cos(ang), torch.sin(ang)], dim=-1)
        emb = self.linear_2(F.silu(self.linear_1(emb.to(self.linear_1.weight.dtype))))
        return emb.repeat_interleave(self.frames, dim=0)


class ConvIn(nn.Module):
    """``conv``: 3x3, latent channels -> C0. ``x (N, C_lat, H, W) -> (N, C0, H, W)``."""

    def __init__(self, sig: BlockSignature) -> None:
        super().__init__()
        self.conv = nn.Conv2d(sig.in_channels, sig.out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class ConvOut(nn.Module):
    """``norm`` (GroupNorm) -> SiLU -> ``conv`` 3x3 to the latent channels."""

    def __init__(self, sig: BlockSignature) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(sig.norm_groups, sig.in_channels, eps=1e-5)
        self.conv = nn.Conv2d(sig.in_channels, sig.out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.silu(self.norm(x)))


class ResnetBlock(nn.Module):
    """diffusers ``ResnetBlock2D``. ``x (N, C_in + C_skip, H, W)`` (skip already concatenated),
    ``temb (N, temb_dim)`` -> ``(N, C_out, H, W)``; 1x1 ``conv_shortcut`` when channels change."""

    def __init__(self, sig: BlockSignature) -> None:
        super().__init__()
        cin, cout, g = sig.in_channels + sig.skip_channels, sig.out_channels, sig.norm_groups
        self.norm1 = nn.GroupNorm(g, cin, eps=1e-5)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.time_emb_proj = nn.Linear(sig.temb_dim, cout)
        self.norm2 = nn.GroupNorm(g, cout, eps=1e-5)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.conv_shortcut = nn.Conv2d(cin, cout, 1) if cin != cout else None

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.time_emb_proj(F.silu(temb))[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        sc = x if self.conv_shortcut is None else self.conv_shortcut(x)
        return sc + h


class BasicTransformerBlock(nn.Module):
    """LayerNorm+self-attn (``attn1``, absent when ``self_attn=False``), LayerNorm+cross-attn
    to text (``attn2``), LayerNorm+GEGLU FFN (``ff``), each residual. ``x (N, S, C)``."""

    def __init__(self, dim: int, heads: int, context_dim: int, self_attn: bool = True) -> None:
        super().__init__()
        self.has_self_attn = self_attn
        if self_attn:
            self.norm1 = nn.LayerNorm(dim)
            self.attn1 = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.attn2 = Attention(dim, heads, context_dim)
        self.norm3 = nn.LayerNorm(dim)
        self.ff = FeedForward(dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        if self.has_self_attn:
            x = x + self.attn1(self.norm1(x))
        x = x + self.attn2(self.norm2(x), context)
        return x + self.ff(self.norm3(x))


class SpatialTransformer(nn.Module):
    """diffusers ``Transformer2DModel``: GroupNorm -> ``proj_in`` (1x1 conv, or Linear when
    ``linear_projection``) -> ``depth`` :class:`BasicTransformerBlock` -> ``proj_out``, residual.
    ``x (N, C, H, W)``, ``text (N, tokens, D)`` -> ``(N, C, H, W)``."""

    def __init__(self, sig: BlockSignature) -> None:
        super().__init__()
        c = sig.in_channels
        self.c, self.h, self.w = c, sig.height, sig.width
        self.linear = sig.linear_projection
        self.norm = nn.GroupNorm(sig.norm_groups, c, eps=1e-6)
        self.proj_in = nn.Linear(c, c) if self.linear else nn.Conv2d(c, c, 1)
        self.transformer_blocks = nn.ModuleList(
            BasicTransformerBlock(c, sig.heads, sig.context_dim, sig.self_attn)
            for _ in range(sig.depth))
        self.proj_out = nn.Linear(c, c) if self.linear else nn.Conv2d(c, c, 1)

    def forward(self, x: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        n, c, hh, ww = x.shape[0], self.c, self.h, self.w
        h = self.norm(x)
        if self.linear:
            h = self.proj_in(h.permute(0, 2, 3, 1).reshape(n, hh * ww, c))
        else:
            h = self.proj_in(h).permute(0, 2, 3, 1).reshape(n, hh * ww, c)
        for blk in self.transformer_blocks:
            h = blk(h, text)
        if self.linear:
            h = self.proj_out(h).reshape(n, hh, ww, c).permute(0, 3, 1, 2)
        else:
            h = self.proj_out(h.reshape(n, hh, ww, c).permute(0, 3, 1, 2))
        return h + x


class Downsample(nn.Module):
    """``conv``: 3x3 stride 2 (padding 1)."""

    def __init__(self, sig: BlockSignature) -> None:
        super().__init__()
        self.conv = nn.Conv2d(sig.in_channels, sig.out_channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest 2x, then ``conv`` 3x3."""

    def __init__(self, sig: BlockSignature) -> None:
        super().__init__()
        self.conv = nn.Conv2d(sig.in_channels, sig.out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
