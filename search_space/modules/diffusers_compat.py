"""Load a diffusers ``UNet2DConditionModel`` state dict (e.g. SD-v1.5 / SD-2.1-base weights from
a local ``diffusion_pytorch_model.safetensors``) into the spatial part of a temponas model.

Only block prefixes differ; inside blocks the names are diffusers' own:

===================================  ==========================================
diffusers                            temponas
===================================  ==========================================
``conv_in.*``                        ``conv_in.conv.*``
``time_embedding.linear_{1,2}.*``    ``time_embed.linear_{1,2}.*``
``down_blocks.i.resnets.j.*``        ``stages.down{i}.resnets.j.*``
``down_blocks.i.attentions.j.*``     ``stages.down{i}.transformers.j.*``
``down_blocks.i.downsamplers.0.*``   ``stages.down{i}.resample.*``
``mid_block.resnets.j.*``            ``stages.mid.resnets.j.*``
``mid_block.attentions.0.*``         ``stages.mid.transformers.0.*``
``up_blocks.i.{resnets,attentions}`` ``stages.up{i}.{resnets,transformers}``
``up_blocks.i.upsamplers.0.*``       ``stages.up{i}.resample.*``
``conv_norm_out.*`` / ``conv_out.*`` ``conv_out.norm.*`` / ``conv_out.conv.*``
===================================  ==========================================
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from search_space.errors import ConfigError

_BLOCK = re.compile(r"^(down_blocks|up_blocks)\.(\d+)\.(resnets|attentions|downsamplers|upsamplers)\.(\d+)\.(.+)$")
_MID = re.compile(r"^mid_block\.(resnets|attentions)\.(\d+)\.(.+)$")
_KIND = {"resnets": "resnets", "attentions": "transformers"}


def temponas_name(diffusers_name: str) -> str:
    """The temponas parameter name of a diffusers ``UNet2DConditionModel`` parameter."""
    n = diffusers_name
    m = _BLOCK.match(n)
    if m:
        role, i, kind, j, rest = m.groups()
        sid = f"{'down' if role == 'down_blocks' else 'up'}{i}"
        if kind in ("downsamplers", "upsamplers"):
            return f"stages.{sid}.resample.{rest}"
        return f"stages.{sid}.{_KIND[kind]}.{j}.{rest}"
    m = _MID.match(n)
    if m:
        kind, j, rest = m.groups()
        return f"stages.mid.{_KIND[kind]}.{j}.{rest}"
    for src, dst in (("conv_in.", "conv_in.conv."), ("time_embedding.", "time_embed."),
                     ("conv_norm_out.", "conv_out.norm."), ("conv_out.", "conv_out.conv.")):
        if n.startswith(src):
            return dst + n[len(src):]
    raise ConfigError(f"{diffusers_name}: not a parameter of a diffusers UNet2DConditionModel")


def from_diffusers(state: Mapping[str, object]) -> dict[str, object]:
    """A diffusers UNet state dict renamed to temponas names (tensors untouched)."""
    return {temponas_name(k): v for k, v in state.items()}


def load_diffusers_unet(model, state: Mapping[str, object]) -> None:
    """Load a diffusers UNet state dict into ``model``'s spatial part, strictly (see
    :meth:`VideoUNet.load_spatial_state_dict`); shapes must match the backbone spec."""
    renamed = from_diffusers(state)
    own = model.spatial_state_dict()
    for k, v in renamed.items():
        if k in own and tuple(own[k].shape) != tuple(v.shape):
            raise ConfigError(f"{k}: shape {tuple(v.shape)} does not fit backbone "
                              f"{model.backbone_spec.name!r} (expects {tuple(own[k].shape)})")
    model.load_spatial_state_dict(renamed)
