"""Analytic cost of blocks and networks: parameters, FLOPs, fp16 activation memory. Torch-free.

Everything derives from :func:`search_space.geometry.network_blocks` signatures.

**Parameters** are exact: :func:`block_params` equals ``sum(p.numel())`` of
``search_space.modules.build_block(sig)`` (tested for every block kind).

**FLOPs** follow ``torch.utils.flop_counter``: 2 x multiply-accumulates of convolutions,
linear layers and the two attention matmuls (``QK^T`` and ``PV``); biases, norms, activations,
softmax, resampling and elementwise ops count 0 (tested against ``FlopCounterMode``).

**Activation memory** is a MODEL of an fp16 device runtime (2 bytes per element, 1 MB = 2**20
bytes), not a measurement. Every op output is materialized (no fusion) and, as Core ML does
for attention without a fused kernel, the attention score matrix ``(batch, heads, S_q, S_kv)``
is materialized twice (logits and softmax probabilities). A block's working set is the largest
sum, over the phases of its forward, of the tensors alive in that phase: the block input (kept
for the residual), the residual stream, the phase's inputs and outputs (e.g. for a ResNet
``max(3*in, 2*in + out, in + 3*out)``; for an attention phase ``x + h + norm(h) + q + q*scale
+ k + v + 2 * scores + out``; for a GEGLU FFN ``x + h + norm(h) + 8C + 4C + 4C`` channels;
temporal convs ``x`` + 2 activations (layout copy, conv output; 3 for (2+1)D), temporal
attention adds one layout copy to its first phase). ``benchmarks/memory_model.py`` compares
this model with the live-tensor peak of eager PyTorch (math attention). The network peak is the
maximum over execution of: latents +
text (+ per-frame text when spatial transformers exist) + time embedding + skip tensors alive
at that point (saved, not yet consumed; see :func:`search_space.geometry.skip_routes`) + the
running block's working set. ``memory_mb`` = fp16 weights + peak activations.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from search_space.arch import ArchConfig, TemporalKind
from search_space.backbone import BackboneSpec
from search_space.geometry import (
    BlockInstance,
    BlockOp,
    BlockSignature,
    image_blocks,
    network_blocks,
    skip_routes,
)
from search_space.task import VideoTask

BYTES_PER_ELEMENT = 2  # fp16 device model
MB = float(2 ** 20)
FFN_MULT = 4  # GEGLU inner width = 4C (projection to 8C)


@dataclass(frozen=True)
class BlockCost:
    """Cost of one block: exact ``params``, ``flops`` (2 x MACs), modelled fp16 ``activation_mb``."""

    params: int
    flops: int
    activation_mb: float

    @property
    def gflops(self) -> float:
        return self.flops / 1e9

    @property
    def weights_mb(self) -> float:
        return self.params * BYTES_PER_ELEMENT / MB


@dataclass(frozen=True)
class NetworkCost:
    """Cost of one denoiser call of a whole network (see the module docstring for the model).

    ``per_block``: ``(block, cost)`` in execution order; ``peak_path``: the block running at
    the activation peak.
    """

    params: int
    flops: int
    weights_mb: float
    peak_activation_mb: float
    memory_mb: float
    per_block: tuple[tuple[BlockInstance, BlockCost], ...]
    peak_path: str = ""

    @property
    def gflops(self) -> float:
        return self.flops / 1e9

    def params_where(self, temporal: bool) -> int:
        """Parameters of the temporal blocks (``True``) or of the spatial backbone (``False``)."""
        return sum(c.params for b, c in self.per_block if (b.op is BlockOp.TEMPORAL) == temporal)

    def per_stage(self) -> dict[str, dict[str, float]]:
        """``{stage: {"params", "flops", "activation_mb" (max)}}`` in execution order."""
        out: dict[str, dict[str, float]] = {}
        for b, c in self.per_block:
            d = out.setdefault(b.stage, {"params": 0, "flops": 0, "activation_mb": 0.0})
            d["params"] += c.params
            d["flops"] += c.flops
            d["activation_mb"] = max(d["activation_mb"], c.activation_mb)
        return out


# ---- parameters -----------------------------------------------------------------------------
def _gn(c: int) -> int:
    return 2 * c


def _linear(i: int, o: int, bias: bool = True) -> int:
    return i * o + (o if bias else 0)


def _conv(i: int, o: int, k: int) -> int:
    """Conv with bias and ``k`` kernel elements."""
    return i * o * k + o


def _attention_params(c: int, context_dim: int | None = None) -> int:
    kv = context_dim or c
    return _linear(c, c, False) + 2 * _linear(kv, c, False) + _linear(c, c)  # to_q, to_k/v, to_out


def _ffn_params(c: int) -> int:
    inner = FFN_MULT * c
    return _linear(c, 2 * inner) + _linear(inner, c)


def _transformer_block_params(c: int, context_dim: int, self_attn: bool) -> int:
    p = (_gn(c) + _attention_params(c)) if self_attn else 0  # LayerNorm has 2C params, like GN
    return p + _gn(c) + _attention_params(c, context_dim) + _gn(c) + _ffn_params(c)


def block_params(sig: BlockSignature) -> int:
    """Exact parameter count of the module :func:`search_space.modules.build_block` builds."""
    op, c_in, c_out = sig.op, sig.in_channels, sig.out_channels
    if op is BlockOp.TIME_EMBED:
        return _linear(c_in, c_out) + _linear(c_out, c_out)
    if op is BlockOp.CONV_IN:
        return _conv(c_in, c_out, 9)
    if op is BlockOp.CONV_OUT:
        return _gn(c_in) + _conv(c_in, c_out, 9)
    if op in (BlockOp.DOWNSAMPLE, BlockOp.UPSAMPLE):
        return _conv(c_in, c_out, 9)
    if op is BlockOp.RESNET:
        ci = c_in + sig.skip_channels
        p = _gn(ci) + _conv(ci, c_out, 9) + _linear(sig.temb_dim, c_out) + _gn(c_out) + _conv(c_out, c_out, 9)
        return p + (_conv(ci, c_out, 1) if ci != c_out else 0)
    if op is BlockOp.SPATIAL_TRANSFORMER:
        c = c_in
        proj = _linear(c, c)  # 1x1 conv and Linear have the same count
        return _gn(c) + 2 * proj + sig.depth * _transformer_block_params(c, sig.context_dim, sig.self_attn)
    if op is BlockOp.TEMPORAL:
        c, k = c_in, sig.kind
        if k is TemporalKind.CONV1D:
            return _gn(c) + _conv(c, c, sig.kernel_t)
        if k is TemporalKind.CONV3D:
            return _gn(c) + _conv(c, c, sig.kernel_t * sig.kernel_s ** 2)
        if k is TemporalKind.CONV2P1D:
            return _gn(c) + _conv(c, c, sig.kernel_s ** 2) + _conv(c, c, sig.kernel_t)
        if k.is_attention:
            p = _gn(c) + 2 * _linear(c, c) + _gn(c) + _attention_params(c) + _gn(c) + _ffn_params(c)
            if k.has_cross_attention:
                p += _gn(c) + _attention_params(c, sig.context_dim)
            return p
    raise ValueError(f"no cost model for block {sig.op_name}")


# ---- FLOPs ----------------------------------------------------------------------------------
def _attn_flops(tokens: int, c: int, groups: int, s_q: int, s_kv: int, kv_rows: int, kv_dim: int) -> int:
    """Projections (q/out on ``tokens`` rows, k/v on ``kv_rows`` rows of ``kv_dim``) plus
    ``QK^T`` and ``PV`` for ``groups`` independent sequences of ``s_q`` queries x ``s_kv`` keys."""
    proj = 2 * 2 * tokens * c * c + 2 * 2 * kv_rows * kv_dim * c
    return proj + 4 * groups * s_q * s_kv * c


def _ffn_flops(tokens: int, c: int) -> int:
    inner = FFN_MULT * c
    return 2 * tokens * c * 2 * inner + 2 * tokens * inner * c


def block_flops(sig: BlockSignature) -> int:
    """FLOPs (2 x MACs, ``torch.utils.flop_counter`` convention) of one block call."""
    op, c_in, c_out = sig.op, sig.in_channels, sig.out_channels
    n, a = sig.images, sig.height * sig.width
    if op is BlockOp.TIME_EMBED:
        return 2 * sig.batch * (c_in * c_out + c_out * c_out)
    if op in (BlockOp.CONV_IN, BlockOp.CONV_OUT):
        return 2 * n * a * c_in * c_out * 9
    if op in (BlockOp.DOWNSAMPLE, BlockOp.UPSAMPLE):
        return 2 * n * sig.out_height * sig.out_width * c_in * c_out * 9
    if op is BlockOp.RESNET:
        ci = c_in + sig.skip_channels
        f = 2 * n * a * c_out * (ci * 9 + c_out * 9) + 2 * n * sig.temb_dim * c_out
        return f + (2 * n * a * ci * c_out if ci != c_out else 0)
    if op is BlockOp.SPATIAL_TRANSFORMER:
        c, tok, L = c_in, n * a, sig.context_tokens
        per = _attn_flops(tok, c, n, a, L, n * L, sig.context_dim) + _ffn_flops(tok, c)
        if sig.self_attn:
            per += _attn_flops(tok, c, n, a, a, tok, c)
        return 2 * 2 * tok * c * c + sig.depth * per
    if op is BlockOp.TEMPORAL:
        c, k, b, t = c_in, sig.kind, sig.batch, sig.frames
        tok = n * a
        if k is TemporalKind.CONV1D:
            return 2 * tok * c * c * sig.kernel_t
        if k is TemporalKind.CONV3D:
            return 2 * tok * c * c * sig.kernel_t * sig.kernel_s ** 2
        if k is TemporalKind.CONV2P1D:
            return 2 * tok * c * c * (sig.kernel_s ** 2 + sig.kernel_t)
        if k.is_attention:
            groups, s = (b, t * a) if k.is_3d else (b * a, t)
            f = 2 * 2 * tok * c * c + _attn_flops(tok, c, groups, s, s, tok, c) + _ffn_flops(tok, c)
            if k.has_cross_attention:
                L = sig.context_tokens
                f += _attn_flops(tok, c, b, t * a, L, b * L, sig.context_dim)
            return f
    raise ValueError(f"no cost model for block {sig.op_name}")


# ---- activation memory ----------------------------------------------------------------------
def _attention_phase(x: int, act: int, kv: int, scores: int) -> int:
    """Live elements during one attention: block input, residual stream, norm(h), q (and its
    scaled copy), k, v, logits and probabilities, output."""
    return x + 4 * act + 2 * kv + 2 * scores + act


def _ffn_phase(x: int, act: int) -> int:
    return x + 2 * act + (2 * FFN_MULT + FFN_MULT + FFN_MULT) * act


def block_activation_elements(sig: BlockSignature) -> int:
    """Peak live elements while the block runs (inputs and outputs included)."""
    op, n, a = sig.op, sig.images, sig.height * sig.width
    x_in = n * (sig.in_channels + sig.skip_channels) * a
    out = n * sig.out_channels * sig.out_height * sig.out_width
    if op is BlockOp.TIME_EMBED:
        return sig.batch * (sig.in_channels + 2 * sig.out_channels) + n * sig.out_channels
    if op in (BlockOp.CONV_IN, BlockOp.DOWNSAMPLE):
        return x_in + out
    if op is BlockOp.UPSAMPLE:
        return x_in + 4 * x_in + out
    if op is BlockOp.CONV_OUT:
        return max(3 * x_in, 2 * x_in + out)  # x, norm, SiLU; then x, SiLU, conv
    if op is BlockOp.RESNET:
        return max(3 * x_in, 2 * x_in + out, x_in + 3 * out)
    c = sig.in_channels
    act = n * a * c
    if op is BlockOp.SPATIAL_TRANSFORMER:
        heads, L = sig.heads, sig.context_tokens
        phases = [x_in + 3 * act,  # norm + proj_in
                  _attention_phase(x_in, act, n * L * c, n * heads * a * L),
                  _ffn_phase(x_in, act)]
        if sig.self_attn:
            phases.append(_attention_phase(x_in, act, act, n * heads * a * a))
        return max(phases)
    if op is BlockOp.TEMPORAL:
        k, b, t = sig.kind, sig.batch, sig.frames
        if k is TemporalKind.CONV2P1D:
            return x_in + 3 * act  # x, spatial conv out, SiLU, layout copy
        if k.is_conv:
            return x_in + 2 * act  # x, layout copy, conv out (then copy back)
        heads = sig.heads
        scores = b * heads * (t * a) ** 2 if k.is_3d else b * a * heads * t * t
        phases = [x_in + 4 * act,  # norm, layout copy, proj_in (+ position table)
                  _attention_phase(x_in, act, act, scores),
                  _ffn_phase(x_in, act)]
        if k.has_cross_attention:
            L = sig.context_tokens
            phases.append(_attention_phase(x_in, act, b * L * c, b * heads * t * a * L))
        return max(phases)
    raise ValueError(f"no cost model for block {sig.op_name}")


def block_cost(sig: BlockSignature | BlockInstance) -> BlockCost:
    """Params, FLOPs and fp16 working-set MB of one block (cached per signature)."""
    return _cost_of(sig.sig if isinstance(sig, BlockInstance) else sig)[0]


@lru_cache(maxsize=65536)
def _cost_of(s: BlockSignature) -> tuple[BlockCost, int]:
    act = block_activation_elements(s)
    return BlockCost(block_params(s), block_flops(s), act * BYTES_PER_ELEMENT / MB), act


def blocks_cost(blocks: tuple[BlockInstance, ...], task: VideoTask) -> NetworkCost:
    """:class:`NetworkCost` of an already computed block list (see :func:`network_cost`)."""
    costs = [_cost_of(b.sig) for b in blocks]
    per = tuple((b, c) for b, (c, _) in zip(blocks, costs))
    routes = skip_routes(blocks)
    n = task.batch * task.num_frames
    base = task.batch * task.latent_channels * task.num_frames * task.latent_height * task.latent_width
    base += task.batch * task.text_tokens * task.text_dim
    if any(b.op is BlockOp.SPATIAL_TRANSFORMER for b in blocks):
        base += n * task.text_tokens * task.text_dim
    temb = 0
    live: dict[int, int] = {}  # save index -> elements
    peak, peak_path, n_saved, prev_saved = 0, "", 0, -1
    for b, (_, own), r in zip(blocks, costs, routes):
        for i in r.drops:
            live.pop(i, None)
        if r.takes >= 0:
            live.pop(r.takes, None)
        input_is_live = prev_saved if prev_saved in live else None
        skips = sum(live.values()) - (live[input_is_live] if input_is_live is not None else 0)
        total = base + temb + skips + own
        if total > peak:
            peak, peak_path = total, b.path
        prev_saved = -1
        if b.op is BlockOp.TIME_EMBED:
            temb = n * b.sig.out_channels
        if r.saves:
            live[n_saved] = n * b.sig.out_channels * b.sig.out_height * b.sig.out_width
            prev_saved = n_saved
            n_saved += 1
    params = sum(c.params for _, c in per)
    weights_mb = params * BYTES_PER_ELEMENT / MB
    peak_mb = peak * BYTES_PER_ELEMENT / MB
    return NetworkCost(params=params, flops=sum(c.flops for _, c in per), weights_mb=weights_mb,
                       peak_activation_mb=peak_mb, memory_mb=weights_mb + peak_mb,
                       per_block=per, peak_path=peak_path)


def network_cost(backbone: BackboneSpec, task: VideoTask, arch: ArchConfig) -> NetworkCost:
    """Params, FLOPs, fp16 weights, modelled peak activation and total memory of ``arch``.

    Raises :class:`search_space.errors.ConfigError` if ``arch`` does not fit ``backbone``.
    """
    return blocks_cost(network_blocks(backbone, task, arch), task)


def image_cost(backbone: BackboneSpec, task: VideoTask) -> NetworkCost:
    """Cost of the image backbone alone applied to every frame of ``task``."""
    return blocks_cost(image_blocks(backbone, task), task)


def backbone_params(backbone: BackboneSpec, latent_channels: int = 4) -> int:
    """Parameters of the image backbone without temporal layers (task independent)."""
    side = 2 ** (backbone.num_levels - 1)
    task = VideoTask(latent_channels=latent_channels, num_frames=1, latent_height=side,
                     latent_width=side, batch=1, text_tokens=1, text_dim=backbone.cross_attention_dim)
    return sum(block_params(b.sig) for b in image_blocks(backbone, task))
