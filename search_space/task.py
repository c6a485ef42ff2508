"""The video task a candidate network is built for."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from common.limits import TASK_RANGES, check_range
from search_space.errors import ConfigError


@dataclass(frozen=True)
class VideoTask:
    """Shapes of one denoiser call.

    Latents are ``(batch, latent_channels, num_frames, latent_height, latent_width)``,
    text embeddings ``(batch, text_tokens, text_dim)``. ``batch`` = 2 models
    classifier-free guidance (conditional + unconditional in one call).
    """

    latent_channels: int = 4
    num_frames: int = 16
    latent_height: int = 64
    latent_width: int = 64
    batch: int = 2
    text_tokens: int = 77
    text_dim: int = 768

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ConfigError(f"task.{f.name}: expected a positive integer, got {v!r}")
            check_range(f"task.{f.name}", v, TASK_RANGES[f.name])

    def to_dict(self) -> dict[str, int]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "task") -> VideoTask:
        if not isinstance(data, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"{where}.{unknown[0]}: unknown key (known: {', '.join(sorted(known))})")
        try:
            return cls(**dict(data))
        except ConfigError as e:
            raise ConfigError(str(e).replace("task.", f"{where}.", 1)) from None

    def replace(self, **changes: int) -> VideoTask:
        return replace(self, **changes)
