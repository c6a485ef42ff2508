"""Base of the zero-cost proxies: the scaled candidate at initialization plus one fixed batch.

Every proxy sees the same setup: the scaled candidate (``ProxyScale``) with the pretrained
(or seeded random) spatial backbone, frozen; temporal blocks drawn from the seeded default
init; and ``num_batches`` fixed denoising batches of training videos (epsilon prediction,
SD noise schedule) drawn from the seed; model and batches on the evaluator's device, forward
passes under its precision (``Runtime``). Temporal blocks are built zero-initialized (an
identity at start); a proxy that differentiated them as built would see zero gradients almost
everywhere, so their zero-initialized layers are re-drawn with PyTorch's default init
(``reset_parameters``) before scoring. Gradient-based scores sum over temporal parameters
only: the spatial part is shared by every candidate.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from torch import nn

from evaluators._device import Runtime
from evaluators._pretrain import pretrained_spatial
from evaluators._torch_setup import (
    TorchEvaluator,
    TorchOptions,
    data_splits,
    fixed_batches,
    prepare_data,
    scaled_arch,
)
from search_space.arch import ArchConfig
from search_space.errors import ConfigError
from search_space.task import VideoTask


@dataclass(frozen=True)
class ZeroCostOptions(TorchOptions):
    """``num_batches``: fixed batches the proxy uses (ZiCo needs >= 2)."""

    num_batches: int = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.num_batches < 1:
            raise ConfigError(f"num_batches: must be >= 1, got {self.num_batches}")


def reinit_zero_layers(model: nn.Module) -> int:
    """Re-draw (default init) every temporal leaf layer whose parameters are all zero.
    Returns how many layers were re-initialized."""
    n = 0
    for name, m in model.named_modules():
        parts = name.split(".")
        if not (len(parts) > 3 and parts[0] == "stages" and parts[2] == "temporal"):
            continue
        own = list(m.parameters(recurse=False))
        if own and hasattr(m, "reset_parameters") and all(not p.detach().any() for p in own):
            m.reset_parameters()
            n += 1
    return n


class ZeroCostEvaluator(TorchEvaluator):
    """Subclasses implement ``_proxy(model, batches, rt) -> (value, extras)``: ``model`` and
    ``batches`` are on ``rt.device``; forward passes go under ``rt.autocast()`` (or through
    ``denoise_loss(..., rt=rt)``), gradients through ``rt.backward``/``rt.grad``."""

    Options: ClassVar[type] = ZeroCostOptions

    def setup(self, task: VideoTask, progress: bool | None = None) -> dict[str, Any]:
        return prepare_data(self.backbone, self.options, task.latent_channels, progress)

    def prepare(self, arch: ArchConfig, seed: int, rt: Runtime | None = None
                ) -> tuple[nn.Module, list]:
        """The scaled candidate (spatial frozen, temporal re-drawn) and the fixed batches, on
        ``rt``'s device (the CPU without one). Call inside the options' ``session``."""
        from search_space.modules import build_model

        o = self.options
        C = arch.task.latent_channels
        bb, sarch = scaled_arch(self.backbone, o, arch)
        model = build_model(bb, sarch.task, sarch)
        if o.spatial != "random":
            model.load_spatial_state_dict(pretrained_spatial(self.backbone, o, C)[0])
        model.freeze_spatial()
        reinit_zero_layers(model)
        train, _ = data_splits(self.backbone, o, C)
        batches = fixed_batches(train, o.num_batches, o.batch, seed)
        rt = rt or Runtime()
        return rt.module(model), rt.batches(batches)

    def _score(self, arch: ArchConfig, seed: int, budget: int) -> tuple[float, Mapping[str, float]]:
        o = self.options
        if o.spatial != "random":  # outside the timed/seeded section: cached artefact
            pretrained_spatial(self.backbone, o, arch.task.latent_channels)
        data_splits(self.backbone, o, arch.task.latent_channels)
        with o.session(seed) as rt:
            model, batches = self.prepare(arch, seed, rt)
            value, extras = self._proxy(model, batches, rt)
        return value, extras

    def _proxy(self, model: nn.Module, batches: list, rt: Runtime
               ) -> tuple[float, Mapping[str, float]]:
        raise NotImplementedError


def temporal_named_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    from search_space.modules import is_temporal_name
    return [(n, p) for n, p in model.named_parameters() if is_temporal_name(n)]
