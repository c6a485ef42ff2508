"""THE geometry function: every block of a candidate network with the shapes it sees.

``network_blocks(backbone, task, arch)`` is the only place shapes are computed. The torch
builder, analytic params/FLOPs/memory, latency features and the probe set all derive from it.
Torch-free.

Spatial blocks process ``batch * frames`` images of ``(channels, height, width)``; temporal
blocks see the same activations as ``(batch, channels, frames, height, width)``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from enum import Enum
from typing import Any

from common.limits import SPACE_RANGES, check_range
from search_space.arch import ArchConfig, StageChoice, TemporalKind
from search_space.backbone import BackboneSpec, StageRole, StageSpec
from search_space.errors import ConfigError
from search_space.task import VideoTask


class BlockOp(str, Enum):
    CONV_IN = "conv_in"
    TIME_EMBED = "time_embed"
    RESNET = "resnet"
    SPATIAL_TRANSFORMER = "spatial_transformer"
    TEMPORAL = "temporal"
    DOWNSAMPLE = "downsample"
    UPSAMPLE = "upsample"
    CONV_OUT = "conv_out"


@dataclass(frozen=True)
class BlockSignature:
    """Everything a block's cost depends on (and nothing about where it sits).

    Fields a block type does not use are 0/False. ``in_channels`` excludes the skip tensor
    that an up-stage ResNet concatenates (``skip_channels``); ``height``/``width`` are the
    input's; ``frames``/``batch`` are the video's T and B.
    """

    op: BlockOp
    kind: TemporalKind = TemporalKind.NONE
    in_channels: int = 0
    out_channels: int = 0
    skip_channels: int = 0
    batch: int = 1
    frames: int = 1
    height: int = 1
    width: int = 1
    heads: int = 0
    depth: int = 0
    kernel_t: int = 0
    kernel_s: int = 0
    context_tokens: int = 0
    context_dim: int = 0
    temb_dim: int = 0
    norm_groups: int = 0
    self_attn: bool = False
    linear_projection: bool = False

    @property
    def op_name(self) -> str:
        """``resnet``, ``spatial_transformer``, ``temporal:attn1d`` ... (for tables and CSVs)."""
        return f"temporal:{self.kind.value}" if self.op is BlockOp.TEMPORAL else self.op.value

    @property
    def images(self) -> int:
        """Number of 2-D images a spatial block processes: ``batch * frames``."""
        return self.batch * self.frames

    @property
    def out_height(self) -> int:
        return {BlockOp.DOWNSAMPLE: self.height // 2, BlockOp.UPSAMPLE: self.height * 2}.get(
            self.op, self.height)

    @property
    def out_width(self) -> int:
        return {BlockOp.DOWNSAMPLE: self.width // 2, BlockOp.UPSAMPLE: self.width * 2}.get(
            self.op, self.width)

    @property
    def in_shape(self) -> tuple[int, int, int, int, int]:
        """Input as ``(B, C_in + C_skip, T, H, W)`` (time embedding: ``(B, C_in, 1, 1, 1)``)."""
        return (self.batch, self.in_channels + self.skip_channels, self.frames, self.height, self.width)

    @property
    def out_shape(self) -> tuple[int, int, int, int, int]:
        return (self.batch, self.out_channels, self.frames, self.out_height, self.out_width)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["op"] = self.op.value
        d["kind"] = self.kind.value
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "signature") -> BlockSignature:
        kw: dict[str, Any] = {}
        for f in fields(cls):
            if f.name not in data:
                raise ConfigError(f"{where}: missing {f.name!r}")
            v = data[f.name]
            try:
                if f.name == "op":
                    kw[f.name] = BlockOp(v)
                elif f.name == "kind":
                    kw[f.name] = TemporalKind(v)
                elif f.type in ("bool", bool):
                    kw[f.name] = v if isinstance(v, bool) else str(v).strip().lower() in ("1", "true")
                else:
                    kw[f.name] = int(v)
            except (TypeError, ValueError):
                raise ConfigError(f"{where}.{f.name}: bad value {v!r}") from None
        return cls(**kw)


@dataclass(frozen=True)
class BlockInstance:
    """One block of a built network: its signature plus where it sits.

    ``path`` is the module path in the built ``nn.Module`` (``stages.down1.temporal.0``).
    ``unit`` is the index of the (ResNet [+ transformer]) unit it belongs to (-1 for resamplers
    and the stem/head).
    """

    sig: BlockSignature
    stage: str
    unit: int
    path: str

    @property
    def op(self) -> BlockOp:
        return self.sig.op


def validate_arch(backbone: BackboneSpec, arch: ArchConfig, where: str = "arch") -> None:
    """Raise :class:`ConfigError` naming the first problem of ``arch`` for ``backbone``."""
    ids = backbone.stage_ids
    got = tuple(s for s, _ in arch.stages)
    if set(got) != set(ids) or len(got) != len(ids):
        missing = sorted(set(ids) - set(got))
        extra = sorted(set(got) - set(ids))
        what = f"unknown stage {extra[0]!r}" if extra else f"missing stage {missing[0]!r}"
        raise ConfigError(f"{where}.stages: {what} for backbone {backbone.name!r} "
                          f"(stages: {', '.join(ids)})")
    validate_task(backbone, arch.task, f"{where}.task")
    for sid, c in arch.stages:
        validate_choice(backbone.stage(sid), c, f"{where}.stages.{sid}")


def validate_task(backbone: BackboneSpec, task: VideoTask, where: str = "task") -> None:
    """Raise :class:`ConfigError` unless ``backbone`` can run ``task``: text and latent
    channels match, the latent size survives every downsampling."""
    if task.text_dim != backbone.cross_attention_dim:
        raise ConfigError(f"{where}.text_dim: {task.text_dim} must equal the backbone's "
                          f"cross_attention_dim {backbone.cross_attention_dim}")
    if backbone.latent_channels and task.latent_channels != backbone.latent_channels:
        raise ConfigError(f"{where}.latent_channels: {task.latent_channels} must equal the "
                          f"backbone's in/out channels {backbone.latent_channels}")
    f = 2 ** (backbone.num_levels - 1)
    for key in ("latent_height", "latent_width"):
        if getattr(task, key) % f:
            raise ConfigError(f"{where}.{key}: {getattr(task, key)} must be divisible by "
                              f"{f} ({backbone.num_levels} resolution levels)")


def validate_choice(stage: StageSpec, c: StageChoice, where: str) -> None:
    if c.is_none:
        return
    if c.count > stage.units:
        raise ConfigError(f"{where}.count: {c.count} exceeds the {stage.units} unit(s) of stage "
                          f"{stage.id}")
    if c.kind.is_attention:
        if c.heads < 1:
            raise ConfigError(f"{where}.heads: {c.kind.value} needs heads >= 1")
        if stage.channels % c.heads:
            raise ConfigError(f"{where}.heads: {c.heads} does not divide the {stage.channels} "
                              f"channels of stage {stage.id}")
    else:
        if c.kernel_t < 1 or c.kernel_t % 2 == 0:
            raise ConfigError(f"{where}.kernel_t: must be an odd integer >= 1, got {c.kernel_t}")
        if c.kind.uses_kernel_s and (c.kernel_s < 1 or c.kernel_s % 2 == 0):
            raise ConfigError(f"{where}.kernel_s: must be an odd integer >= 1, got {c.kernel_s}")
        for key in ("kernel_t", "kernel_s"):
            check_range(f"{where}.{key}", getattr(c, key), (0, SPACE_RANGES[key][1]))


def network_blocks(backbone: BackboneSpec, task: VideoTask, arch: ArchConfig) -> tuple[BlockInstance, ...]:
    """Every block of the video UNet ``arch`` in execution order, with its shapes.

    Raises :class:`ConfigError` if ``arch`` does not fit ``backbone``.
    """
    arch = arch if arch.task == task else arch.with_task(task)
    validate_arch(backbone, arch)
    return _blocks(backbone, task, arch.stages)


def image_blocks(backbone: BackboneSpec, task: VideoTask) -> tuple[BlockInstance, ...]:
    """The blocks of the image backbone alone (no temporal layers)."""
    return _blocks(backbone, task, tuple((s, StageChoice()) for s in backbone.stage_ids))


def _blocks(backbone: BackboneSpec, task: VideoTask,
            choices: tuple[tuple[str, StageChoice], ...]) -> tuple[BlockInstance, ...]:
    B, T = task.batch, task.num_frames
    H0, W0 = task.latent_height, task.latent_width
    G, temb = backbone.norm_groups, backbone.time_embed_dim
    ctx_tokens, ctx_dim = task.text_tokens, backbone.cross_attention_dim
    common = dict(batch=B, frames=T)
    out: list[BlockInstance] = []
    c0 = backbone.base_channels
    out.append(BlockInstance(BlockSignature(BlockOp.TIME_EMBED, in_channels=c0, out_channels=temb,
                                            batch=B, frames=T), "stem", -1, "time_embed"))
    out.append(BlockInstance(BlockSignature(BlockOp.CONV_IN, in_channels=task.latent_channels,
                                            out_channels=c0, height=H0, width=W0, **common),
                             "stem", -1, "conv_in"))
    skips: list[tuple[int, int]] = [(c0, 0)]  # (channels, level) of tensors saved for up stages
    ch = c0
    choice_of = dict(choices)
    n = backbone.num_levels
    for st in backbone.stages:
        H, W = H0 >> st.level, W0 >> st.level
        c = choice_of[st.id]
        p = f"stages.{st.id}"
        for u in range(st.units):
            skip = 0
            if st.role is StageRole.UP and skips and skips[-1][1] == st.level:
                skip = skips.pop()[0]
            out.append(BlockInstance(BlockSignature(
                BlockOp.RESNET, in_channels=ch, out_channels=st.channels, skip_channels=skip,
                height=H, width=W, temb_dim=temb, norm_groups=G, **common), st.id, u, f"{p}.resnets.{u}"))
            ch = st.channels
            if u < st.transformers:
                out.append(BlockInstance(BlockSignature(
                    BlockOp.SPATIAL_TRANSFORMER, in_channels=ch, out_channels=ch, height=H, width=W,
                    heads=st.heads, depth=st.transformer_depth, context_tokens=ctx_tokens,
                    context_dim=ctx_dim, norm_groups=G, self_attn=st.self_attn,
                    linear_projection=backbone.linear_projection, **common),
                    st.id, u, f"{p}.transformers.{u}"))
            if u < c.count:
                k = c.kind
                out.append(BlockInstance(BlockSignature(
                    BlockOp.TEMPORAL, kind=k, in_channels=ch, out_channels=ch, height=H, width=W,
                    heads=c.heads, kernel_t=c.kernel_t, kernel_s=c.kernel_s,
                    context_tokens=ctx_tokens if k.has_cross_attention else 0,
                    context_dim=ctx_dim if k.has_cross_attention else 0,
                    norm_groups=G, **common), st.id, u, f"{p}.temporal.{u}"))
            if st.role is StageRole.DOWN:
                skips.append((ch, st.level))
        if st.role is StageRole.DOWN and st.level < n - 1:
            out.append(BlockInstance(BlockSignature(BlockOp.DOWNSAMPLE, in_channels=ch, out_channels=ch,
                                                    height=H, width=W, **common), st.id, -1, f"{p}.resample"))
            skips.append((ch, st.level + 1))
        if st.role is StageRole.UP:
            while skips and skips[-1][1] == st.level:  # skips this stage had no unit for
                skips.pop()
            if st.level > 0:
                out.append(BlockInstance(BlockSignature(BlockOp.UPSAMPLE, in_channels=ch, out_channels=ch,
                                                        height=H, width=W, **common), st.id, -1, f"{p}.resample"))
    out.append(BlockInstance(BlockSignature(BlockOp.CONV_OUT, in_channels=ch, out_channels=task.latent_channels,
                                            height=H0, width=W0, norm_groups=G, **common),
                             "head", -1, "conv_out"))
    return tuple(out)


def stage_resolution(backbone: BackboneSpec, task: VideoTask, stage_id: str) -> tuple[int, int]:
    """``(height, width)`` of the activations in ``stage_id``."""
    lvl = backbone.stage(stage_id).level
    return task.latent_height >> lvl, task.latent_width >> lvl


@dataclass(frozen=True)
class SkipRoute:
    """How one block touches the UNet skip connections.

    ``saves``: the block's output is saved as a skip tensor (conv_in, the last block of every
    down-stage unit, downsamplers). ``takes``: index (in save order) of the skip tensor an
    up-stage ResNet concatenates to its input, -1 for none. ``drops``: indices of saved skips
    that are released before this block runs (consumed earlier or never consumed because the
    up stage has fewer units than skips at its resolution).
    """

    saves: bool
    takes: int
    drops: tuple[int, ...] = ()


def skip_routes(blocks: tuple[BlockInstance, ...]) -> tuple[SkipRoute, ...]:
    """The skip routing of ``network_blocks(...)``, one :class:`SkipRoute` per block.

    Derived from the blocks alone (stage ids, units, ``skip_channels``, heights): a ResNet with
    ``skip_channels > 0`` takes the most recently saved skip of its height, after dropping
    saved skips of lower resolution (left over by the previous up stage).
    """
    last_of_unit: dict[tuple[str, int], int] = {}
    for i, b in enumerate(blocks):
        if b.stage.startswith("down") and b.unit >= 0:
            last_of_unit[(b.stage, b.unit)] = i
    saves = [b.op is BlockOp.CONV_IN or b.op is BlockOp.DOWNSAMPLE
             or last_of_unit.get((b.stage, b.unit)) == i for i, b in enumerate(blocks)]
    stack: list[tuple[int, int, int]] = []  # (save index, channels, height)
    n_saved = 0
    routes: list[SkipRoute] = []
    for i, b in enumerate(blocks):
        takes, drops = -1, []
        if b.op is BlockOp.RESNET and b.sig.skip_channels:
            while stack and stack[-1][2] < b.sig.height:
                drops.append(stack.pop()[0])
            if not stack or stack[-1][1:] != (b.sig.skip_channels, b.sig.height):
                raise ConfigError(f"{b.path}: no saved skip of {b.sig.skip_channels} channels at "
                                  f"height {b.sig.height} (inconsistent blocks)")
            takes = stack.pop()[0]
        if saves[i]:
            stack.append((n_saved, b.sig.out_channels, b.sig.out_height))
            n_saved += 1
        routes.append(SkipRoute(saves[i], takes, tuple(drops)))
    return tuple(routes)
