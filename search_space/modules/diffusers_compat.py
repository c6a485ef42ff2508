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

Weight files (``diffusion_pytorch_model.safetensors`` or its shards, or a temponas spatial
state dict) are checked against a backbone from their headers alone
(:func:`check_spatial_weights`: missing, unexpected or mis-shaped keys are one line naming the
file and the first bad key) and loaded strictly (:func:`load_spatial_weights`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path

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


# ---- weight files ------------------------------------------------------------------------------

_TEMPONAS_ROOTS = ("stages.", "conv_in.conv.", "time_embed.", "conv_out.norm.", "conv_out.conv.")
_INVERSE = (("conv_in.conv.", "conv_in."), ("time_embed.", "time_embedding."),
            ("conv_out.norm.", "conv_norm_out."), ("conv_out.conv.", "conv_out."))
_STAGE = re.compile(r"^stages\.(down|up)(\d+)\.(resnets|transformers|resample)\.(.+)$")
_MID_STAGE = re.compile(r"^stages\.mid\.(resnets|transformers)\.(.+)$")


def diffusers_name(name: str) -> str:
    """The diffusers ``UNet2DConditionModel`` name of a temponas spatial parameter (the inverse
    of :func:`temponas_name`)."""
    m = _STAGE.match(name)
    if m:
        role, i, kind, rest = m.groups()
        if kind == "resample":
            return f"{role}_blocks.{i}.{'downsamplers' if role == 'down' else 'upsamplers'}.0.{rest}"
        return f"{role}_blocks.{i}.{'attentions' if kind == 'transformers' else 'resnets'}.{rest}"
    m = _MID_STAGE.match(name)
    if m:
        kind, rest = m.groups()
        return f"mid_block.{'attentions' if kind == 'transformers' else 'resnets'}.{rest}"
    for ours, theirs in _INVERSE:
        if name.startswith(ours):
            return theirs + name[len(ours):]
    return name


def _keys_and_shapes(files: Sequence[Path]) -> dict[str, tuple[str, tuple[int, ...], Path]]:
    """``temponas name -> (name in the file, shape, file)`` from the safetensors headers."""
    from safetensors import safe_open

    out: dict[str, tuple[str, tuple[int, ...], Path]] = {}
    for f in files:
        try:
            with safe_open(str(f), framework="pt") as st:
                for k in st.keys():
                    ours = k if k.startswith(_TEMPONAS_ROOTS) else _renamed(k, f)
                    out[ours] = (k, tuple(st.get_slice(k).get_shape()), Path(f))
        except ConfigError:
            raise
        except Exception as e:  # noqa: BLE001 - safetensors raises its own error types
            raise ConfigError(f"{f}: not a readable safetensors file ({type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else ''})") from None
    return out


def _renamed(key: str, file: Path) -> str:
    try:
        return temponas_name(key)
    except ConfigError:
        raise ConfigError(f"{file}: {key!r} is neither a diffusers UNet2DConditionModel "
                          f"parameter nor a temponas spatial parameter") from None


def _check_fit(own: Mapping[str, tuple[int, ...]], got: Mapping[str, tuple[str, tuple[int, ...], Path]],
               backbone: str, files: Sequence[Path]) -> None:
    """One line naming the file and the first key that does not fit (unexpected, shape,
    missing), with the counts."""
    extra = [k for k in got if k not in own]
    missing = [k for k in own if k not in got]
    counts = f"({len(missing)} missing, {len(extra)} unexpected)"
    if extra:
        name, shape, f = got[extra[0]]
        raise ConfigError(f"{f}: unexpected key {name!r}: the weights do not fit backbone "
                          f"{backbone!r} {counts}")
    for k, (name, shape, f) in got.items():
        if tuple(own[k]) != shape:
            raise ConfigError(f"{f}: {name}: shape {list(shape)} does not fit backbone "
                              f"{backbone!r} (expects {list(own[k])})")
    if missing:
        diff = any(not v[0].startswith(_TEMPONAS_ROOTS) for v in got.values())
        name = diffusers_name(missing[0]) if diff else missing[0]
        raise ConfigError(f"{files[0]}: missing key {name!r}: the weights do not fit backbone "
                          f"{backbone!r} {counts}")


def _image_shapes(backbone, latent_channels: int) -> dict[str, tuple[int, ...]]:
    """Spatial parameter shapes of ``backbone`` (built on the meta device: no memory)."""
    import torch

    from search_space.modules.builder import build_image_model
    from search_space.task import VideoTask

    side = 2 ** (backbone.num_levels - 1)
    task = VideoTask(latent_channels=latent_channels, num_frames=1, latent_height=side,
                     latent_width=side, batch=1, text_tokens=1,
                     text_dim=backbone.cross_attention_dim)
    with torch.device("meta"):
        model = build_image_model(backbone, task)
    return {k: tuple(v.shape) for k, v in model.spatial_state_dict().items()}


def check_spatial_weights(backbone, files: Sequence[str | Path], latent_channels: int = 0) -> None:
    """Raise a one-line :class:`ConfigError` (file + first bad key) unless the safetensors
    ``files`` (diffusers UNet names or temponas names) fit ``backbone``'s spatial part exactly.
    Reads only the headers. ``latent_channels``: default the backbone's own (else 4)."""
    files = [Path(f) for f in files]
    if not files:
        raise ConfigError(f"backbone {backbone.name!r}: no weight files given")
    c = latent_channels or backbone.latent_channels or 4
    _check_fit(_image_shapes(backbone, c), _keys_and_shapes(files), backbone.name, files)


def read_spatial_weights(files: Sequence[str | Path]) -> dict[str, object]:
    """The tensors of safetensors ``files`` under temponas spatial names (diffusers UNet names
    are renamed); load them with ``VideoUNet.load_spatial_state_dict`` after
    :func:`check_spatial_weights`."""
    from safetensors.torch import load_file

    out: dict[str, object] = {}
    for f in files:
        for k, v in load_file(str(f)).items():
            out[k if k.startswith(_TEMPONAS_ROOTS) else _renamed(k, Path(f))] = v
    return out


def load_spatial_weights(model, files: Sequence[str | Path]) -> None:
    """Check (:func:`check_spatial_weights`) and load weight files into ``model``'s spatial
    part; temporal blocks keep their values."""
    files = [Path(f) for f in files]
    own = {k: tuple(v.shape) for k, v in model.spatial_state_dict().items()}
    _check_fit(own, _keys_and_shapes(files), model.backbone_spec.name, files)
    model.load_spatial_state_dict(read_spatial_weights(files))
