"""Helpers for the search_space tests (imported by name: tests dirs are not packages)."""

from __future__ import annotations

from search_space.arch import ArchConfig, StageChoice, TemporalKind
from search_space.backbone import BackboneSpec, unet
from search_space.task import VideoTask

K = TemporalKind
TEMPORAL_KINDS = tuple(k for k in TemporalKind if k is not TemporalKind.NONE)


def choice_for(kind: TemporalKind, count: int = 1) -> StageChoice:
    """A valid choice of ``kind`` for the tiny backbone (heads 2 divide 32 and 64)."""
    if kind.is_attention:
        return StageChoice(kind, count, heads=2)
    return StageChoice(kind, count, kernel_t=3, kernel_s=3)


def tiny_variant(self_attn: bool, linear_projection: bool) -> BackboneSpec:
    """Tiny-sized backbone exercising the other spatial-transformer options (depth 2,
    no self-attention at level 0, Linear projections)."""
    return unet(f"tiny_sa{int(self_attn)}_lin{int(linear_projection)}", (32, 64),
                down_resnets=(1, 1), up_resnets=(2, 2), down_transformers=(1, 1),
                up_transformers=(1, 1), heads=(2, 4), transformer_depth=(2, 1),
                self_attn=(self_attn, True), cross_attention_dim=32, norm_groups=8,
                linear_projection=linear_projection)


def mixed_arch(backbone: BackboneSpec, task: VideoTask) -> ArchConfig:
    """Every temporal kind somewhere in the tiny network."""
    return ArchConfig.create(backbone.name, task, {
        "down0": choice_for(K.XATTN1D), "down1": choice_for(K.CONV2P1D),
        "mid": StageChoice(K.XATTN3D, 1, heads=4), "up0": StageChoice(K.ATTN3D, 2, heads=4),
        "up1": StageChoice(K.CONV1D, 2, kernel_t=3)}, backbone.stage_ids)
