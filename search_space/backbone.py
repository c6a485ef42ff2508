"""The image UNet backbone: which spatial blocks each stage holds.

Stages are ``down0..down{N-1}``, ``mid``, ``up0..up{N-1}``. As in diffusers, ``up0`` is the
*lowest*-resolution up stage (it mirrors ``down{N-1}``) and ``up{N-1}`` the full-resolution one.
A stage is a sequence of *units*: unit ``i`` is ResNet ``i`` followed by a spatial transformer
when ``i < transformers``. Down stages except the last end in a stride-2 downsample; up stages
except the last end in a nearest-2x upsample. Up-stage ResNets concatenate the skip tensors
saved at their resolution (one per unit while skips of that resolution remain).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from enum import Enum
from typing import Any

from common.limits import BACKBONE_RANGES, check_range
from search_space.errors import ConfigError


class StageRole(str, Enum):
    DOWN = "down"
    MID = "mid"
    UP = "up"


@dataclass(frozen=True)
class StageSpec:
    """One UNet stage of the image backbone.

    ``level`` is the resolution level: the stage works on ``latent / 2**level`` pixels.
    ``heads`` is the number of heads of its spatial transformers (head dim = channels / heads).
    """

    id: str
    role: StageRole
    level: int
    channels: int
    resnets: int
    transformers: int = 0
    transformer_depth: int = 1
    heads: int = 8
    self_attn: bool = True

    @property
    def units(self) -> int:
        """Number of (ResNet [+ transformer]) units: the most temporal blocks the stage can host."""
        return self.resnets


@dataclass(frozen=True)
class BackboneSpec:
    """An image diffusion UNet (SD-v1.5-like family), described stage by stage.

    ``linear_projection``: transformer ``proj_in``/``proj_out`` are ``Linear`` (SD 2.x) rather
    than 1x1 convolutions (SD 1.x). ``time_embed_dim`` defaults to 4x the first level's channels.
    ``latent_channels``: the latent channels ``conv_in``/``conv_out`` are made for (a diffusers
    UNet's ``in_channels``); 0 = any (the task decides), the presets' case.
    """

    name: str
    stages: tuple[StageSpec, ...]
    cross_attention_dim: int
    norm_groups: int = 32
    linear_projection: bool = False
    time_embed_dim: int = 0
    notes: str = ""
    latent_channels: int = 0

    def __post_init__(self) -> None:
        if self.time_embed_dim == 0 and self.stages:
            object.__setattr__(self, "time_embed_dim", 4 * self.stages[0].channels)
        self.validate()

    # ---- structure ---------------------------------------------------------------------------
    @property
    def num_levels(self) -> int:
        return sum(1 for s in self.stages if s.role is StageRole.DOWN)

    @property
    def stage_ids(self) -> tuple[str, ...]:
        return tuple(s.id for s in self.stages)

    @property
    def base_channels(self) -> int:
        return self.stages[0].channels

    def stage(self, stage_id: str) -> StageSpec:
        for s in self.stages:
            if s.id == stage_id:
                return s
        raise ConfigError(f"unknown stage {stage_id!r} for backbone {self.name!r} "
                          f"(stages: {', '.join(self.stage_ids)})")

    def validate(self) -> None:
        self._check_ranges()
        n = self.num_levels
        if n < 1:
            raise ConfigError(f"backbone {self.name!r}: needs at least one down stage")
        expected = [f"down{i}" for i in range(n)] + ["mid"] + [f"up{i}" for i in range(n)]
        if list(self.stage_ids) != expected:
            raise ConfigError(f"backbone {self.name!r}: stages must be {', '.join(expected)} "
                              f"in that order, got {', '.join(self.stage_ids)}")
        for s in self.stages:
            where = f"backbone {self.name!r} stage {s.id}"
            want_level = {StageRole.DOWN: int(s.id[4:]) if s.id.startswith("down") else -1,
                          StageRole.MID: n - 1,
                          StageRole.UP: n - 1 - int(s.id[2:]) if s.id.startswith("up") else -1}[s.role]
            if s.level != want_level:
                raise ConfigError(f"{where}: level must be {want_level}, got {s.level}")
            if s.channels < 1 or s.channels % self.norm_groups:
                raise ConfigError(f"{where}: channels {s.channels} must be a positive multiple "
                                  f"of norm_groups {self.norm_groups}")
            if s.resnets < 1:
                raise ConfigError(f"{where}: resnets must be >= 1, got {s.resnets}")
            if not 0 <= s.transformers <= s.resnets:
                raise ConfigError(f"{where}: transformers must be in 0..resnets ({s.resnets}), "
                                  f"got {s.transformers}")
            if s.transformer_depth < 1:
                raise ConfigError(f"{where}: transformer_depth must be >= 1")
            if s.heads < 1 or s.channels % s.heads:
                raise ConfigError(f"{where}: heads {s.heads} must divide channels {s.channels}")
        for i in range(n):
            d, u = self.stage(f"down{i}"), self.stage(f"up{n - 1 - i}")
            if d.channels != u.channels:
                raise ConfigError(f"backbone {self.name!r}: down{i} and up{n - 1 - i} share level "
                                  f"{i} and must have equal channels ({d.channels} != {u.channels})")
        if self.stage("mid").channels != self.stage(f"down{n - 1}").channels:
            raise ConfigError(f"backbone {self.name!r}: mid must have the channels of down{n - 1}")
        if self.cross_attention_dim < 1:
            raise ConfigError(f"backbone {self.name!r}: cross_attention_dim must be >= 1")
        if self.latent_channels < 0:
            raise ConfigError(f"backbone {self.name!r}: latent_channels must be >= 0")

    def _check_ranges(self) -> None:
        """Every size within :data:`common.limits.BACKBONE_RANGES` (before any arithmetic)."""
        R = BACKBONE_RANGES
        head = f"backbone {self.name!r}"
        check_range(f"{head}: number of levels (down stages)", self.num_levels, R["levels"])
        for key in ("norm_groups", "cross_attention_dim", "time_embed_dim", "latent_channels"):
            check_range(f"{head}: {key}", getattr(self, key), R[key])
        for s in self.stages:
            for key in ("channels", "resnets", "transformers", "transformer_depth", "heads"):
                check_range(f"{head} stage {s.id}: {key}", getattr(s, key), R[key])

    # ---- derived backbones -------------------------------------------------------------------
    def scaled(self, width_mult: float, multiple: int | None = None) -> BackboneSpec:
        """The same topology with every width multiplied by ``width_mult``.

        Channels are rounded to a multiple of ``multiple`` (default: ``norm_groups``); head
        counts are kept when they still divide the channels, else the largest smaller divisor
        of the channels is used.
        """
        if width_mult == 1.0:
            return self
        m = multiple or self.norm_groups
        stages = []
        for s in self.stages:
            c = max(m, int(round(s.channels * width_mult / m)) * m)
            h = max(d for d in range(1, s.heads + 1) if c % d == 0)
            stages.append(replace(s, channels=c, heads=h))
        cross = max(m, int(round(self.cross_attention_dim * width_mult / m)) * m)
        return replace(self, name=f"{self.name}@w{width_mult:g}", stages=tuple(stages),
                       cross_attention_dim=cross, time_embed_dim=4 * stages[0].channels)

    # ---- serialization -----------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["stages"] = [{**asdict(s), "role": s.role.value} for s in self.stages]
        if not self.latent_channels:  # unconstrained: keep the dicts (and cache keys) of before
            del d["latent_channels"]
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "backbone") -> BackboneSpec:
        if not isinstance(data, Mapping):
            raise ConfigError(f"{where}: expected a mapping")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"{where}.{unknown[0]}: unknown key")
        raw_stages = data.get("stages")
        if not isinstance(raw_stages, list) or not raw_stages:
            raise ConfigError(f"{where}.stages: expected a non-empty list")
        skeys = {f.name for f in fields(StageSpec)}
        stages = []
        for i, st in enumerate(raw_stages):
            if not isinstance(st, Mapping):
                raise ConfigError(f"{where}.stages[{i}]: expected a mapping")
            bad = sorted(set(st) - skeys)
            if bad:
                raise ConfigError(f"{where}.stages[{i}].{bad[0]}: unknown key")
            try:
                st = dict(st)
                st["role"] = StageRole(st.get("role"))
                stages.append(StageSpec(**st))
            except (TypeError, ValueError) as e:
                raise ConfigError(f"{where}.stages[{i}]: {e}") from None
        rest = {k: v for k, v in data.items() if k != "stages"}
        try:
            return cls(stages=tuple(stages), **rest)
        except TypeError as e:
            raise ConfigError(f"{where}: {e}") from None


def unet(
    name: str,
    channels: tuple[int, ...],
    *,
    down_resnets: tuple[int, ...],
    up_resnets: tuple[int, ...],
    down_transformers: tuple[int, ...],
    up_transformers: tuple[int, ...],
    mid_resnets: int = 2,
    mid_transformers: int = 1,
    transformer_depth: tuple[int, ...] | int = 1,
    heads: tuple[int, ...] | None = None,
    head_dim: int | None = None,
    self_attn: tuple[bool, ...] | None = None,
    cross_attention_dim: int,
    norm_groups: int = 32,
    linear_projection: bool = False,
    notes: str = "",
) -> BackboneSpec:
    """Build a :class:`BackboneSpec` from per-level lists (level 0 = full resolution).

    ``up_*`` lists are given per *level* too (index 0 = full-resolution up stage), which is how
    model cards describe them; they are mapped to ``up{N-1-level}``. Give ``heads`` per level or
    a ``head_dim`` (heads = channels / head_dim).
    """
    n = len(channels)
    depth = (transformer_depth,) * n if isinstance(transformer_depth, int) else transformer_depth
    if heads is None:
        if head_dim is None:
            raise ConfigError(f"backbone {name!r}: give heads or head_dim")
        heads = tuple(max(1, c // head_dim) for c in channels)
    sa = self_attn or (True,) * n
    stages: list[StageSpec] = []
    for lvl in range(n):
        stages.append(StageSpec(f"down{lvl}", StageRole.DOWN, lvl, channels[lvl], down_resnets[lvl],
                                down_transformers[lvl], depth[lvl], heads[lvl], sa[lvl]))
    stages.append(StageSpec("mid", StageRole.MID, n - 1, channels[-1], mid_resnets,
                            mid_transformers, depth[-1], heads[-1], sa[-1]))
    for i in range(n):
        lvl = n - 1 - i
        stages.append(StageSpec(f"up{i}", StageRole.UP, lvl, channels[lvl], up_resnets[lvl],
                                up_transformers[lvl], depth[lvl], heads[lvl], sa[lvl]))
    return BackboneSpec(name, tuple(stages), cross_attention_dim, norm_groups,
                        linear_projection, notes=notes)
