"""``supernet``: one weight-sharing video UNet over the whole search space (one-shot NAS).

Every temporal slot of the space (stage, unit below the stage's largest count) holds one
module per temporal kind allowed there; kernel sizes share the largest kernel by centre crop
(Once-for-All) and head counts share the attention projections, or each variant gets its own
module (``kernel_sharing`` / ``head_sharing: separate``). The spatial layers are short
training's (pretrained image backbone or the backbone's own weights), frozen. The temporal
modules train once per (backbone, scale, data, space, training options), in :meth:`setup`
before a search's first trial, on the evaluator's device and precision: each step draws
candidate(s) from the space, builds them with ``build_model`` and runs them on the shared
tensors (``functional_call``). Cached as ``<cache>/supernet/<key>.safetensors`` + ``.json``
under a file lock (key: ``scoring_dict`` with the space resolved); resumable from a
checkpoint every ``checkpoint_every`` steps (randomness is drawn per step from ``(seed,
step)``). Score = image-only held-out loss minus the candidate's held-out loss with inherited
weights (optionally after ``finetune_steps``), on short training's validation batches.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import torch
from torch import nn

from evaluators._common import CODE_VERSION
from evaluators._device import Runtime
from evaluators._supernet_net import (
    SUPERNET_VERSION,
    Supernet,
    SupernetOptions,
    SupernetTrainOptions,
    batch_seed,
    frozen_spatial_state,
    nominal_task,
    space_dict,
    train_supernet,
)
from evaluators._torch_setup import (
    TorchEvaluator,
    cache_root,
    data_splits,
    denoise_loss,
    mean_loss,
    prepare_data,
    scaled_arch,
    validation_batches,
)
from evaluators._weight_sharing import (
    FunctionalModel,
    ReusedBlocks,
    drop_checkpoint,
    locked_artifact,
    seeded_batch,
)
from evaluators.data import DATA_VERSION
from search_space.arch import ArchConfig
from search_space.errors import ConfigError
from search_space.space import SearchSpace
from search_space.task import VideoTask

__all__ = ["SupernetEvaluator", "SupernetOptions", "SupernetTrainOptions", "Supernet"]


# ---- the evaluator ---------------------------------------------------------------------------
_MEMO: dict[str, tuple[Supernet, dict[str, Any]]] = {}
#: options that change scores but not the trained weights (left out of the training key)
SCORING_ONLY = ("eval_batch", "val_timesteps", "finetune_steps", "finetune_lr")


class SupernetEvaluator(TorchEvaluator):
    """Held-out denoising gain of a candidate with weights inherited from a supernet."""

    name = "supernet"
    Options = SupernetOptions

    def __init__(self, backbone, options=None, where=None) -> None:
        super().__init__(backbone, options, where)
        self._spaces: dict[VideoTask, SearchSpace] = {}
        self._blocks = ReusedBlocks()
        self._groups: dict[int, list[tuple[torch.Tensor, ...]]] = {}
        w = where or "evaluators.supernet"
        self._space_dict = space_dict(self.space_for(nominal_task(backbone), f"{w}.space"))
        self._image_loss: dict[int, float] = {}
        self._spatial: dict[int, dict[str, torch.Tensor]] = {}

    def space_for(self, task: VideoTask, where: str = "evaluator.options.space") -> SearchSpace:
        if task not in self._spaces:
            self._spaces[task] = SearchSpace.from_dict(self.backbone, task, self.options.space, where)
        return self._spaces[task]

    def spatial_state(self, task: VideoTask) -> dict[str, torch.Tensor]:
        if task.latent_channels not in self._spatial:
            self._spatial[task.latent_channels] = frozen_spatial_state(self.backbone, self.options, task)
        return self._spatial[task.latent_channels]

    def _key(self, drop: tuple[str, ...] = (), **extra: Any) -> str:
        """sha256 of the scoring options (``scoring_dict``: data identity and the backbone
        weights' content hash included; runtime-only keys out) with the space resolved."""
        o = {k: v for k, v in self.options.scoring_dict().items() if k not in drop}
        o["space"] = self._space_dict  # resolved: {} and the default space spelled out agree
        o["train"] = {k: v for k, v in o["train"].items() if k != "checkpoint_every"}
        blob = json.dumps({"name": self.name, "options": o, "backbone": self.backbone.to_dict(),
                           "code": CODE_VERSION, "supernet": SUPERNET_VERSION,
                           "data_version": DATA_VERSION, **extra}, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    @property
    def config_key(self) -> str:
        return self._key()

    def training_key(self, latent_channels: int) -> str:
        """Key of the trained weights: everything but the scoring-only options."""
        return self._key(SCORING_ONLY, latent_channels=latent_channels)

    def setup(self, task: VideoTask, progress: bool | None = None) -> dict[str, Any]:
        """Encode the data (if yours) and train the supernet once (progress bar), before any
        trial: the search's workers then read it from the cache."""
        info = prepare_data(self.backbone, self.options, task.latent_channels, progress)
        meta = self.supernet(task.latent_channels, progress=progress is not False)[1]
        return {**info, "supernet": {k: meta.get(k) for k in ("key", "wall_time_s", "cpu_s", "steps")}}

    def supernet(self, latent_channels: int, progress: bool = True) -> tuple[Supernet, dict[str, Any]]:
        """The trained supernet (trained on first use, then read from the cache) and its
        metadata (training wall/CPU seconds, loss curve)."""
        key = self.training_key(latent_channels)
        d = os.path.join(cache_root(self.options), "supernet")
        if os.path.join(d, key) not in _MEMO:  # per cache file, like the pretrained backbone
            o = self.options
            space = self.space_for(nominal_task(self.backbone, latent_channels))
            ckpt = os.path.join(d, f"{key}.ckpt")
            state, meta = locked_artifact(d, key, lambda: train_supernet(
                self.backbone, o, space, ckpt, progress))
            drop_checkpoint(ckpt)  # the final weights are stored
            torch.manual_seed(o.train.seed)  # the init is overwritten: only for determinism
            net = Supernet(self.backbone, space, o)
            net.load_state_dict(state)
            net.requires_grad_(False)
            _MEMO[os.path.join(d, key)] = (net, meta)
        return _MEMO[os.path.join(d, key)]

    def one_time_cost(self, latent_channels: int = 4) -> dict[str, float]:
        """Wall and CPU seconds of the (cached) one-time training."""
        return {k: float(self.supernet(latent_channels)[1][k]) for k in ("wall_time_s", "cpu_s")}

    def check_arch(self, arch: ArchConfig) -> None:
        super().check_arch(arch)
        if not self.space_for(arch.task).contains(arch):
            raise ConfigError(f"arch {arch.arch_id} is not in the supernet's search space "
                              f"(set evaluator.options.space to the experiment's space)")

    def subnet(self, arch: ArchConfig, batch: int | None = None) -> nn.Module:
        """The scaled candidate (CPU; model batch ``batch``, default ``eval_batch``) with the
        spatial weights and its temporal weights copied from the supernet."""
        from search_space.modules import build_model

        o = self.options
        net, _ = self.supernet(arch.task.latent_channels)
        bb, sa = scaled_arch(self.backbone, replace(o, batch=batch or o.eval_batch), arch)
        model = build_model(bb, sa.task, sa)
        model.load_spatial_state_dict(self.spatial_state(arch.task))
        with torch.no_grad():
            model.load_state_dict(net.subnet_tensors(model), strict=False)
        model.freeze_spatial()
        return model

    def _val_groups(self, latent_channels: int) -> list[tuple[torch.Tensor, ...]]:
        """Short training's validation batches, concatenated into ``eval_batch``-sized groups
        (equal-sized, so the mean over groups is the mean over batches)."""
        if latent_channels not in self._groups:
            o = self.options
            _, val = data_splits(self.backbone, o, latent_channels)
            vb = validation_batches(val, o.batch, o.val_timesteps)
            per = max(1, o.eval_batch // o.batch)
            while len(vb) % per:
                per -= 1
            self._groups[latent_channels] = [
                tuple(torch.cat([b[i] for b in vb[j:j + per]]) for i in range(4))
                for j in range(0, len(vb), per)]
        return self._groups[latent_channels]

    def _score(self, arch: ArchConfig, seed: int, budget: int) -> tuple[float, Mapping[str, float]]:
        o = self.options
        C = arch.task.latent_channels
        meta = self.supernet(C)[1]  # one-time training / cache read: not part of the timing
        c0 = time.process_time()
        with o.session(seed) as rt:
            groups = rt.batches(self._val_groups(C))
            base = self._image_only(arch, groups, rt)
            if o.finetune_steps and arch.num_temporal_blocks:
                model = rt.module(self.subnet(arch, len(groups[0][0])))
                self._finetune(model, arch, seed, rt)
                vl = mean_loss(model, groups, rt)
            else:
                vl = self._inherited_loss(arch, groups, rt)
        return base - vl, {"val_loss": vl, "val_loss_image": base,
                           "rel_improvement": (base - vl) / base, "cpu_s": time.process_time() - c0,
                           "supernet_train_wall_s": float(meta["wall_time_s"])}

    def _inherited_loss(self, arch: ArchConfig, groups, rt: Runtime) -> float:
        """Validation loss of the candidate run directly on the shared tensors (no copies;
        modules reused across candidates: the cheap path of :meth:`subnet`)."""
        from search_space.modules import build_model

        net = rt.module(self.supernet(arch.task.latent_channels)[0])
        bb, sa = scaled_arch(self.backbone, replace(self.options, batch=len(groups[0][0])), arch)
        model = rt.module(build_model(bb, sa.task, sa, self._blocks))
        fm = FunctionalModel(model, {**rt.tensor_dict(self.spatial_state(arch.task)),
                                     **net.subnet_tensors(model)})
        with torch.inference_mode():
            tot = sum(float(denoise_loss(fm, *g, input_grad=False, rt=rt)) for g in groups)
        return tot / len(groups)

    def _image_only(self, arch: ArchConfig, groups, rt: Runtime) -> float:
        from search_space.modules import build_image_model
        C = arch.task.latent_channels
        if C not in self._image_loss:
            bb, sa = scaled_arch(self.backbone, replace(self.options, batch=len(groups[0][0])), arch)
            model = build_image_model(bb, sa.task)
            model.load_spatial_state_dict(self.spatial_state(arch.task))
            self._image_loss[C] = mean_loss(rt.module(model), groups, rt)
        return self._image_loss[C]

    def _finetune(self, model: nn.Module, arch: ArchConfig, seed: int, rt: Runtime) -> None:
        """``finetune_steps`` AdamW steps on the candidate's temporal weights (batch ``batch``,
        data and noise from ``seed``), in place."""
        o = self.options
        train, _ = data_splits(self.backbone, o, arch.task.latent_channels)
        small = rt.module(self.subnet(arch, o.batch))
        params = list(small.temporal_parameters())
        opt = torch.optim.AdamW(params, lr=o.finetune_lr, weight_decay=0.0)
        scaler = rt.grad_scaler()
        for step in range(o.finetune_steps):
            batch = rt.tensors(*seeded_batch(train, o.batch, batch_seed(10_007 + seed, step)))
            rt.optimizer_step(denoise_loss(small, *batch, rt=rt), opt, params, scaler, max_norm=1.0)
        with torch.no_grad():
            model.load_state_dict(small.state_dict())
