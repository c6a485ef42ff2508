"""Proxy scale: run evaluators on a scaled copy of the candidate.

The scaled candidate keeps the topology (stages, units, transformers, resampling) and every
temporal choice (kind, count, kernels, heads) of the full-size one; only widths (via
:meth:`BackboneSpec.scaled`), the number of frames, the latent size and the text length shrink.
The scale is an evaluator option and part of its config key. Torch-free.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from search_space.arch import ArchConfig, StageChoice
from search_space.backbone import BackboneSpec
from search_space.errors import ConfigError
from search_space.geometry import validate_arch
from search_space.task import VideoTask

#: ``width_mult`` of the proxy when the options leave it open and no backbone weights are used
DEFAULT_WIDTH_MULT = 0.0625


@dataclass(frozen=True)
class ProxyScale:
    """How far to shrink a candidate for proxy evaluation.

    ``width_mult`` multiplies every channel count (rounded to the norm-group multiple); ``None``
    (unset) = :data:`DEFAULT_WIDTH_MULT`, or the real width (1.0) when the evaluator runs the
    backbone's own weights (the torch options resolve it). The video task becomes
    ``(latent_channels, num_frames, latent_height, latent_width)`` with ``text_tokens`` tokens
    of the scaled cross-attention width.
    """

    width_mult: float | None = None
    num_frames: int = 8
    latent_height: int = 8
    latent_width: int = 8
    text_tokens: int = 8

    def __post_init__(self) -> None:
        if self.width_mult is not None and not 0 < self.width_mult <= 1:
            raise ConfigError(f"scale.width_mult: must be in (0, 1], got {self.width_mult}")
        for k in ("num_frames", "latent_height", "latent_width", "text_tokens"):
            v = getattr(self, k)
            if v < 1:
                raise ConfigError(f"scale.{k}: must be >= 1, got {v}")

    @property
    def width(self) -> float:
        """The width multiplier in effect."""
        return DEFAULT_WIDTH_MULT if self.width_mult is None else self.width_mult

    def to_dict(self) -> dict:
        return asdict(self)

    def backbone(self, full: BackboneSpec) -> BackboneSpec:
        """The width-scaled backbone (same stages, units, transformers)."""
        return full.scaled(self.width)

    def task(self, full_task: VideoTask, scaled_backbone: BackboneSpec) -> VideoTask:
        return VideoTask(latent_channels=full_task.latent_channels, num_frames=self.num_frames,
                         latent_height=self.latent_height, latent_width=self.latent_width,
                         batch=1, text_tokens=self.text_tokens,
                         text_dim=scaled_backbone.cross_attention_dim)

    def check(self, full: BackboneSpec) -> None:
        """Raise :class:`ConfigError` (``scale.<key>: ...``) unless the scaled latent size
        survives every downsampling of ``full``."""
        f = 2 ** (full.num_levels - 1)
        for key in ("latent_height", "latent_width"):
            if getattr(self, key) % f:
                raise ConfigError(f"scale.{key}: {getattr(self, key)} must be divisible by {f} "
                                  f"({full.num_levels} resolution levels of {full.name})")

    def arch(self, full: BackboneSpec, arch: ArchConfig) -> tuple[BackboneSpec, ArchConfig]:
        """``(scaled backbone, scaled arch)``: same temporal choices, scaled task.

        Attention heads that no longer divide a scaled stage's channels are halved until they
        do (the only change a choice may undergo; recorded in the scaled arch).
        """
        self.check(full)
        bb = self.backbone(full)
        task = self.task(arch.task, bb)
        stages = []
        for sid, c in arch.stages:
            if c.kind.is_attention and c.heads:
                h = c.heads
                ch = bb.stage(sid).channels
                while ch % h:
                    h //= 2
                c = StageChoice(c.kind, c.count, max(1, h), c.kernel_t, c.kernel_s)
            stages.append((sid, c))
        scaled = ArchConfig(bb.name, task, tuple(stages), arch.schema_version)
        validate_arch(bb, scaled, where="scaled arch")
        return bb, scaled
