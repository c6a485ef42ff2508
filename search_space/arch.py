"""What a candidate video UNet is: one temporal choice per backbone stage.

Torch-free. ``ArchConfig.to_json()`` is canonical (sorted keys, inert fields zeroed) so that
equal networks get equal ``arch_id``s.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any

from common.limits import MAX_JSON_BYTES
from common.loaders import parse_json, read_text
from search_space.errors import ConfigError
from search_space.task import VideoTask

SCHEMA_VERSION = 1


class TemporalKind(str, Enum):
    """Kinds of temporal block.

    ``conv1d``: conv over T (kernel ``kernel_t x 1 x 1``); ``conv3d``: ``kernel_t x kernel_s x
    kernel_s``; ``conv2p1d``: spatial ``1 x ks x ks`` then temporal ``kt x 1 x 1``;
    ``attn1d``: self-attention along T at each spatial position; ``attn3d``: over all T*H*W
    tokens; ``xattn1d``/``xattn3d``: the same plus cross-attention to the text tokens.
    """

    NONE = "none"
    CONV1D = "conv1d"
    CONV3D = "conv3d"
    CONV2P1D = "conv2p1d"
    ATTN1D = "attn1d"
    ATTN3D = "attn3d"
    XATTN1D = "xattn1d"
    XATTN3D = "xattn3d"

    @property
    def is_attention(self) -> bool:
        return self in _ATTN

    @property
    def is_conv(self) -> bool:
        return self in _CONV

    @property
    def has_cross_attention(self) -> bool:
        return self in (TemporalKind.XATTN1D, TemporalKind.XATTN3D)

    @property
    def is_3d(self) -> bool:
        """Attention over all T*H*W tokens (rather than along T only)."""
        return self in (TemporalKind.ATTN3D, TemporalKind.XATTN3D)

    @property
    def uses_kernel_s(self) -> bool:
        return self in (TemporalKind.CONV3D, TemporalKind.CONV2P1D)

    @classmethod
    def parse(cls, value: Any, where: str) -> TemporalKind:
        if isinstance(value, cls):
            return value
        try:
            return cls(value)
        except ValueError:
            raise ConfigError(f"{where}: unknown temporal kind {value!r} "
                              f"(kinds: {', '.join(k.value for k in cls)})") from None


_ATTN = frozenset({TemporalKind.ATTN1D, TemporalKind.ATTN3D, TemporalKind.XATTN1D,
                   TemporalKind.XATTN3D})
_CONV = frozenset({TemporalKind.CONV1D, TemporalKind.CONV3D, TemporalKind.CONV2P1D})


def _int(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    return value


@dataclass(frozen=True)
class StageChoice:
    """The temporal blocks of one stage: ``count`` blocks of ``kind``.

    They go after the first ``count`` units (ResNet [+ transformer]) of the stage. Fields a kind
    does not use are canonicalized to 0 (``heads`` for convs, kernels for attention; ``kernel_s``
    for ``conv1d``), and ``kind=none`` or ``count=0`` both mean no block, so equal networks
    compare (and hash) equal.
    """

    kind: TemporalKind = TemporalKind.NONE
    count: int = 0
    heads: int = 0
    kernel_t: int = 0
    kernel_s: int = 0

    def __post_init__(self) -> None:
        kind = TemporalKind.parse(self.kind, "kind")
        canon = dict(kind=kind, count=self.count, heads=self.heads, kernel_t=self.kernel_t,
                     kernel_s=self.kernel_s)
        if kind is TemporalKind.NONE or self.count == 0:
            canon = dict(kind=TemporalKind.NONE, count=0, heads=0, kernel_t=0, kernel_s=0)
        elif kind.is_attention:
            canon.update(kernel_t=0, kernel_s=0)
        else:
            canon.update(heads=0)
            if not kind.uses_kernel_s:
                canon.update(kernel_s=0)
        for k, v in canon.items():
            object.__setattr__(self, k, v)

    @property
    def is_none(self) -> bool:
        return self.kind is TemporalKind.NONE

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind.value, "count": self.count, "heads": self.heads,
                "kernel_t": self.kernel_t, "kernel_s": self.kernel_s}

    @classmethod
    def from_dict(cls, data: Any, where: str) -> StageChoice:
        if not isinstance(data, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
        known = {"kind", "count", "heads", "kernel_t", "kernel_s"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"{where}.{unknown[0]}: unknown key (known: {', '.join(sorted(known))})")
        kind = TemporalKind.parse(data.get("kind", "none"), f"{where}.kind")
        vals = {k: _int(data.get(k, 0), f"{where}.{k}") for k in ("count", "heads", "kernel_t", "kernel_s")}
        for k, v in vals.items():
            if v < 0:
                raise ConfigError(f"{where}.{k}: must be >= 0, got {v}")
        return cls(kind=kind, **vals)


NO_TEMPORAL = StageChoice()


@dataclass(frozen=True)
class ArchConfig:
    """A candidate: backbone id + video task + one :class:`StageChoice` per stage.

    ``stages`` holds ``(stage_id, choice)`` pairs in backbone order. Use
    :meth:`search_space.validate.validate_arch` to check it against a backbone.
    """

    backbone: str
    task: VideoTask
    stages: tuple[tuple[str, StageChoice], ...]
    schema_version: int = SCHEMA_VERSION

    def choice(self, stage_id: str) -> StageChoice:
        for sid, c in self.stages:
            if sid == stage_id:
                return c
        return NO_TEMPORAL

    def __iter__(self) -> Iterator[tuple[str, StageChoice]]:
        return iter(self.stages)

    @property
    def num_temporal_blocks(self) -> int:
        return sum(c.count for _, c in self.stages)

    # ---- construction ----------------------------------------------------------------------
    @classmethod
    def create(cls, backbone: str, task: VideoTask, choices: Mapping[str, StageChoice],
               stage_ids: tuple[str, ...]) -> ArchConfig:
        """An arch over ``stage_ids`` (backbone order); stages missing from ``choices`` get none."""
        unknown = sorted(set(choices) - set(stage_ids))
        if unknown:
            raise ConfigError(f"stages.{unknown[0]}: unknown stage (stages: {', '.join(stage_ids)})")
        return cls(backbone, task, tuple((s, choices.get(s, NO_TEMPORAL)) for s in stage_ids))

    def with_task(self, task: VideoTask) -> ArchConfig:
        return ArchConfig(self.backbone, task, self.stages, self.schema_version)

    # ---- serialization ---------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": self.schema_version,
            "backbone": self.backbone,
            "task": self.task.to_dict(),
            "stage_order": [s for s, _ in self.stages],
            "stages": {s: c.to_dict() for s, c in self.stages},
        }

    def to_json(self, indent: int | None = None) -> str:
        """Canonical JSON (sorted keys, no whitespace unless ``indent``)."""
        seps = (",", ":") if indent is None else (",", ": ")
        return json.dumps(self.to_dict(), sort_keys=True, separators=seps, indent=indent)

    @property
    def arch_id(self) -> str:
        """First 12 hex digits of the sha256 of the canonical JSON."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:12]

    @classmethod
    def from_dict(cls, data: Any, where: str = "arch") -> ArchConfig:
        if not isinstance(data, Mapping):
            raise ConfigError(f"{where}: expected a JSON object, got {type(data).__name__}")
        known = {"schema_version", "backbone", "task", "stages", "stage_order", "arch_id"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"{where}.{unknown[0]}: unknown key")
        for key in ("backbone", "task", "stages"):
            if key not in data:
                raise ConfigError(f"{where}: missing key {key!r}")
        version = data.get("schema_version", SCHEMA_VERSION)
        if version != SCHEMA_VERSION:
            raise ConfigError(f"{where}.schema_version: {version!r} is not supported "
                              f"(this temponas reads version {SCHEMA_VERSION})")
        if not isinstance(data["backbone"], str):
            raise ConfigError(f"{where}.backbone: expected a string")
        task = VideoTask.from_dict(data["task"], f"{where}.task")
        raw = data["stages"]
        if not isinstance(raw, Mapping):
            raise ConfigError(f"{where}.stages: expected a mapping of stage id to choice")
        order = data.get("stage_order", sorted(raw, key=_stage_sort_key))
        if not isinstance(order, list) or sorted(map(str, order)) != sorted(raw):
            raise ConfigError(f"{where}.stage_order: must list exactly the keys of stages")
        stages = tuple((s, StageChoice.from_dict(raw[s], f"{where}.stages.{s}")) for s in order)
        arch = cls(data["backbone"], task, stages)
        if "arch_id" in data and data["arch_id"] != arch.arch_id:
            raise ConfigError(f"{where}.arch_id: {data['arch_id']!r} does not match the content "
                              f"({arch.arch_id}); the file was edited or is corrupt")
        return arch

    @classmethod
    def from_json(cls, text: str, where: str = "arch") -> ArchConfig:
        """The architecture of JSON ``text`` (bounded in size and nesting, common.limits)."""
        return cls.from_dict(parse_json(text, where), where)

    @classmethod
    def load(cls, path: str) -> ArchConfig:
        return cls.from_json(read_text(path, MAX_JSON_BYTES, "arch JSON file"), where=f"{path}: arch")


def _stage_sort_key(stage_id: str) -> tuple[int, int]:
    if stage_id.startswith("down") and stage_id[4:].isdigit():
        return (0, int(stage_id[4:]))
    if stage_id == "mid":
        return (1, 0)
    if stage_id.startswith("up") and stage_id[2:].isdigit():
        return (2, int(stage_id[2:]))
    return (3, 0)
