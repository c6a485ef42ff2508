"""Temporal blocks, one class per :class:`TemporalKind`, registered in ``TEMPORAL_BLOCKS``.

Every temporal block takes the spatial layout ``x (N=B*T, C, H, W)`` (plus ``text (B, tokens,
D)`` for the cross-attention kinds), moves to its own layout with ``T, C, H, W`` from the
signature and the batch ``B = N / T`` from the input (a block built for batch 1 runs batch 2;
traced or exported with example inputs, every shape is still a constant), and returns
``x + branch(x)`` in the spatial layout. The last projection of the
branch is zero-initialized, so a fresh block is an exact identity and a fresh video UNet equals
its image backbone applied frame by frame.

Layouts (the reshapes/transposes a Core ML program will contain):
- conv kinds: ``(B, C, T, H, W)`` (``Conv3d``; ``conv2p1d`` runs its spatial conv before the
  layout change, in ``(N, C, H, W)``);
- ``attn1d``/``xattn1d``: ``(B*H*W, T, C)`` tokens (attention along T per position);
- ``attn3d``/``xattn3d``: ``(B, T*H*W, C)`` tokens.
Attention kinds add a sinusoidal temporal position table (non-persistent buffer ``pos_embed``,
``(T, C)``) after ``proj_in``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from search_space.arch import TemporalKind
from search_space.geometry import BlockSignature
from search_space.modules.common import Attention, FeedForward, sinusoidal_table, zero_

TEMPORAL_BLOCKS: dict[TemporalKind, type[nn.Module]] = {}


def register_temporal(kind: TemporalKind) -> Callable[[type[nn.Module]], type[nn.Module]]:
    """Class decorator: make ``cls(sig)`` the module of temporal kind ``kind``."""

    def deco(cls: type[nn.Module]) -> type[nn.Module]:
        if kind in TEMPORAL_BLOCKS:
            raise ValueError(f"temporal kind {kind.value} registered twice")
        TEMPORAL_BLOCKS[kind] = cls
        cls.kind = kind
        return cls

    return deco


class _TemporalConvBase(nn.Module):
    """GroupNorm -> SiLU -> conv branch in ``(B, C, T, H, W)``, residual."""

    kind: TemporalKind

    def __init__(self, sig: BlockSignature) -> None:
        super().__init__()
        self.t, self.c, self.h, self.w = sig.frames, sig.in_channels, sig.height, sig.width
        self.norm = nn.GroupNorm(sig.norm_groups, self.c, eps=1e-6)

    def _to_video(self, h: torch.Tensor) -> torch.Tensor:
        return h.reshape(h.shape[0] // self.t, self.t, self.c, self.h, self.w).permute(0, 2, 1, 3, 4)

    def _to_frames(self, h: torch.Tensor) -> torch.Tensor:
        return h.permute(0, 2, 1, 3, 4).reshape(h.shape[0] * self.t, self.c, self.h, self.w)


@register_temporal(TemporalKind.CONV1D)
class TemporalConv1d(_TemporalConvBase):
    """``conv``: Conv3d ``(kernel_t, 1, 1)`` over T at each position (zero-init)."""

    def __init__(self, sig: BlockSignature) -> None:
        super().__init__(sig)
        kt = sig.kernel_t
        self.conv = zero_(nn.Conv3d(self.c, self.c, (kt, 1, 1), padding=(kt // 2, 0, 0)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self._to_frames(self.conv(self._to_video(F.silu(self.norm(x)))))


@register_temporal(TemporalKind.CONV3D)
class TemporalConv3d(_TemporalConvBase):
    """``conv``: Conv3d ``(kernel_t, kernel_s, kernel_s)`` (zero-init)."""

    def __init__(self, sig: BlockSignature) -> None:
        super().__init__(sig)
        kt, ks = sig.kernel_t, sig.kernel_s
        self.conv = zero_(nn.Conv3d(self.c, self.c, (kt, ks, ks), padding=(kt // 2, ks // 2, ks // 2)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self._to_frames(self.conv(self._to_video(F.silu(self.norm(x)))))


@register_temporal(TemporalKind.CONV2P1D)
class TemporalConv2p1d(_TemporalConvBase):
    """(2+1)D: ``conv_s`` 2-D ``kernel_s x kernel_s`` per frame -> SiLU -> ``conv_t`` Conv3d
    ``(kernel_t, 1, 1)`` (zero-init)."""

    def __init__(self, sig: BlockSignature) -> None:
        super().__init__(sig)
        kt, ks = sig.kernel_t, sig.kernel_s
        self.conv_s = nn.Conv2d(self.c, self.c, ks, padding=ks // 2)
        self.conv_t = zero_(nn.Conv3d(self.c, self.c, (kt, 1, 1), padding=(kt // 2, 0, 0)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.silu(self.conv_s(F.silu(self.norm(x))))
        return x + self._to_frames(self.conv_t(self._to_video(h)))


class _TemporalAttentionBase(nn.Module):
    """GroupNorm -> layout change -> ``proj_in`` (Linear) + position table -> LayerNorm+self-attn
    (``attn1``) -> [LayerNorm+cross-attn to text (``attn2``)] -> LayerNorm+GEGLU FFN (``ff``)
    -> ``proj_out`` (Linear, zero-init) -> back to frames, residual."""

    kind: TemporalKind
    three_d: bool = False
    cross: bool = False

    def __init__(self, sig: BlockSignature) -> None:
        super().__init__()
        self.t, self.c, self.h, self.w = sig.frames, sig.in_channels, sig.height, sig.width
        c = self.c
        self.norm = nn.GroupNorm(sig.norm_groups, c, eps=1e-6)
        self.proj_in = nn.Linear(c, c)
        self.register_buffer("pos_embed", sinusoidal_table(self.t, c), persistent=False)
        self.norm1 = nn.LayerNorm(c)
        self.attn1 = Attention(c, sig.heads)
        if self.cross:
            self.norm2 = nn.LayerNorm(c)
            self.attn2 = Attention(c, sig.heads, sig.context_dim)
        self.norm3 = nn.LayerNorm(c)
        self.ff = FeedForward(c)
        self.proj_out = zero_(nn.Linear(c, c))

    def _tokens(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c, hw = x.shape[0] // self.t, self.t, self.c, self.h * self.w
        h = self.norm(x).reshape(b, t, c, hw)
        if self.three_d:  # (B, T, HW, C) -> (B, T*HW, C)
            h = self.proj_in(h.permute(0, 1, 3, 2)) + self.pos_embed[None, :, None, :]
            return h.reshape(b, t * hw, c)
        # (B, HW, T, C) -> (B*HW, T, C)
        h = self.proj_in(h.permute(0, 3, 1, 2)) + self.pos_embed[None, None, :, :]
        return h.reshape(b * hw, t, c)

    def _frames(self, h: torch.Tensor) -> torch.Tensor:
        t, c, hw = self.t, self.c, self.h * self.w
        b = h.shape[0] if self.three_d else h.shape[0] // hw
        if self.three_d:
            h = h.reshape(b, t, hw, c).permute(0, 1, 3, 2)
        else:
            h = h.reshape(b, hw, t, c).permute(0, 2, 3, 1)
        return h.reshape(b * t, c, self.h, self.w)

    def _branch(self, x: torch.Tensor, text: torch.Tensor | None) -> torch.Tensor:
        h = self._tokens(x)
        h = h + self.attn1(self.norm1(h))
        if self.cross:
            h = h + self.attn2(self.norm2(h), text)
        h = h + self.ff(self.norm3(h))
        return self._frames(self.proj_out(h))


@register_temporal(TemporalKind.ATTN1D)
class TemporalAttention1d(_TemporalAttentionBase):
    """Self-attention along T at each spatial position. ``forward(x (B*T, C, H, W))``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self._branch(x, None)


@register_temporal(TemporalKind.ATTN3D)
class TemporalAttention3d(_TemporalAttentionBase):
    """Self-attention over all T*H*W tokens of a video. ``forward(x (B*T, C, H, W))``."""

    three_d = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self._branch(x, None)


@register_temporal(TemporalKind.XATTN1D)
class TemporalCrossAttention1d(_TemporalAttentionBase):
    """``attn1d`` plus cross-attention to the text. ``forward(x (B*T, C, H, W), text (B, L, D))``."""

    cross = True

    def forward(self, x: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        return x + self._branch(x, text)


@register_temporal(TemporalKind.XATTN3D)
class TemporalCrossAttention3d(_TemporalAttentionBase):
    """``attn3d`` plus cross-attention to the text. ``forward(x (B*T, C, H, W), text (B, L, D))``."""

    three_d = True
    cross = True

    def forward(self, x: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        return x + self._branch(x, text)
