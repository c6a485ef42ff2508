"""One block standalone: ``build_block(sig)``, the module registry of every block op.

Inputs and outputs of a standalone block are in :mod:`search_space.modules.inputs`.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from search_space.arch import TemporalKind
from search_space.geometry import BlockInstance, BlockOp, BlockSignature
from search_space.modules.spatial import (
    ConvIn,
    ConvOut,
    Downsample,
    ResnetBlock,
    SpatialTransformer,
    TimeEmbedding,
    Upsample,
)
from search_space.modules.temporal import TEMPORAL_BLOCKS

SPATIAL_BLOCKS: dict[BlockOp, Callable[[BlockSignature], nn.Module]] = {
    BlockOp.TIME_EMBED: TimeEmbedding,
    BlockOp.CONV_IN: ConvIn,
    BlockOp.RESNET: ResnetBlock,
    BlockOp.SPATIAL_TRANSFORMER: SpatialTransformer,
    BlockOp.DOWNSAMPLE: Downsample,
    BlockOp.UPSAMPLE: Upsample,
    BlockOp.CONV_OUT: ConvOut,
}


def build_block(block: BlockInstance | BlockSignature) -> nn.Module:
    """The module of one block (fresh init; temporal blocks start as identities)."""
    sig = block.sig if isinstance(block, BlockInstance) else block
    if sig.op is BlockOp.TEMPORAL:
        if sig.kind is TemporalKind.NONE or sig.kind not in TEMPORAL_BLOCKS:
            raise ValueError(f"no temporal module registered for kind {sig.kind.value!r}")
        return TEMPORAL_BLOCKS[sig.kind](sig)
    return SPATIAL_BLOCKS[sig.op](sig)
