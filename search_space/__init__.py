"""The search space: backbones, video tasks, architectures, the geometry and their analytic cost.

Torch-free at import. The torch modules and the model builder live in
:mod:`search_space.modules` (imported on its own, it pulls in torch).

Entry points: :func:`get_backbone` / :func:`default_task` (named presets),
:func:`read_diffusers_unet` (a diffusers ``UNet2DConditionModel`` folder), :func:`default_space`
and :meth:`SearchSpace.from_dict` (which choices each stage allows), :class:`ArchConfig` (one
candidate), :func:`network_blocks` (THE geometry: every block with its shapes) and
:func:`network_cost` (parameters, FLOPs, modelled fp16 memory).
"""

from search_space.arch import NO_TEMPORAL, ArchConfig, StageChoice, TemporalKind
from search_space.backbone import BackboneSpec, StageRole, StageSpec, unet
from search_space.diffusers_config import DiffusersUNet, backbone_from_config, read_diffusers_unet
from search_space.errors import ConfigError, TemponasError
from search_space.flops import (
    BlockCost,
    NetworkCost,
    backbone_params,
    block_cost,
    image_cost,
    network_cost,
)
from search_space.geometry import (
    BlockInstance,
    BlockOp,
    BlockSignature,
    image_blocks,
    network_blocks,
    skip_routes,
    stage_resolution,
    validate_arch,
)
from search_space.presets import default_task, get_backbone, preset_names
from search_space.space import SearchSpace, StageSpace, default_space
from search_space.task import VideoTask

__all__ = [
    "ArchConfig", "BackboneSpec", "BlockCost", "BlockInstance", "BlockOp", "BlockSignature",
    "ConfigError", "DiffusersUNet", "NO_TEMPORAL", "NetworkCost", "SearchSpace", "StageChoice",
    "StageRole", "StageSpace", "StageSpec", "TemponasError", "TemporalKind", "VideoTask",
    "backbone_from_config", "backbone_params", "block_cost", "default_space", "default_task",
    "get_backbone", "image_blocks", "image_cost", "network_blocks", "network_cost",
    "preset_names", "read_diffusers_unet", "skip_routes", "stage_resolution", "unet",
    "validate_arch",
]
