"""Building blocks shared by spatial and temporal modules (diffusers-compatible names).

All shapes are static: every module takes its sizes from a :class:`BlockSignature` at
construction, and ``forward`` only reshapes to those sizes (Core ML convertible).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class Attention(nn.Module):
    """Multi-head attention with diffusers' parameter layout.

    ``to_q``/``to_k``/``to_v`` have no bias, ``to_out.0`` has one. ``forward(x (N, S, C),
    context (N', S_kv, D) | None) -> (N, S, C)``. With a context whose batch ``N'`` divides
    ``N`` the query tokens are regrouped to ``(N', N/N' * S, C)`` first (all queries of one
    video attend to the same text), which keeps the text K/V unrepeated.
    """

    def __init__(self, query_dim: int, heads: int, context_dim: int | None = None) -> None:
        super().__init__()
        if query_dim % heads:
            raise ValueError(f"heads {heads} must divide {query_dim}")
        self.heads = heads
        self.head_dim = query_dim // heads
        kv_dim = context_dim or query_dim
        self.to_q = nn.Linear(query_dim, query_dim, bias=False)
        self.to_k = nn.Linear(kv_dim, query_dim, bias=False)
        self.to_v = nn.Linear(kv_dim, query_dim, bias=False)
        self.to_out = nn.ModuleList([nn.Linear(query_dim, query_dim)])

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        n, s, c = x.shape
        ctx = x if context is None else context
        q = self.to_q(x)
        k = self.to_k(ctx)
        v = self.to_v(ctx)
        nk, sk = k.shape[0], k.shape[1]
        h, d = self.heads, self.head_dim
        q = q.reshape(nk, (n // nk) * s, h, d).transpose(1, 2)
        k = k.reshape(nk, sk, h, d).transpose(1, 2)
        v = v.reshape(nk, sk, h, d).transpose(1, 2)
        o = F.scaled_dot_product_attention(q, k, v)
        o = o.transpose(1, 2).reshape(n, s, c)
        return self.to_out[0](o)


class GEGLU(nn.Module):
    """``proj: Linear(C, 2*inner)``; output ``a * gelu(gate)``."""

    def __init__(self, dim: int, inner: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim, 2 * inner)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, gate = self.proj(x).chunk(2, dim=-1)
        return a * F.gelu(gate)


class FeedForward(nn.Module):
    """diffusers' ``FeedForward`` with GEGLU: ``net.0.proj`` (C -> 8C), ``net.2`` (4C -> C)."""

    MULT = 4

    def __init__(self, dim: int) -> None:
        super().__init__()
        inner = self.MULT * dim
        self.net = nn.ModuleList([GEGLU(dim, inner), nn.Identity(), nn.Linear(inner, dim)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for m in self.net:
            x = m(x)
        return x


def sinusoidal_table(length: int, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """``(length, dim)`` sin/cos position table (positions 0..length-1)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half)
    ang = torch.arange(length, dtype=torch.float32)[:, None] * freqs[None]
    table = torch.cat([torch.sin(ang), torch.cos(ang)], dim=-1)
    if dim % 2:
        table = F.pad(table, (0, 1))
    return table


def zero_(module: nn.Module) -> nn.Module:
    """Zero every parameter of ``module`` (residual branches start as exact no-ops)."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module
