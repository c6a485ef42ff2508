"""The probe set: the distinct block signatures a search space can produce (torch-free).

Derived from :func:`search_space.geometry.network_blocks`, per stage choice (never per whole
architecture): the fixed image blocks plus, for every stage and every :class:`StageChoice` the
space allows there, the temporal blocks that choice inserts. ``count`` only repeats a signature,
so the set is small even when the space holds billions of architectures.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from latency_models.measurements import probe_id
from search_space.arch import NO_TEMPORAL, ArchConfig, StageChoice
from search_space.backbone import BackboneSpec
from search_space.errors import TemponasError
from search_space.geometry import BlockOp, BlockSignature, image_blocks, network_blocks
from search_space.space import SearchSpace
from search_space.task import VideoTask


@dataclass(frozen=True)
class Probe:
    """One block to measure: its signature, id, and the stages/paths where it occurs."""

    sig: BlockSignature
    id: str
    stages: tuple[str, ...]
    example_path: str

    @property
    def op_name(self) -> str:
        return self.sig.op_name


def stage_choice_blocks(backbone: BackboneSpec, task: VideoTask, stage: str,
                        choice: StageChoice):
    """The temporal :class:`BlockInstance` s that ``choice`` inserts in ``stage``."""
    arch = ArchConfig(backbone.name, task, tuple((s, choice if s == stage else NO_TEMPORAL)
                                                 for s in backbone.stage_ids))
    return tuple(b for b in network_blocks(backbone, task, arch)
                 if b.stage == stage and b.op is BlockOp.TEMPORAL)


def probes(space: SearchSpace, include_image: bool = True) -> list[Probe]:
    """Distinct block signatures of ``space`` (image blocks first, then temporal by stage)."""
    found: dict[BlockSignature, tuple[list[str], str]] = {}

    def add(sig: BlockSignature, stage: str, path: str) -> None:
        ent = found.setdefault(sig, ([], path))
        if stage not in ent[0]:
            ent[0].append(stage)

    if include_image:
        for b in image_blocks(space.backbone, space.task):
            add(b.sig, b.stage, b.path)
    for st in space.stages:
        for choice in space.stage_choices(st.stage):
            if choice.is_none:
                continue
            for b in stage_choice_blocks(space.backbone, space.task, st.stage, choice):
                add(b.sig, b.stage, b.path)
    return [Probe(s, probe_id(s), tuple(st), path) for s, (st, path) in found.items()]


def random_archs(space: SearchSpace, n: int, seed: int = 0,
                 include_image: bool = True) -> list[ArchConfig]:
    """``n`` distinct random architectures of ``space`` (the image backbone first if asked)."""
    return space.sample_distinct(n, seed, first=(space.arch({}),) if include_image else ())


def iter_signature_rows(items: list[Probe]) -> Iterator[dict]:
    """Flat dicts for tables: id, op, stages and the signature fields."""
    for p in items:
        yield {"probe_id": p.id, "op": p.op_name, "stages": ",".join(p.stages),
               "example_path": p.example_path, **p.sig.to_dict()}


WIDTH_MULTS = (0.5, 0.75, 1.25, 1.5)
SIZE_MULTS = (0.5, 0.75, 1.25, 1.5)
CAL_HEADS = (1, 2, 4, 8, 16)
CAL_KERNEL_T = (3, 5, 7)
CAL_KERNEL_S = (1, 3)
CAL_COST_CAP = 2.5  # calibration blocks cost at most this times the dearest probe
CAL_NEIGHBOURS = 48  # neighbour spaces drawn (each adds tens of candidate signatures)


def calibration_probes(space: SearchSpace, n: int, seed: int = 0) -> list[Probe]:
    """``n`` distinct block signatures from *neighbours* of ``space`` (none of them a probe of
    ``space`` itself): the same topology at other widths (x0.5-1.5), latent sizes (x0.5-1.5)
    and frame counts (x0.5-1.5), with every temporal kind, heads 1-16, temporal kernels 3-7 and
    spatial kernels 1-3. Measured next to the probe set they let a predictor interpolate to
    signatures that were never timed, as nn-Meter samples kernel configurations around a model
    space instead of only the model's own kernels.
    """
    import numpy as np

    from latency_models.features import op_table

    def cost(sig: BlockSignature) -> float:  # FLOPs + activation traffic, a latency proxy
        t = op_table(sig)
        return float(t.flops.sum() + 50.0 * t.act.sum())

    rng = np.random.default_rng(seed)
    own_probes = probes(space)
    cap = CAL_COST_CAP * max(cost(p.sig) for p in own_probes)
    levels = len(space.backbone.stages) // 2
    step = 2 ** max(levels - 1, 0)
    task = space.task
    by_op: dict[str, list[Probe]] = {}
    seen: set[BlockSignature] = {p.sig for p in own_probes}
    for _ in range(CAL_NEIGHBOURS):
        w = float(rng.choice(WIDTH_MULTS + (1.0,)))
        hs = float(rng.choice(SIZE_MULTS + (1.0,)))
        fs = float(rng.choice(SIZE_MULTS + (1.0,)))
        h = max(step, round(task.latent_height * hs / step) * step)
        wd = max(step, round(task.latent_width * hs / step) * step)
        t = max(2, round(task.num_frames * fs))
        try:
            bb = space.backbone.scaled(w)
            sub_task = task.replace(latent_height=h, latent_width=wd, num_frames=t,
                                    text_dim=bb.cross_attention_dim)
            sub = SearchSpace.from_dict(bb, sub_task, {"defaults": {
                "heads": list(CAL_HEADS), "kernel_t": list(CAL_KERNEL_T),
                "kernel_s": list(CAL_KERNEL_S)}})
        except TemponasError:  # a neighbour the space rules reject is skipped
            continue
        for p in probes(sub):
            if p.sig not in seen and cost(p.sig) <= cap:
                seen.add(p.sig)
                by_op.setdefault(p.op_name, []).append(p)
    # stratified: every block type as evenly as the pool allows, random within a type
    queues = {op: [ps[i] for i in rng.permutation(len(ps))] for op, ps in sorted(by_op.items())}
    out: list[Probe] = []
    while len(out) < n and any(queues.values()):
        for op in list(queues):
            if queues[op] and len(out) < n:
                out.append(queues[op].pop())
    return out
