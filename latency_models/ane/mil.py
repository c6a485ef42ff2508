"""Per-operator features of a converted Core ML program (MIL), in the block roofline's classes.

Every non-constant operation of ``prog.functions["main"]`` (nested blocks included) becomes one
:class:`MilOp`: its :class:`~latency_models.features.OpClass`, FLOPs (multiply-adds x 2, the
conventions of :mod:`latency_models.features`), activation elements read + written (tensors that
are not constants), weight elements (float constants and ``constexpr_*`` decompressions it reads,
with their storage bits) and the MIL op type. So a classifier, a text tower and a UNet block are
described in the same terms, whatever network they came from.

Class rules (mirroring ``features.py``): ``conv`` with a 1x1(x1) kernel and one group ->
``LINEAR``; ``conv`` over a sequence (rank-3 input, k > 1) or over time (rank-5, k_t > 1) ->
``CONV3D``; other ``conv``/``conv_transpose`` -> ``CONV``; ``linear`` and ``matmul`` with a
constant operand -> ``LINEAR``; ``matmul`` of two activations, ``softmax`` and
``scaled_dot_product_attention`` -> ``ATTN`` (the attention core counts its ``L_q x L_k`` score
matrix twice, as written and read, like the analytic features); normalizations and reductions ->
``NORM``; copies and reshapes -> ``LAYOUT``; everything else -> ``ELTWISE``.

coremltools is needed only by :func:`convert_torch`; :func:`program_ops` works on any MIL
``Program`` object (duck-typed).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import astuple, dataclass

from latency_models.features import OpClass

LAYOUT_OPS = frozenset({
    "transpose", "reshape", "concat", "split", "slice_by_index", "slice_by_size", "gather",
    "gather_nd", "gather_along_axis", "tile", "expand_dims", "squeeze", "pad", "stack",
    "upsample_nearest_neighbor", "upsample_bilinear", "resize_nearest_neighbor", "resize_bilinear",
    "resize", "pixel_shuffle", "pixel_unshuffle", "space_to_depth", "depth_to_space", "reverse",
    "flatten2d", "sliding_windows", "crop", "crop_resize", "band_part", "reshape_like",
    "scatter", "scatter_nd", "scatter_along_axis", "identity"})
NORM_OPS = frozenset({
    "layer_norm", "batch_norm", "instance_norm", "l2_norm", "local_response_norm"})
ATTN_OPS = frozenset({"softmax", "scaled_dot_product_attention"})
SKIP_PREFIX = ("const",)  # const and constexpr_* produce weights, not work
NORM_FLOPS_PER_ELEMENT = 8.0  # features.py: a normalization costs 8 FLOPs per element
SOFTMAX_FLOPS_PER_ELEMENT = 5.0


@dataclass(frozen=True)
class MilOp:
    """One operator of a program: ``cls`` (OpClass code), ``flops``, ``act`` (activation
    elements read + written), ``weights`` (weight elements read), ``weight_bits`` (their
    storage bits, 0 without weights) and ``op_type`` (the MIL op)."""

    cls: int
    flops: float
    act: float
    weights: float
    weight_bits: int
    op_type: str


def _size(var) -> int:
    shape = getattr(var, "shape", None)
    if shape is None:
        return 1
    try:
        return int(math.prod(int(d) for d in shape))
    except (TypeError, ValueError):  # symbolic dimension: not in the fixed-shape programs here
        return 0


def _is_float(var) -> bool:
    name = getattr(getattr(var, "dtype", None), "__name__", str(getattr(var, "dtype", "")))
    return name.startswith("fp")


def _dtype_bits(var) -> int:
    dt = getattr(var, "dtype", None)
    width = getattr(dt, "get_bitwidth", None)
    if callable(width):
        return int(width())
    name = getattr(dt, "__name__", str(dt))
    digits = "".join(ch for ch in name if ch.isdigit())
    return int(digits) if digits else 32


def _weight_bits(producer, var) -> int:
    """Storage bits per element of a weight produced by ``const``/``constexpr_*``."""
    t = producer.op_type
    if t == "const":
        return _dtype_bits(var)
    ins = producer.inputs
    if "lut" in ins:  # palettized: 2**bits entries per palette
        lut = ins["lut"]
        shape = tuple(int(d) for d in lut.shape)
        entries = shape[-2] if len(shape) >= 2 else shape[0]
        return max(1, round(math.log2(max(entries, 2))))
    for key in ("quantized_data", "data"):
        if key in ins:
            return _dtype_bits(ins[key])
    return _dtype_bits(var)


def _inputs(op) -> list:
    out = []
    for v in op.inputs.values():
        if isinstance(v, (list, tuple)):
            out.extend(v)
        else:
            out.append(v)
    return out


def _const_producer(var):
    p = getattr(var, "op", None)
    return p if p is not None and p.op_type.startswith(SKIP_PREFIX) else None


def _klass(op, ins: dict, w_const: bool) -> OpClass:
    t = op.op_type
    if t in ("conv", "conv_transpose"):
        w = ins["weight"]
        k = tuple(int(d) for d in w.shape[2:])
        groups = int(ins["groups"].val) if "groups" in ins and ins["groups"].val is not None else 1
        if t == "conv" and math.prod(k) == 1 and groups == 1:
            return OpClass.LINEAR
        if t == "conv" and ((len(k) == 1 and k[0] > 1) or (len(k) == 3 and k[0] > 1)):
            return OpClass.CONV3D
        return OpClass.CONV
    if t == "linear":
        return OpClass.LINEAR
    if t in ("matmul", "einsum"):
        return OpClass.LINEAR if w_const else OpClass.ATTN
    if t in ATTN_OPS:
        return OpClass.ATTN
    if t in NORM_OPS or t.startswith("reduce_"):
        return OpClass.NORM
    if t in LAYOUT_OPS:
        return OpClass.LAYOUT
    return OpClass.ELTWISE


def _flops(op, ins: dict, out_size: int, cls: OpClass) -> float:
    t = op.op_type
    if t == "conv":
        return 2.0 * out_size * math.prod(int(d) for d in ins["weight"].shape[1:])
    if t == "conv_transpose":
        return 2.0 * _size(ins["x"]) * math.prod(int(d) for d in ins["weight"].shape[1:])
    if t == "linear":
        return 2.0 * out_size * int(ins["weight"].shape[-1])
    if t == "matmul":
        x = ins["x"]
        tx = bool(ins["transpose_x"].val) if "transpose_x" in ins else False
        k = int(x.shape[-2] if tx and len(x.shape) > 1 else x.shape[-1])
        return 2.0 * out_size * k
    if t == "scaled_dot_product_attention":
        q, k, v = ins["query"], ins["key"], ins["value"]
        scores = out_size // int(v.shape[-1]) * int(k.shape[-2])
        return 2.0 * scores * (int(q.shape[-1]) + int(v.shape[-1])) + SOFTMAX_FLOPS_PER_ELEMENT * scores
    if t == "softmax":
        return SOFTMAX_FLOPS_PER_ELEMENT * out_size
    if t in NORM_OPS:
        return NORM_FLOPS_PER_ELEMENT * out_size
    if cls is OpClass.NORM:  # reductions read every element once
        return float(sum(_size(v) for k, v in ins.items() if k == "x"))
    if cls is OpClass.LAYOUT:
        return 0.0
    if t in ("avg_pool", "max_pool", "l2_pool"):
        return float(out_size * math.prod(int(d) for d in ins["kernel_sizes"].val))
    return float(out_size)


def _walk(block) -> Iterable:
    for op in block.operations:
        yield op
        for b in getattr(op, "blocks", ()) or ():
            yield from _walk(b)


def program_ops(prog, function: str = "main") -> list[MilOp]:
    """The :class:`MilOp` of every non-constant operation of ``prog`` (a coremltools MIL
    ``Program``), in program order."""
    rows: list[MilOp] = []
    for op in _walk(prog.functions[function]):
        t = op.op_type
        if t.startswith(SKIP_PREFIX) or not op.outputs:
            continue
        ins = {k: v for k, v in op.inputs.items() if not isinstance(v, (list, tuple))}
        act = 0
        weights = 0
        bits_x_elems = 0
        for v in _inputs(op):
            prod = _const_producer(v)
            n = _size(v)
            if prod is None:
                act += n
            elif _is_float(v) and n > 1:
                weights += n
                bits_x_elems += n * _weight_bits(prod, v)
        out_size = sum(_size(v) for v in op.outputs)
        act += out_size
        cls = _klass(op, ins, weights > 0)
        if t == "scaled_dot_product_attention":
            act += 2 * (out_size // max(int(ins["value"].shape[-1]), 1)) * int(ins["key"].shape[-2])
        bits = round(bits_x_elems / weights) if weights else 0
        rows.append(MilOp(int(cls), _flops(op, ins, out_size, cls), float(act), float(weights), bits, t))
    return rows


def aggregate(ops: Sequence[MilOp], multiplicity: int = 1) -> Counter:
    """Identical operators merged: ``Counter({MilOp: count})`` (``count x multiplicity``)."""
    c: Counter = Counter()
    for o in ops:
        c[o] += multiplicity
    return c


def totals(ops: Counter | Sequence[MilOp]) -> dict[str, float]:
    """Summed features in the names of :meth:`latency_models.features.OpTable.totals`."""
    items = ops.items() if isinstance(ops, Counter) else ((o, 1) for o in ops)
    out = {f"{c.name.lower()}_{k}": 0.0 for c in OpClass for k in ("gflop", "ops")}
    out.update(act_melem=0.0, weight_melem=0.0, n_ops=0.0)
    for o, n in items:
        name = OpClass(o.cls).name.lower()
        out[f"{name}_gflop"] += n * o.flops / 1e9
        out[f"{name}_ops"] += n
        out["act_melem"] += n * o.act / 1e6
        out["weight_melem"] += n * o.weights / 1e6
        out["n_ops"] += n
    return out


def op_row(o: MilOp) -> tuple:
    """``(cls, flops, act, weights, weight_bits, op_type)``: the columns of the ops table."""
    return astuple(o)
