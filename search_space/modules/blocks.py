"""One block standalone: ``build_block(sig)``, ``input_specs(sig)`` and ``example_inputs(sig)``.

Contract (what latency probes and Core ML export rely on), ``N = batch * frames``:

==========================  ========================================================  ===============
op                          inputs (in order)                                        output
==========================  ========================================================  ===============
time_embed                  ``timesteps (B,)`` float32                                ``(N, temb)``
conv_in                     ``x (N, C_lat, H, W)``                                    ``(N, C0, H, W)``
resnet                      ``x (N, C_in + C_skip, H, W)``, ``temb (N, temb_dim)``   ``(N, C_out, H, W)``
spatial_transformer         ``x (N, C, H, W)``, ``text (N, tokens, D)``              ``(N, C, H, W)``
temporal (conv*, attn*)     ``x (N, C, H, W)``                                        ``(N, C, H, W)``
temporal (xattn*)           ``x (N, C, H, W)``, ``text (B, tokens, D)``              ``(N, C, H, W)``
downsample / upsample       ``x (N, C, H, W)``                                        ``(N, C, H/2|2H, W/2|2W)``
conv_out                    ``x (N, C0, H, W)``                                       ``(N, C_lat, H, W)``
==========================  ========================================================  ===============
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from search_space.arch import TemporalKind
from search_space.geometry import BlockInstance, BlockOp, BlockSignature
from search_space.modules import spatial
from search_space.modules.temporal import TEMPORAL_BLOCKS

SPATIAL_BLOCKS: dict[BlockOp, Callable[[BlockSignature], nn.Module]] = {
    BlockOp.TIME_EMBED: spatial.TimeEmbedding,
    BlockOp.CONV_IN: spatial.ConvIn,
    BlockOp.RESNET: spatial.ResnetBlock,
    BlockOp.SPATIAL_TRANSFORMER: spatial.SpatialTransformer,
    BlockOp.DOWNSAMPLE: spatial.Downsample,
    BlockOp.UPSAMPLE: spatial.Upsample,
    BlockOp.CONV_OUT: spatial.ConvOut,
}


def _sig(block: BlockInstance | BlockSignature) -> BlockSignature:
    return block.sig if isinstance(block, BlockInstance) else block


def build_block(block: BlockInstance | BlockSignature) -> nn.Module:
    """The module of one block (fresh init; temporal blocks start as identities)."""
    sig = _sig(block)
    if sig.op is BlockOp.TEMPORAL:
        if sig.kind is TemporalKind.NONE or sig.kind not in TEMPORAL_BLOCKS:
            raise ValueError(f"no temporal module registered for kind {sig.kind.value!r}")
        return TEMPORAL_BLOCKS[sig.kind](sig)
    return SPATIAL_BLOCKS[sig.op](sig)


def input_specs(block: BlockInstance | BlockSignature) -> tuple[tuple[str, tuple[int, ...]], ...]:
    """``((name, shape), ...)`` of the block's forward inputs, in call order (all float)."""
    s = _sig(block)
    n = s.images
    x = ("x", (n, s.in_channels + s.skip_channels, s.height, s.width))
    if s.op is BlockOp.TIME_EMBED:
        return (("timesteps", (s.batch,)),)
    if s.op is BlockOp.RESNET:
        return (x, ("temb", (n, s.temb_dim)))
    if s.op is BlockOp.SPATIAL_TRANSFORMER:
        return (x, ("text", (n, s.context_tokens, s.context_dim)))
    if s.op is BlockOp.TEMPORAL and s.kind.has_cross_attention:
        return (x, ("text", (s.batch, s.context_tokens, s.context_dim)))
    return (x,)


def output_shape(block: BlockInstance | BlockSignature) -> tuple[int, ...]:
    """Shape of the block's output in the spatial layout (``(N, temb)`` for time_embed)."""
    s = _sig(block)
    if s.op is BlockOp.TIME_EMBED:
        return (s.images, s.out_channels)
    return (s.images, s.out_channels, s.out_height, s.out_width)


def example_inputs(block: BlockInstance | BlockSignature, *, seed: int = 0,
                   dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, ...]:
    """Random inputs of the shapes in :func:`input_specs` (timesteps uniform in [0, 1000))."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for name, shape in input_specs(block):
        if name == "timesteps":
            out.append(torch.rand(shape, generator=gen).mul(1000.0).to(dtype))
        else:
            out.append(torch.randn(shape, generator=gen).to(dtype))
    return tuple(out)
