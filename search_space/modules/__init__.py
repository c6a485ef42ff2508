"""Torch modules of temponas: the spatial blocks of the image UNet, one module per temporal
kind (``TEMPORAL_BLOCKS``, keyed by :class:`TemporalKind`), the builder, and the input
contract of a block and of a whole denoiser (:mod:`search_space.modules.inputs`).

Public API: :func:`build_model`, :func:`build_image_model`, :func:`build_block`,
:func:`input_specs`, :func:`example_inputs`, :func:`output_shape`, :func:`network_input_specs`,
:func:`network_example_inputs`, :class:`VideoUNet`, :func:`load_diffusers_unet` (SD weights
from a diffusers state dict), :func:`check_spatial_weights` / :func:`read_spatial_weights` /
:func:`load_spatial_weights` (safetensors weight files, checked strictly).
"""

from search_space.modules.blocks import SPATIAL_BLOCKS, build_block
from search_space.modules.builder import VideoUNet, build_image_model, build_model, is_temporal_name
from search_space.modules.diffusers_compat import (
    check_spatial_weights,
    diffusers_name,
    load_diffusers_unet,
    load_spatial_weights,
    read_spatial_weights,
    temponas_name,
)
from search_space.modules.inputs import (
    NETWORK_INPUTS,
    NETWORK_OUTPUT,
    example_inputs,
    input_specs,
    network_example_inputs,
    network_input_specs,
    output_shape,
)
from search_space.modules.temporal import TEMPORAL_BLOCKS, register_temporal

__all__ = ["NETWORK_INPUTS", "NETWORK_OUTPUT", "SPATIAL_BLOCKS", "TEMPORAL_BLOCKS", "VideoUNet",
           "build_block", "build_image_model", "build_model", "check_spatial_weights",
           "diffusers_name", "example_inputs", "input_specs", "is_temporal_name",
           "load_diffusers_unet", "load_spatial_weights", "network_example_inputs",
           "network_input_specs", "output_shape", "read_spatial_weights", "register_temporal",
           "temponas_name"]
