"""Prices of one (backbone, task) for a block-sum predictor (private).

Image blocks are summed once per stage; each ``(stage, StageChoice)`` is priced once, so
predicting an architecture is one look-up and one add per stage with temporal blocks.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from latency_models.composition import Composition
from latency_models.probes import stage_choice_blocks
from search_space.arch import NO_TEMPORAL, StageChoice
from search_space.backbone import BackboneSpec
from search_space.errors import TemponasError
from search_space.geometry import BlockSignature, image_blocks
from search_space.task import VideoTask

BlockMs = Callable[[Sequence[BlockSignature]], np.ndarray]


class PriceTable:
    """Prices of one (backbone, task): image blocks per stage and each (stage, choice).

    ``block_ms`` prices block signatures (ms, memoized by the model). Raw prices (sum of block
    predictions) are kept for fitting; ``scaled`` prices fold the composition correction in
    (``alpha * raw + gamma * count`` per stage choice; ``beta`` is the ``overhead`` entry of the
    breakdown). Look-ups go by the identity of the ``StageChoice`` object first (per stage; the
    cache holds the object, so its id cannot be reused), then by value.
    """

    def __init__(self, block_ms: BlockMs, backbone: BackboneSpec, task: VideoTask,
                 composition: Composition):
        self.block_ms, self.backbone, self.task = block_ms, backbone, task
        self.stage_ids = backbone.stage_ids
        blocks = image_blocks(backbone, task)
        ms = block_ms([b.sig for b in blocks])
        self.image_stage_ms: dict[str, float] = dict.fromkeys(("stem", *self.stage_ids, "head"), 0.0)
        for b, t in zip(blocks, ms):
            self.image_stage_ms[b.stage] = self.image_stage_ms.get(b.stage, 0.0) + float(t)
        self.image_ms = float(sum(self.image_stage_ms.values()))
        # per stage: StageChoice -> summed raw ms of its temporal blocks
        self.choice_ms: dict[str, dict[StageChoice, float]] = {s: {NO_TEMPORAL: 0.0} for s in self.stage_ids}
        self.rescale(composition)

    def rescale(self, comp: Composition) -> None:
        """Fold a new composition correction into the scaled prices."""
        self.comp = comp
        base = {k: comp.alpha * v for k, v in self.image_stage_ms.items()}
        if comp.beta:
            base["overhead"] = comp.beta
        self.base_per = base
        self.base_mean = comp.alpha * self.image_ms + comp.beta
        # per stage: id(choice) -> (choice, scaled ms)
        self.by_id: dict[str, dict[int, tuple[StageChoice, float]]] = {s: {} for s in self.stage_ids}

    def temporal_sigs(self, stage: str, choice: StageChoice) -> tuple[BlockSignature, ...]:
        return tuple(b.sig for b in stage_choice_blocks(self.backbone, self.task, stage, choice))

    def raw_price(self, stage: str, choice: StageChoice) -> float:
        """Summed block predictions of ``choice`` in ``stage`` (no composition correction)."""
        table = self.choice_ms.get(stage)
        if table is None:
            raise TemponasError(f"arch stage {stage!r} is not a stage of backbone "
                                f"{self.backbone.name!r} ({', '.join(self.stage_ids)})")
        ms = table.get(choice)
        if ms is None:
            ms = float(np.sum(self.block_ms(list(self.temporal_sigs(stage, choice)))))
            table[choice] = ms
        return ms

    def price(self, stage: str, choice: StageChoice) -> float:
        """Scaled ms of ``choice`` in ``stage`` (composition folded in)."""
        cache = self.by_id.get(stage)
        if cache is None:
            self.raw_price(stage, choice)  # raises the unknown-stage error
        ent = cache.get(id(choice))
        if ent is not None and ent[0] is choice:
            return ent[1]
        ms = self.comp.alpha * self.raw_price(stage, choice) + self.comp.gamma * choice.count
        if len(cache) > 100_000:
            cache.clear()
        cache[id(choice)] = (choice, ms)
        return ms
