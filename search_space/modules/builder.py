"""``build_model(backbone, task, arch)``: the video UNet, built from ``network_blocks()`` only.

Parameter names are the block paths of the geometry (``conv_in``, ``time_embed``,
``stages.down1.resnets.0``, ``stages.down1.transformers.0``, ``stages.down1.temporal.0``,
``stages.down1.resample``, ``conv_out``), so spatial names never depend on temporal choices and
temporal parameters are exactly those under ``stages.<sid>.temporal.``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

import torch
from torch import nn

from search_space.arch import ArchConfig
from search_space.backbone import BackboneSpec
from search_space.errors import ConfigError
from search_space.geometry import BlockInstance, BlockOp, network_blocks, skip_routes
from search_space.modules.blocks import build_block
from search_space.task import VideoTask


def is_temporal_name(name: str) -> bool:
    """True for parameter/buffer names of temporal blocks (``stages.<sid>.temporal.<i>...``)."""
    parts = name.split(".")
    return len(parts) > 2 and parts[0] == "stages" and parts[2] == "temporal"


class _Stage(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.resnets = nn.ModuleList()
        self.transformers = nn.ModuleList()
        self.temporal = nn.ModuleList()
        self.resample: nn.Module | None = None


class VideoUNet(nn.Module):
    """The candidate video UNet.

    ``forward(latents (B, C, T, H, W), timesteps (B,), text (B, tokens, D)) -> (B, C, T, H, W)``.
    Spatial blocks see ``(B*T, C, H, W)``; the execution plan (block order and skip routing) is
    fixed at construction, so ``forward`` has no data-dependent control flow. ``C, T, H, W`` are
    those of the task it was built for; ``B`` is the input's (``task.batch`` only sizes the
    example inputs of an export and the cost model).
    ``block_factory(block) -> nn.Module`` makes each block (default :func:`build_block`; a
    weight-sharing supernet passes one that reuses module instances across candidates).
    """

    def __init__(self, backbone: BackboneSpec, task: VideoTask, arch: ArchConfig,
                 block_factory: Callable[[BlockInstance], nn.Module] = build_block) -> None:
        super().__init__()
        self.backbone_spec, self.task, self.arch = backbone, task, arch
        self.blocks: tuple[BlockInstance, ...] = network_blocks(backbone, task, arch)
        self.stages = nn.ModuleDict({sid: _Stage() for sid in backbone.stage_ids})
        for b in self.blocks:
            self._install(b, block_factory(b))
        routes = skip_routes(self.blocks)
        self._plan = tuple((b.path, b.op, b.sig.kind.has_cross_attention, r.takes, r.saves, r.drops)
                           for b, r in zip(self.blocks, routes))

    def _install(self, block: BlockInstance, module: nn.Module) -> None:
        parts = block.path.split(".")
        if len(parts) == 1:
            self.add_module(parts[0], module)
            return
        stage = self.stages[parts[1]]
        if parts[2] == "resample":
            stage.resample = module
            return
        seq: nn.ModuleList = getattr(stage, parts[2])
        if int(parts[3]) != len(seq):
            raise ConfigError(f"{block.path}: blocks of a stage must be numbered 0, 1, ...")
        seq.append(module)

    def forward(self, latents: torch.Tensor, timesteps: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        t = self.task
        b, c, f, hh, ww = latents.shape[0], t.latent_channels, t.num_frames, t.latent_height, t.latent_width
        x = latents.permute(0, 2, 1, 3, 4).reshape(b * f, c, hh, ww)
        text_frames = text.repeat_interleave(f, dim=0)  # (B*T, tokens, D) for spatial blocks
        temb = x
        h = x
        saved: list[torch.Tensor | None] = []
        for path, op, cross, takes, saves, drops in self._plan:
            m = self.get_submodule(path)
            for i in drops:
                saved[i] = None
            if op is BlockOp.TIME_EMBED:
                temb = m(timesteps)
                continue
            if op is BlockOp.CONV_IN:
                h = m(x)
            elif op is BlockOp.RESNET:
                if takes >= 0:
                    h = torch.cat([h, saved[takes]], dim=1)
                    saved[takes] = None
                h = m(h, temb)
            elif op is BlockOp.SPATIAL_TRANSFORMER:
                h = m(h, text_frames)
            elif op is BlockOp.TEMPORAL and cross:
                h = m(h, text)
            else:
                h = m(h)
            if saves:
                saved.append(h)
        return h.reshape(b, f, c, hh, ww).permute(0, 2, 1, 3, 4)

    # ---- spatial / temporal split ---------------------------------------------------------
    def temporal_parameters(self) -> Iterator[nn.Parameter]:
        return (p for n, p in self.named_parameters() if is_temporal_name(n))

    def spatial_parameters(self) -> Iterator[nn.Parameter]:
        return (p for n, p in self.named_parameters() if not is_temporal_name(n))

    def spatial_state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in self.state_dict().items() if not is_temporal_name(k)}

    def load_spatial_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        """Load an image backbone's weights into the spatial part, strictly (every spatial key
        present, no extra keys); temporal blocks keep their values."""
        own = set(self.spatial_state_dict())
        missing, extra = sorted(own - set(state)), sorted(set(state) - own)
        if missing or extra:
            what = f"missing {missing[0]!r}" if missing else f"unexpected {extra[0]!r}"
            raise ConfigError(f"spatial state dict does not fit backbone "
                              f"{self.backbone_spec.name!r}: {what} "
                              f"({len(missing)} missing, {len(extra)} unexpected)")
        self.load_state_dict(dict(state), strict=False)

    def freeze_spatial(self) -> None:
        for p in self.spatial_parameters():
            p.requires_grad_(False)


def build_model(backbone: BackboneSpec, task: VideoTask, arch: ArchConfig,
                block_factory: Callable[[BlockInstance], nn.Module] = build_block) -> VideoUNet:
    """The video UNet of ``arch`` on ``backbone`` for ``task`` (temporal blocks start as no-ops)."""
    return VideoUNet(backbone, task, arch, block_factory)


def build_image_model(backbone: BackboneSpec, task: VideoTask) -> VideoUNet:
    """The image backbone alone (no temporal blocks), processing ``task``'s frames independently."""
    none = ArchConfig.create(backbone.name, task, {}, backbone.stage_ids)
    return VideoUNet(backbone, task, none)
