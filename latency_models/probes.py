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
