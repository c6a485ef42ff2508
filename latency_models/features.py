"""Analytic per-operator features of one block, derived from its :class:`BlockSignature` only.

Torch-free. A block is lowered to a list of operators (conv, linear, attention core, norm,
elementwise, layout copy) mirroring the modules in ``search_space.modules``; each operator
carries its FLOPs, the activation elements it reads + writes and its weight elements. Latency
predictors turn these into time (roofline: per class efficiency and bytes moved) or into
regression features.

Shapes: spatial ops see ``N = batch * frames`` images of ``(C, H, W)``; temporal ops see
``(B, C, T, H, W)``; attention over ``L_q x L_k`` tokens of head dim ``d`` in ``S`` sequences.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from functools import lru_cache

import numpy as np

from search_space.arch import TemporalKind
from search_space.geometry import BlockOp, BlockSignature


class OpClass(IntEnum):
    """Operator classes a roofline model gives separate efficiencies to."""

    CONV = 0       # 2-D convolutions (k > 1)
    CONV3D = 1     # 5-D convolutions over T (``kernel_t > 1``: conv1d/conv3d/conv2p1d's temporal part)
    LINEAR = 2     # dense projections and 1x1 convolutions
    ATTN = 3       # attention core: QK^T, softmax, AV
    NORM = 4       # GroupNorm / LayerNorm (lowered to ~8 ops on Core ML)
    ELTWISE = 5    # activations, residual adds, GEGLU gating
    LAYOUT = 6     # transposes/reshapes that copy, concat, nearest upsample


OP_CLASSES: tuple[str, ...] = tuple(c.name.lower() for c in OpClass)
COMPUTE_CLASSES = (OpClass.CONV, OpClass.CONV3D, OpClass.LINEAR, OpClass.ATTN)
FFN_MULT = 4


@dataclass(frozen=True)
class OpTable:
    """Operators of one block as parallel arrays (one row per operator).

    ``cls``: :class:`OpClass` codes; ``flops``: multiply-adds x 2; ``act``: activation elements
    read + written (attention includes its ``L_q x L_k`` score matrix); ``weights``: parameter
    elements read.
    """

    cls: np.ndarray
    flops: np.ndarray
    act: np.ndarray
    weights: np.ndarray

    @property
    def n_ops(self) -> int:
        return int(self.cls.shape[0])

    def totals(self) -> dict[str, float]:
        """Summed features: ``<class>_gflop``, ``act_melem``, ``weight_melem``, ``n_ops``, ``<class>_ops``
        (the units :func:`latency_models.ane.mil.totals` gives for a converted program)."""
        out: dict[str, float] = {}
        for c in OpClass:
            m = self.cls == c
            out[f"{c.name.lower()}_gflop"] = float(self.flops[m].sum()) / 1e9
            out[f"{c.name.lower()}_ops"] = float(m.sum())
        out["act_melem"] = float(self.act.sum()) / 1e6
        out["weight_melem"] = float(self.weights.sum()) / 1e6
        out["n_ops"] = float(self.n_ops)
        return out


class _Ops:
    def __init__(self) -> None:
        self.rows: list[tuple[int, float, float, float]] = []

    def add(self, cls: OpClass, flops: float, act: float, weights: float = 0.0) -> None:
        self.rows.append((int(cls), float(flops), float(act), float(weights)))

    # --- building blocks (element counts, not bytes) -----------------------------------------
    def conv(self, n: int, cin: int, cout: int, h_out: int, w_out: int, kernel: int,
             h_in: int | None = None, w_in: int | None = None, kt: int = 1, t: int = 1) -> None:
        """``n`` images (or ``n`` videos of ``t`` frames for ``kt > 1``) through a conv."""
        h_in = h_out if h_in is None else h_in
        w_in = w_out if w_in is None else w_in
        k = kernel * kernel * kt
        out_el = n * t * cout * h_out * w_out
        cls = OpClass.LINEAR if k == 1 else (OpClass.CONV3D if kt > 1 else OpClass.CONV)
        self.add(cls, 2.0 * out_el * cin * k, n * t * cin * h_in * w_in + out_el, cin * cout * k + cout)

    def linear(self, rows: int, din: int, dout: int) -> None:
        self.add(OpClass.LINEAR, 2.0 * rows * din * dout, rows * (din + dout), din * dout + dout)

    def attention(self, seqs: int, lq: int, lk: int, dim: int, heads: int) -> None:
        """Core of multi-head attention: ``seqs`` sequences, ``heads`` heads of ``dim/heads``."""
        scores = seqs * heads * lq * lk
        self.add(OpClass.ATTN, 4.0 * seqs * lq * lk * dim + 5.0 * scores,
                 seqs * dim * (2 * lq + 2 * lk) + 2 * scores)

    def norm(self, elements: int, channels: int) -> None:
        self.add(OpClass.NORM, 8.0 * elements, 3 * elements, 2 * channels)

    def eltwise(self, elements: int, inputs: int = 1) -> None:
        self.add(OpClass.ELTWISE, float(elements), (inputs + 1) * elements)

    def layout(self, elements: int) -> None:
        self.add(OpClass.LAYOUT, 0.0, 2 * elements)

    def table(self) -> OpTable:
        a = np.asarray(self.rows, dtype=np.float64).reshape(-1, 4)
        return OpTable(a[:, 0].astype(np.int64), a[:, 1], a[:, 2], a[:, 3])


def _attention(o: _Ops, rows: int, c: int, heads: int, groups: int, s_q: int, s_kv: int,
               kv_rows: int, kv_dim: int) -> None:
    """``Attention`` of ``search_space.modules.common``: q on ``rows`` tokens, k/v on ``kv_rows``
    rows of ``kv_dim``, core over ``groups`` sequences of ``s_q`` x ``s_kv``, out projection."""
    o.linear(rows, c, c)
    o.linear(kv_rows, kv_dim, c)
    o.linear(kv_rows, kv_dim, c)
    o.attention(groups, s_q, s_kv, c, heads)
    o.linear(rows, c, c)


def _transformer_layer(o: _Ops, groups: int, tokens: int, c: int, heads: int, self_attn: bool,
                       cross: tuple[int, int, int] | None) -> None:
    """BasicTransformerBlock on ``groups`` sequences of ``tokens``: [LN, self-attn], [LN,
    cross-attn], LN, GEGLU FFN, each residual. ``cross = (kv_groups, ctx_tokens, ctx_dim)``."""
    rows = groups * tokens
    el = rows * c
    if self_attn:
        o.norm(el, c)
        _attention(o, rows, c, heads, groups, tokens, tokens, rows, c)
        o.eltwise(el, 2)
    if cross is not None:
        kv_groups, ctx_tokens, ctx_dim = cross
        o.norm(el, c)
        _attention(o, rows, c, heads, kv_groups, rows // kv_groups, ctx_tokens,
                   kv_groups * ctx_tokens, ctx_dim)
        o.eltwise(el, 2)
    o.norm(el, c)
    o.linear(rows, c, 2 * FFN_MULT * c)
    o.eltwise(rows * FFN_MULT * c, 2)  # a * gelu(gate)
    o.linear(rows, FFN_MULT * c, c)
    o.eltwise(el, 2)


def _resnet(o: _Ops, s: BlockSignature) -> None:
    n, h, w = s.images, s.height, s.width
    cin = s.in_channels + s.skip_channels  # the standalone block gets the concatenated input
    o.norm(n * cin * h * w, cin)
    o.eltwise(n * cin * h * w)
    o.conv(n, cin, s.out_channels, h, w, 3)
    o.eltwise(n * s.temb_dim)
    o.linear(n, s.temb_dim, s.out_channels)
    o.eltwise(n * s.out_channels * h * w, 2)  # + time embedding
    o.norm(n * s.out_channels * h * w, s.out_channels)
    o.eltwise(n * s.out_channels * h * w)
    o.conv(n, s.out_channels, s.out_channels, h, w, 3)
    if cin != s.out_channels:
        o.conv(n, cin, s.out_channels, h, w, 1)
    o.eltwise(n * s.out_channels * h * w, 2)


def _spatial_transformer(o: _Ops, s: BlockSignature) -> None:
    n, c, hw = s.images, s.in_channels, s.height * s.width
    el = n * c * hw
    o.norm(el, c)
    o.layout(el)  # NCHW -> (N, HW, C)
    o.linear(n * hw, c, c)  # proj_in (Linear or 1x1 conv: same maths)
    for _ in range(max(1, s.depth)):
        _transformer_layer(o, n, hw, c, s.heads, s.self_attn, (n, s.context_tokens, s.context_dim))
    o.linear(n * hw, c, c)
    o.layout(el)
    o.eltwise(el, 2)


def _temporal(o: _Ops, s: BlockSignature) -> None:
    """Temporal blocks of ``search_space.modules.temporal`` (input/output ``(B*T, C, H, W)``)."""
    b, c, t, h, w = s.batch, s.in_channels, s.frames, s.height, s.width
    el = b * c * t * h * w
    k = s.kind
    o.norm(el, c)
    o.eltwise(el) if k.is_conv else None  # SiLU
    if k is TemporalKind.CONV2P1D:
        o.conv(b * t, c, c, h, w, s.kernel_s)
        o.eltwise(el)
    if k.is_conv:
        o.layout(el)  # frames -> (B, C, T, H, W)
        ks = s.kernel_s if k is TemporalKind.CONV3D else 1
        o.conv(b, c, c, h, w, ks, kt=s.kernel_t, t=t)
        o.layout(el)  # back to frames
        o.eltwise(el, 2)
        return
    o.layout(el)  # frames -> tokens
    o.linear(b * t * h * w, c, c)  # proj_in
    o.eltwise(el, 2)  # + position table
    groups, tokens = (b, t * h * w) if k.is_3d else (b * h * w, t)
    cross = (b, s.context_tokens, s.context_dim) if k.has_cross_attention else None
    if cross is not None and not k.is_3d:
        o.layout(el)  # queries regrouped per video for the text attention
    _transformer_layer(o, groups, tokens, c, s.heads, True, cross)
    o.linear(b * t * h * w, c, c)  # proj_out
    o.layout(el)  # tokens -> frames
    o.eltwise(el, 2)


@lru_cache(maxsize=65536)
def op_table(sig: BlockSignature) -> OpTable:
    """The operators of ``sig`` (cached: signatures are frozen and hashable)."""
    o = _Ops()
    n = sig.images
    if sig.op is BlockOp.TIME_EMBED:
        o.eltwise(sig.batch * sig.in_channels)  # sinusoidal embedding
        o.linear(sig.batch, sig.in_channels, sig.out_channels)
        o.eltwise(sig.batch * sig.out_channels)
        o.linear(sig.batch, sig.out_channels, sig.out_channels)
        o.layout(n * sig.out_channels)  # repeated for every frame
    elif sig.op is BlockOp.CONV_IN:
        o.conv(n, sig.in_channels, sig.out_channels, sig.height, sig.width, 3)
    elif sig.op is BlockOp.CONV_OUT:
        el = n * sig.in_channels * sig.height * sig.width
        o.norm(el, sig.in_channels)
        o.eltwise(el)
        o.conv(n, sig.in_channels, sig.out_channels, sig.height, sig.width, 3)
    elif sig.op is BlockOp.RESNET:
        _resnet(o, sig)
    elif sig.op is BlockOp.SPATIAL_TRANSFORMER:
        _spatial_transformer(o, sig)
    elif sig.op is BlockOp.TEMPORAL:
        _temporal(o, sig)
    elif sig.op is BlockOp.DOWNSAMPLE:
        o.conv(n, sig.in_channels, sig.out_channels, sig.out_height, sig.out_width, 3,
               h_in=sig.height, w_in=sig.width)
    elif sig.op is BlockOp.UPSAMPLE:
        o.layout(n * sig.in_channels * sig.out_height * sig.out_width)  # nearest 2x
        o.conv(n, sig.in_channels, sig.out_channels, sig.out_height, sig.out_width, 3)
    else:  # pragma: no cover - new BlockOp without features
        raise NotImplementedError(f"no latency features for block op {sig.op.value!r}")
    return o.table()

