"""A diffusers ``UNet2DConditionModel`` folder as a :class:`BackboneSpec` (torch- and diffusers-free).

``read_diffusers_unet(path)`` takes a model folder (``config.json`` [+
``diffusion_pytorch_model.safetensors`` or its shards]) or the ``config.json`` itself and gives a
:class:`DiffusersUNet`: the backbone, the latent channels and sample size, and the weight files.
Every constructor argument of diffusers' ``UNet2DConditionModel`` (diffusers 0.42) is read:

* structure: ``block_out_channels``, ``down_block_types`` (``CrossAttnDownBlock2D`` /
  ``DownBlock2D``), ``up_block_types`` (``CrossAttnUpBlock2D`` / ``UpBlock2D``; an up block has
  ``layers_per_block + 1`` ResNets), ``mid_block_type`` (``UNetMidBlock2DCrossAttn``: 2 ResNets
  + 1 transformer; ``UNetMidBlock2D``: 1 ResNet), ``layers_per_block`` and
  ``transformer_layers_per_block`` (an int or one per block; up blocks mirror down blocks, the
  mid block takes the last), ``cross_attention_dim`` (one value, or one per block if all equal),
  ``use_linear_projection``, ``norm_num_groups``, ``time_embedding_dim``, ``in_channels`` /
  ``out_channels`` (must be equal: they become ``latent_channels``);
* heads: diffusers' legacy naming -- ``attention_head_dim`` is the NUMBER of heads when
  ``num_attention_heads`` is absent (SD-1.x: ``8``; SD-2.x: ``[5, 10, 20, 20]`` = head dim 64);
* keys with no effect on the computed function: ``sample_size`` (the default latent size),
  ``upcast_attention`` (fp32 softmax under half precision only), ``addition_embed_type_num_heads``
  (used only with ``addition_embed_type``);
* everything else must hold diffusers' default (extra conditioning embeddings, other kernels,
  activations, norms, attention variants ...): otherwise one :class:`ConfigError` line names the
  file, the key and its value.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.loaders import load_json
from search_space.backbone import BackboneSpec, StageRole, StageSpec
from search_space.errors import ConfigError
from search_space.task import VideoTask

CLASS_NAME = "UNet2DConditionModel"
WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
WEIGHTS_INDEX = "diffusion_pytorch_model.safetensors.index.json"

#: the keys temponas reads, with diffusers' defaults (UNet2DConditionModel.__init__, 0.42)
STRUCTURE_DEFAULTS: dict[str, Any] = {
    "in_channels": 4, "out_channels": 4,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                         "DownBlock2D"],
    "mid_block_type": "UNetMidBlock2DCrossAttn",
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D",
                       "CrossAttnUpBlock2D"],
    "block_out_channels": [320, 640, 1280, 1280], "layers_per_block": 2,
    "transformer_layers_per_block": 1, "attention_head_dim": 8, "num_attention_heads": None,
    "cross_attention_dim": 1280, "use_linear_projection": False, "norm_num_groups": 32,
    "time_embedding_dim": None,
}
#: keys that do not change the function temponas computes
IGNORED = ("sample_size", "upcast_attention", "addition_embed_type_num_heads")
#: keys temponas supports only at diffusers' default value (the value -> accepted values)
FIXED: dict[str, tuple[Any, ...]] = {
    "center_input_sample": (False,), "flip_sin_to_cos": (True,), "freq_shift": (0,),
    "only_cross_attention": (False,), "downsample_padding": (1,), "mid_block_scale_factor": (1,),
    "dropout": (0,), "act_fn": ("silu",), "norm_eps": (1e-5,),
    "reverse_transformer_layers_per_block": (None,), "encoder_hid_dim": (None,),
    "encoder_hid_dim_type": (None,), "dual_cross_attention": (False,),
    "class_embed_type": (None,), "addition_embed_type": (None,),
    "addition_time_embed_dim": (None,), "num_class_embeds": (None,),
    "resnet_time_scale_shift": ("default",), "resnet_skip_time_act": (False,),
    "resnet_out_scale_factor": (1,), "time_embedding_type": ("positional",),
    "time_embedding_act_fn": (None,), "timestep_post_act": (None,), "time_cond_proj_dim": (None,),
    "conv_in_kernel": (3,), "conv_out_kernel": (3,),
    "projection_class_embeddings_input_dim": (None,), "attention_type": ("default",),
    "class_embeddings_concat": (False,), "mid_block_only_cross_attention": (None, False),
    "cross_attention_norm": (None,),
}
_DOWN = {"CrossAttnDownBlock2D": True, "DownBlock2D": False}
_UP = {"CrossAttnUpBlock2D": True, "UpBlock2D": False}
_MID = {"UNetMidBlock2DCrossAttn": (2, 1), "UNetMidBlock2D": (1, 0)}  # (resnets, transformers)


@dataclass(frozen=True)
class DiffusersUNet:
    """A diffusers UNet folder read as temponas sees it.

    ``weights``: the safetensors file(s) of the folder (one file, or the shards its index
    lists), empty when the folder has none. ``sample_size``: the latent size the model was
    trained at (0 if the config does not say).
    """

    config_path: Path
    backbone: BackboneSpec
    sample_size: int
    weights: tuple[Path, ...]

    @property
    def latent_channels(self) -> int:
        return self.backbone.latent_channels

    def default_task(self) -> VideoTask:
        """16 frames of ``sample_size`` latents (64 if unknown), the UNet's own channels and
        text width, batch 2 (classifier-free guidance), 77 tokens."""
        size = self.sample_size or 64
        return VideoTask(latent_channels=self.latent_channels, num_frames=16, latent_height=size,
                         latent_width=size, batch=2, text_tokens=77,
                         text_dim=self.backbone.cross_attention_dim)


def config_file(path: str | Path) -> Path:
    """The ``config.json`` of a model folder, or ``path`` itself if it is a file."""
    p = Path(path)
    if p.is_dir():
        p = p / "config.json"
        if not p.is_file():
            raise ConfigError(f"{path}: no config.json in this folder (expected a diffusers "
                              f"UNet2DConditionModel folder written by save_pretrained)")
    elif not p.is_file():
        raise ConfigError(f"{path}: no such file or folder")
    return p


def read_diffusers_unet(path: str | Path, name: str | None = None) -> DiffusersUNet:
    """The :class:`DiffusersUNet` of a model folder or its ``config.json`` (see module doc)."""
    cfg_path = config_file(path)
    raw = load_json(cfg_path)
    if not isinstance(raw, Mapping) or raw.get("_class_name") != CLASS_NAME:
        got = raw.get("_class_name") if isinstance(raw, Mapping) else type(raw).__name__
        raise ConfigError(f"{cfg_path}: not a diffusers {CLASS_NAME} config "
                          f"(_class_name: {got!r})")
    bb_name = name or _default_name(cfg_path)
    try:
        backbone = backbone_from_config(raw, bb_name)
    except ConfigError as e:
        raise ConfigError(f"{cfg_path}: {e}") from None
    size = raw.get("sample_size") or 0
    size = size if isinstance(size, int) and not isinstance(size, bool) else 0
    return DiffusersUNet(cfg_path, backbone, size, weight_files(cfg_path.parent))


def _default_name(cfg_path: Path) -> str:
    folder = cfg_path.resolve().parent.name or "unet"
    return re.sub(r"[^A-Za-z0-9_.-]", "_", folder)


def weight_files(folder: str | Path) -> tuple[Path, ...]:
    """The safetensors weights of a diffusers model folder: the single file, else the shards of
    its index; ``()`` if it has none."""
    d = Path(folder)
    single = d / WEIGHTS_NAME
    if single.is_file():
        return (single,)
    index = d / WEIGHTS_INDEX
    if not index.is_file():
        return ()
    try:
        wmap = load_json(index)["weight_map"]
        shards = sorted({str(v) for v in wmap.values()})
    except (ConfigError, KeyError, TypeError, AttributeError):
        raise ConfigError(f"{index}: not a safetensors index (no weight_map)") from None
    files = tuple(d / s for s in shards)
    for f in files:
        if not f.is_file():
            raise ConfigError(f"{index}: lists {f.name}, which is missing")
    return files


def weight_files_at(path: str | Path, where: str = "weights") -> tuple[Path, ...]:
    """The weight files a user points at: a ``.safetensors`` file, or a diffusers model folder
    (or its ``config.json``) holding them. ``where`` names the config key in errors."""
    p = Path(path)
    if p.is_file() and p.suffix == ".safetensors":
        return (p,)
    if p.is_file() and p.name == "config.json":
        p = p.parent
    if p.is_dir():
        files = weight_files(p)
        if not files:
            raise ConfigError(f"{where}: {path}: no {WEIGHTS_NAME} (or {WEIGHTS_INDEX}) in this "
                              f"folder (only safetensors weights are read)")
        return files
    if p.exists():
        raise ConfigError(f"{where}: {path}: expected a .safetensors file or a diffusers model "
                          f"folder")
    raise ConfigError(f"{where}: {path}: no such file or folder")


# ---- the config -> BackboneSpec mapping (pure) -----------------------------------------------

def _per_block(cfg: Mapping[str, Any], key: str, n: int, kind: type) -> list[Any]:
    v = cfg[key]
    if isinstance(v, kind) and not isinstance(v, bool):
        return [v] * n
    if (isinstance(v, Sequence) and not isinstance(v, str) and len(v) == n
            and all(isinstance(x, kind) and not isinstance(x, bool) for x in v)):
        return list(v)
    raise ConfigError(f"{key}: expected {'an integer' if kind is int else kind.__name__} or a "
                      f"list of {n} (one per block), got {v!r}")


def _same(value: Any, default: Any) -> bool:
    """``value`` is ``default`` (``0`` is not ``false``; ``1.0`` is ``1``)."""
    if isinstance(value, bool) or isinstance(default, bool) or default is None:
        return value is default
    return isinstance(value, (int, float, str)) and value == default


def _check_keys(cfg: Mapping[str, Any]) -> None:
    for key, value in cfg.items():
        if key.startswith("_") or key in STRUCTURE_DEFAULTS or key in IGNORED:
            continue
        if key not in FIXED:
            raise ConfigError(f"{key}: not a {CLASS_NAME} argument temponas knows "
                              f"(diffusers 0.42)")
        ok = FIXED[key]
        vals = value if key == "only_cross_attention" and isinstance(value, list) else [value]
        if not all(any(_same(v, a) for a in ok) for v in vals):
            raise ConfigError(f"{key}: {value!r} is not supported by temponas (only "
                              f"{' or '.join(json.dumps(a) for a in ok)})")


def _block_types(cfg: Mapping[str, Any]) -> tuple[list[str], list[str], str, list[int]]:
    """``(down types, up types, mid type, block_out_channels)``, checked."""
    down, up = cfg["down_block_types"], cfg["up_block_types"]
    channels = cfg["block_out_channels"]
    if not isinstance(channels, Sequence) or not channels or not all(
            isinstance(c, int) and not isinstance(c, bool) and c > 0 for c in channels):
        raise ConfigError(f"block_out_channels: expected a list of positive integers, got {channels!r}")
    n = len(channels)
    for key, blocks, table in (("down_block_types", down, _DOWN), ("up_block_types", up, _UP)):
        if not isinstance(blocks, Sequence) or isinstance(blocks, str) or len(blocks) != n:
            raise ConfigError(f"{key}: expected a list of {n} block types (one per "
                              f"block_out_channels entry), got {blocks!r}")
        for i, b in enumerate(blocks):
            if b not in table:
                raise ConfigError(f"{key}[{i}]: {b!r} is not supported by temponas (only "
                                  f"{' or '.join(table)})")
    mid = cfg["mid_block_type"]
    if mid not in _MID:
        raise ConfigError(f"mid_block_type: {mid!r} is not supported by temponas (only "
                          f"{' or '.join(_MID)})")
    return list(down), list(up), mid, list(channels)


def backbone_from_config(config: Mapping[str, Any], name: str) -> BackboneSpec:
    """The :class:`BackboneSpec` of a ``UNet2DConditionModel`` config mapping (see module doc);
    errors name the key and its value."""
    _check_keys(config)
    cfg = {**STRUCTURE_DEFAULTS, **{k: v for k, v in config.items() if k in STRUCTURE_DEFAULTS}}
    down, up, mid, channels = _block_types(cfg)
    n = len(channels)
    if cfg["num_attention_heads"] is not None:
        raise ConfigError(f"num_attention_heads: {cfg['num_attention_heads']!r} is refused by "
                          f"diffusers' UNet2DConditionModel itself (it reads heads from "
                          f"attention_head_dim)")
    layers = _per_block(cfg, "layers_per_block", n, int)
    depth = _per_block(cfg, "transformer_layers_per_block", n, int)
    heads = _per_block(cfg, "attention_head_dim", n, int)  # legacy: the number of heads
    cross = cfg["cross_attention_dim"]
    cross_list = _per_block(cfg, "cross_attention_dim", n, int)
    if len(set(cross_list)) != 1:
        raise ConfigError(f"cross_attention_dim: {cross!r}: temponas has one text width for "
                          f"every block")
    in_ch, out_ch = cfg["in_channels"], cfg["out_channels"]
    if not isinstance(in_ch, int) or isinstance(in_ch, bool) or in_ch < 1:
        raise ConfigError(f"in_channels: expected a positive integer, got {in_ch!r}")
    if in_ch != out_ch:
        raise ConfigError(f"out_channels: {out_ch!r} differs from in_channels {in_ch!r} "
                          f"(temponas denoises the latents it is given)")
    groups = cfg["norm_num_groups"]
    if not isinstance(groups, int) or isinstance(groups, bool) or groups < 1:
        raise ConfigError(f"norm_num_groups: {groups!r} is not supported by temponas "
                          f"(a positive integer)")
    temb = cfg["time_embedding_dim"]
    if temb is not None and (not isinstance(temb, int) or isinstance(temb, bool) or temb < 1):
        raise ConfigError(f"time_embedding_dim: expected a positive integer or null, got {temb!r}")
    use_linear = cfg["use_linear_projection"]
    if not isinstance(use_linear, bool):
        raise ConfigError(f"use_linear_projection: expected true/false, got {use_linear!r}")

    for key, vals in (("layers_per_block", layers), ("transformer_layers_per_block", depth)):
        if min(vals) < 1:
            raise ConfigError(f"{key}: {cfg[key]!r} must be >= 1 (temponas needs a ResNet and "
                              f"a transformer layer wherever a block has them)")
    for c in channels:
        if c % groups:
            raise ConfigError(f"norm_num_groups: {groups} does not divide block_out_channels "
                              f"{list(channels)}")

    def heads_of(lvl: int, attn: bool) -> int:
        h = heads[lvl]
        if h < 1 or channels[lvl] % h:
            if attn:
                raise ConfigError(f"attention_head_dim: {h} heads do not divide the "
                                  f"{channels[lvl]} channels of block {lvl}")
            return 1  # no transformer here: the head count is never used
        return h

    def stage(sid: str, role: StageRole, lvl: int, resnets: int, attn: bool) -> StageSpec:
        return StageSpec(sid, role, lvl, channels[lvl], resnets, resnets if attn else 0,
                         depth[lvl], heads_of(lvl, attn))

    stages = [stage(f"down{i}", StageRole.DOWN, i, layers[i], _DOWN[down[i]]) for i in range(n)]
    mid_res, mid_tf = _MID[mid]
    stages.append(StageSpec("mid", StageRole.MID, n - 1, channels[-1], mid_res, mid_tf,
                            depth[-1], heads_of(n - 1, mid_tf > 0)))
    for i in range(n):
        lvl = n - 1 - i
        stages.append(stage(f"up{i}", StageRole.UP, lvl, layers[lvl] + 1, _UP[up[i]]))
    return BackboneSpec(name, tuple(stages), cross_list[0], groups, use_linear,
                        time_embed_dim=temb or 0, latent_channels=in_ch,
                        notes=f"diffusers {CLASS_NAME} config")
