"""The input contract: shapes and example inputs of one block and of a whole denoiser.

Defined once here; the torch-cpu latency backend, the Core ML converter (probe bundles and
``temponas export --format coreml``) and the tests all build their inputs from it.

One block standalone, ``N = batch * frames``:

==========================  ========================================================  ===============
op                          inputs (in order)                                        output
==========================  ========================================================  ===============
time_embed                  ``timesteps (B,)`` float32                                ``(N, temb)``
conv_in                     ``x (N, C_lat, H, W)``                                    ``(N, C0, H, W)``
resnet                      ``x (N, C_in + C_skip, H, W)``, ``temb (N, temb_dim)``   ``(N, C_out, H, W)``
spatial_transformer         ``x (N, C, H, W)``, ``text (N, tokens, D)``              ``(N, C, H, W)``
temporal (conv*, attn*)     ``x (N, C, H, W)``                                        ``(N, C, H, W)``
temporal (xattn*)           ``x (N, C, H, W)``, ``text (B, tokens, D)``              ``(N, C, H, W)``
downsample / upsample       ``x (N, C, H, W)``                                        ``(N, C, H/2|2H, W/2|2W)``
conv_out                    ``x (N, C0, H, W)``                                       ``(N, C_lat, H, W)``
==========================  ========================================================  ===============

The whole denoiser (:class:`~search_space.modules.builder.VideoUNet`): ``latents (B, C, T, H,
W)``, ``timesteps (B,)``, ``text (B, tokens, D)`` -> ``noise_pred (B, C, T, H, W)``.

Example values: standard normal, except ``timesteps``, uniform in ``[0, 1000)`` (float32) --
the range of the 1000-step training schedule, and what the macOS runner
(``latency_models/runner/run_on_device.py``) feeds the converted packages. The values never
change a traced or converted graph (shapes are static), only the numbers flowing through it.
"""

from __future__ import annotations

import torch

from search_space.geometry import BlockInstance, BlockOp, BlockSignature
from search_space.task import VideoTask

#: Input names of a whole denoiser, in call order, and its output name.
NETWORK_INPUTS = ("latents", "timesteps", "text")
NETWORK_OUTPUT = "noise_pred"
#: Example timesteps are drawn uniformly from ``[0, NUM_TIMESTEPS)``.
NUM_TIMESTEPS = 1000

Specs = tuple[tuple[str, tuple[int, ...]], ...]


def _sig(block: BlockInstance | BlockSignature) -> BlockSignature:
    return block.sig if isinstance(block, BlockInstance) else block


def input_specs(block: BlockInstance | BlockSignature) -> Specs:
    """``((name, shape), ...)`` of the block's forward inputs, in call order (all float)."""
    s = _sig(block)
    n = s.images
    x = ("x", (n, s.in_channels + s.skip_channels, s.height, s.width))
    if s.op is BlockOp.TIME_EMBED:
        return (("timesteps", (s.batch,)),)
    if s.op is BlockOp.RESNET:
        return (x, ("temb", (n, s.temb_dim)))
    if s.op is BlockOp.SPATIAL_TRANSFORMER:
        return (x, ("text", (n, s.context_tokens, s.context_dim)))
    if s.op is BlockOp.TEMPORAL and s.kind.has_cross_attention:
        return (x, ("text", (s.batch, s.context_tokens, s.context_dim)))
    return (x,)


def output_shape(block: BlockInstance | BlockSignature) -> tuple[int, ...]:
    """Shape of the block's output in the spatial layout (``(N, temb)`` for time_embed)."""
    s = _sig(block)
    if s.op is BlockOp.TIME_EMBED:
        return (s.images, s.out_channels)
    return (s.images, s.out_channels, s.out_height, s.out_width)


def network_input_specs(task: VideoTask) -> Specs:
    """``(("latents", (B, C, T, H, W)), ("timesteps", (B,)), ("text", (B, tokens, D)))``."""
    t = task
    return ((NETWORK_INPUTS[0], (t.batch, t.latent_channels, t.num_frames, t.latent_height,
                                 t.latent_width)),
            (NETWORK_INPUTS[1], (t.batch,)),
            (NETWORK_INPUTS[2], (t.batch, t.text_tokens, t.text_dim)))


def _examples(specs: Specs, seed: int, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    """One tensor per spec, drawn in order from one generator seeded with ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for name, shape in specs:
        if name == "timesteps":
            out.append(torch.rand(shape, generator=gen).mul(float(NUM_TIMESTEPS)).to(dtype))
        else:
            out.append(torch.randn(shape, generator=gen).to(dtype))
    return tuple(out)


def example_inputs(block: BlockInstance | BlockSignature, *, seed: int = 0,
                   dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, ...]:
    """Random inputs of the shapes in :func:`input_specs` (see the module docstring)."""
    return _examples(input_specs(block), seed, dtype)


def network_example_inputs(task: VideoTask, *, seed: int = 0, dtype: torch.dtype = torch.float32
                           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(latents (B,C,T,H,W), timesteps (B,), text (B,tokens,D))`` for a whole denoiser of
    ``task`` (shapes from :func:`network_input_specs`; values as in the module docstring)."""
    lat, ts, text = _examples(network_input_specs(task), seed, dtype)
    return lat, ts, text
