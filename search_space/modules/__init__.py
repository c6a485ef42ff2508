"""Torch modules of temponas: the spatial blocks of the image UNet, one module per temporal
kind (``TEMPORAL_BLOCKS``, keyed by :class:`TemporalKind`), the builder, and the input
contract of a block and of a whole denoiser (:mod:`search_space.modules.inputs`).

Public API: :func:`build_model`, :func:`build_image_model`, :func:`build_block`,
:func:`input_specs`, :func:`example_inputs`, :func:`output_shape`, :func:`network_input_specs`,
:func:`network_example_inputs`, :class:`VideoUNet`, :func:`load_diffusers_unet` (SD weights
from a diffusers state dict).
"""

from search_space.modules.blocks import SPATIAL_BLOCKS, build_block
from search_space.modules.builder import VideoUNet, build_image_model, build_model, is_temporal_name
from search_space.modules.diffusers_compat import load_diffusers_unet, temponas_name
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
           "build_block", "build_image_model", "build_model", "example_inputs", "input_specs",
           "is_temporal_name", "load_diffusers_unet", "network_example_inputs",
           "network_input_specs", "output_shape", "register_temporal", "temponas_name"]
