"""``supernet``: one weight-sharing video UNet over the whole search space (one-shot NAS).

Every temporal slot of the space (stage, unit below the stage's largest count) holds one
module per temporal kind allowed there; kernel sizes share the largest kernel by centre crop
(Once-for-All) and head counts share the attention projections, or each variant gets its own
module (``kernel_sharing`` / ``head_sharing: separate``). The spatial layers are short
training's pretrained image backbone, frozen. The temporal modules train once per (backbone,
scale, data, space, training options): each step draws candidate(s) from the space, builds
them with ``build_model`` and runs them on the shared tensors (``functional_call``). Cached as
``<cache>/supernet/<key>.safetensors`` + ``.json`` under a file lock; resumable from a
checkpoint every ``checkpoint_every`` steps (randomness is drawn per step from ``(seed,
step)``). Score = image-only held-out loss minus the candidate's held-out loss with inherited
weights (optionally after ``finetune_steps``), on short training's validation batches.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from evaluators._common import CODE_VERSION, NON_SCORING_KEYS, BuiltinEvaluator
from evaluators._pretrain import pretrained_spatial
from evaluators._torch_setup import (
    FunctionalModel,
    ReusedBlocks,
    TorchOptions,
    cache_root,
    data_splits,
    denoise_loss,
    drop_checkpoint,
    load_checkpoint,
    locked_artifact,
    mean_loss,
    save_checkpoint,
    scaled_arch,
    seeded_batch,
    torch_session,
    validation_batches,
)
from evaluators.data import DATA_VERSION
from search_space.arch import ArchConfig, StageChoice
from search_space.backbone import BackboneSpec
from search_space.errors import ConfigError
from search_space.geometry import BlockSignature, network_blocks
from search_space.space import SearchSpace
from search_space.task import VideoTask

#: bump when a change here changes trained weights or scores (part of every key)
SUPERNET_VERSION = "supernet-1"


@dataclass(frozen=True)
class SupernetTrainOptions:
    """One-time training: ``steps`` AdamW steps (``lr``, ``warmup`` linear steps, then
    ``constant`` or ``cosine`` to 0); ``sampling``: ``uniform`` = one candidate of the space per
    step, ``max_count`` = every stage at its largest count with a random kind/variant,
    ``sandwich`` = both (twice the cost); ``ema``: decay of the kept weight average, per update
    of each weight (0 = last iterate); ``checkpoint_every`` does not change the weights.
    Defaults chosen on the choose sample of the fidelity audit (benchmarks/supernet_design.py,
    docs/proxies.md)."""

    steps: int = 300
    lr: float = 3e-3
    warmup: int = 5
    schedule: Literal["constant", "cosine"] = "constant"
    sampling: Literal["uniform", "max_count", "sandwich"] = "uniform"
    kernel_sharing: Literal["crop", "separate"] = "crop"
    head_sharing: Literal["shared", "separate"] = "shared"
    ema: float = 0.95
    seed: int = 0
    checkpoint_every: int = 50

    def __post_init__(self) -> None:
        if self.steps < 1 or self.warmup < 0 or self.checkpoint_every < 1:
            raise ConfigError("train: steps >= 1, warmup >= 0 and checkpoint_every >= 1 required")
        if self.lr <= 0:
            raise ConfigError(f"train.lr: must be > 0, got {self.lr}")
        if not 0 <= self.ema < 1:
            raise ConfigError(f"train.ema: must be in [0, 1), got {self.ema}")


@dataclass(frozen=True)
class SupernetOptions(TorchOptions):
    """``space``: restrictions of the backbone's default space, exactly as an experiment
    config's ``space:`` section (``{}`` = the default space); ``batch``: videos per training
    step and per validation batch (4, as short_train, so the validation batches are short
    training's); ``eval_batch``: videos per forward pass when scoring (validation batches are
    concatenated; same loss up to float rounding); ``finetune_steps``/``finetune_lr``: AdamW
    steps on the candidate's inherited temporal weights before scoring (0 = none: on the
    choose sample 3 and 10 steps ranked worse, at 2-3x the CPU time)."""

    batch: int = 4
    space: dict = field(default_factory=dict)
    train: SupernetTrainOptions = field(default_factory=SupernetTrainOptions)
    val_timesteps: int = 2
    eval_batch: int = 32
    finetune_steps: int = 0
    finetune_lr: float = 3e-3

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.val_timesteps < 1 or self.eval_batch < 1 or self.finetune_steps < 0:
            raise ConfigError("val_timesteps >= 1, eval_batch >= 1, finetune_steps >= 0 required")
        if self.finetune_lr <= 0:
            raise ConfigError(f"finetune_lr: must be > 0, got {self.finetune_lr}")


def nominal_task(backbone: BackboneSpec, latent_channels: int = 4) -> VideoTask:
    """The task the space is resolved with (only ``text_dim`` matters for its validity)."""
    return VideoTask(latent_channels=latent_channels, text_dim=backbone.cross_attention_dim)


def _crop(t: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """The centred sub-tensor of ``t`` of ``shape`` (a view: gradients reach ``t``)."""
    idx = []
    for a, b in zip(t.shape, shape):
        if b > a:
            raise ValueError(f"cannot crop {tuple(t.shape)} to {tuple(shape)}")
        idx.append(slice((a - b) // 2, (a - b) // 2 + b))
    return t[tuple(idx)]


class Supernet(nn.Module):
    """The shared temporal modules of ``space`` on the scaled backbone.

    ``templates[key]`` is one temporal block (built by ``build_block``) per slot, kind and
    (if not shared) variant; key ``<sid>-<unit>-<kind>[-k<kt>x<ks>][-h<heads>]``.
    :meth:`subnet_tensors` maps a built candidate's temporal parameters to (cropped) views.
    """

    def __init__(self, full: BackboneSpec, space: SearchSpace, opts: SupernetOptions) -> None:
        from search_space.modules import build_block

        super().__init__()
        self.full, self.space, self.opts = full, space, opts
        self.train_opts = opts.train
        self.templates = nn.ModuleDict()
        for ss in space.stages:
            top = max(ss.counts)
            kt, ks = max(ss.kernel_t), max(ss.kernel_s)
            for c in space.stage_choices(ss.stage):
                if c.is_none:
                    continue
                crop = self.train_opts.kernel_sharing == "crop"
                c = StageChoice(c.kind, top, c.heads, kt if crop and c.kernel_t else c.kernel_t,
                                ks if crop and c.kernel_s else c.kernel_s)
                for path, sig in self._temporal_sigs(ss.stage, c):
                    key = self.key(path, sig)
                    if key not in self.templates:
                        self.templates[key] = build_block(sig)

    def _temporal_sigs(self, sid: str, c: StageChoice) -> list[tuple[str, BlockSignature]]:
        arch = ArchConfig.create(self.full.name, self.space.task, {sid: c}, self.full.stage_ids)
        bb, sa = scaled_arch(self.full, self.opts, arch)
        return [(b.path, b.sig) for b in network_blocks(bb, sa.task, sa) if b.path.startswith(
            f"stages.{sid}.temporal.")]

    def key(self, path: str, sig: BlockSignature) -> str:
        _, sid, _, unit = path.split(".")[:4]
        k = f"{sid}-{unit}-{sig.kind.value}"
        if sig.kind.is_conv and self.train_opts.kernel_sharing == "separate":
            k += f"-k{sig.kernel_t}x{sig.kernel_s}"
        if sig.kind.is_attention and self.train_opts.head_sharing == "separate":
            k += f"-h{sig.heads}"
        return k

    def subnet_tensors(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """Full name -> view of the shared weights, for every temporal parameter of ``model``
        (a ``VideoUNet`` of a candidate of the space at this scale)."""
        from search_space.modules import is_temporal_name

        sigs = {b.path: b.sig for b in model.blocks}
        out = {}
        for name, p in model.named_parameters():
            if not is_temporal_name(name):
                continue
            parts = name.split(".")
            path = ".".join(parts[:4])
            tmpl = self.templates[self.key(path, sigs[path])]
            out[name] = _crop(tmpl.get_parameter(".".join(parts[4:])), p.shape)
        return out

    def sample(self, rng: np.random.Generator) -> list[ArchConfig]:
        """The candidate(s) one training step runs (see ``SupernetTrainOptions.sampling``)."""
        mode = self.train_opts.sampling
        out = []
        if mode in ("max_count", "sandwich"):
            picks = {}
            for ss in self.space.stages:
                top = [c for c in self.space.stage_choices(ss.stage) if c.count == max(ss.counts)]
                picks[ss.stage] = top[int(rng.integers(len(top)))] if top else StageChoice()
            out.append(ArchConfig.create(self.full.name, self.space.task, picks, self.full.stage_ids))
        if mode in ("uniform", "sandwich"):
            out.append(self.space.sample(rng))
        return out


# ---- training --------------------------------------------------------------------------------
def _lr_factor(tr: SupernetTrainOptions, step: int) -> float:
    warm = min(1.0, (step + 1) / max(1, tr.warmup))
    return warm * 0.5 * (1 + np.cos(np.pi * step / tr.steps)) if tr.schedule == "cosine" else warm


def _spatial_state(full: BackboneSpec, opts: SupernetOptions, task: VideoTask
                   ) -> dict[str, torch.Tensor]:
    if opts.spatial == "pretrained":
        return pretrained_spatial(full, opts, task.latent_channels)[0]
    from search_space.modules import build_image_model
    torch.manual_seed(opts.train.seed)  # "random": one seeded image model for every candidate
    bb = opts.scale.backbone(full)
    return build_image_model(bb, opts.scale.task(task, bb)).spatial_state_dict()


def _batch_seed(seed: int, i: int) -> int:
    return seed * 1_000_003 + i


def train_supernet(full: BackboneSpec, opts: SupernetOptions, space: SearchSpace, ckpt: str,
                   progress: bool = True) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Train the shared temporal weights, resuming from the checkpoint ``ckpt`` if there is
    one. Returns ``(template state dict, metadata)``."""
    from tqdm import tqdm

    from search_space.modules import build_model

    tr = opts.train
    t0, c0 = time.perf_counter(), time.process_time()
    spatial = _spatial_state(full, opts, space.task)
    train, _ = data_splits(full, opts, space.task.latent_channels)
    blocks = ReusedBlocks()
    with torch_session(tr.seed, opts.threads):
        net = Supernet(full, space, opts)
        params = dict(net.named_parameters())
        opt = torch.optim.AdamW(params.values(), lr=tr.lr, weight_decay=0.0)
        ema = {k: p.detach().clone() for k, p in params.items()} if tr.ema else {}
        groups = {"param": params, "ema": ema}
        done = load_checkpoint(ckpt, groups, opt) or {"step": 0, "curve": [], "spent_s": [0, 0]}
        start, curve, spent = done["step"], done["curve"], done["spent_s"]
        bar = tqdm(range(start, tr.steps), total=tr.steps, initial=start, leave=False,
                   desc=f"supernet {full.name}", disable=not progress,
                   mininterval=1.0 if sys.stderr.isatty() else 10.0)
        run = None
        for step in bar:
            for g in opt.param_groups:
                g["lr"] = tr.lr * _lr_factor(tr, step)
            archs = net.sample(np.random.default_rng([tr.seed, step]))
            opt.zero_grad(set_to_none=True)
            for k, arch in enumerate(archs):
                bb, sa = scaled_arch(full, opts, arch)
                model = build_model(bb, sa.task, sa, blocks)
                batch = seeded_batch(train, opts.batch, _batch_seed(tr.seed, step * len(archs) + k))
                fm = FunctionalModel(model, {**spatial, **net.subnet_tensors(model)})
                loss = denoise_loss(fm, *batch) / len(archs)
                loss.backward()
                lv = float(loss.detach()) * len(archs)
                run = lv if run is None else 0.98 * run + 0.02 * lv
            torch.nn.utils.clip_grad_norm_([p for p in params.values() if p.grad is not None], 1.0)
            opt.step()
            with torch.no_grad():
                for k, v in ema.items():
                    if params[k].grad is not None:  # average over the updates of this weight
                        v.mul_(tr.ema).add_(params[k].detach(), alpha=1 - tr.ema)
            if step % 20 == 0 or step == tr.steps - 1:
                curve.append([step, round(run, 5)])
                bar.set_postfix(loss=f"{run:.4f}")
            if (step + 1) % tr.checkpoint_every == 0 and step + 1 < tr.steps:
                save_checkpoint(ckpt, step + 1, groups, opt, {"curve": curve, "spent_s": [
                    spent[0] + time.perf_counter() - t0, spent[1] + time.process_time() - c0]})
    wall, cpu = spent[0] + time.perf_counter() - t0, spent[1] + time.process_time() - c0
    meta = {"steps": tr.steps, "train_loss_curve": curve, "wall_time_s": round(wall, 2),
            "cpu_s": round(cpu, 2), "resumed_at_step": start, "templates": len(net.templates),
            "temporal_params": int(sum(p.numel() for p in params.values())),
            "space": space_dict(space), "code": CODE_VERSION, "supernet": SUPERNET_VERSION,
            "data_version": DATA_VERSION}
    return {k: (ema or params)[k].detach().clone() for k in params}, meta


def space_dict(space: SearchSpace) -> dict[str, Any]:
    """The resolved space as a restriction mapping (canonical: equal spaces, equal dicts)."""
    return {s.stage: s.to_dict() for s in space.stages}


# ---- the evaluator ---------------------------------------------------------------------------
_MEMO: dict[str, tuple[Supernet, dict[str, Any]]] = {}


class SupernetEvaluator(BuiltinEvaluator):
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
            self._spatial[task.latent_channels] = _spatial_state(self.backbone, self.options, task)
        return self._spatial[task.latent_channels]

    def _key(self, scoring_only: tuple[str, ...] = (), **extra: Any) -> str:
        o = {k: v for k, v in asdict(self.options).items()
             if k not in NON_SCORING_KEYS and k not in scoring_only}
        o["space"] = self._space_dict  # resolved: {} and the default space spelled out agree
        o["train"].pop("checkpoint_every")
        blob = json.dumps({"name": self.name, "options": o, "backbone": self.backbone.to_dict(),
                           "code": CODE_VERSION, "supernet": SUPERNET_VERSION,
                           "data_version": DATA_VERSION, **extra}, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    @property
    def config_key(self) -> str:
        return self._key()

    def training_key(self, latent_channels: int) -> str:
        """Key of the trained weights: everything but the scoring-only options."""
        return self._key(("eval_batch", "val_timesteps", "finetune_steps", "finetune_lr"),
                         latent_channels=latent_channels)

    def supernet(self, latent_channels: int, progress: bool = True) -> tuple[Supernet, dict[str, Any]]:
        """The trained supernet (trained on first use, then read from the cache) and its
        metadata (training wall/CPU seconds, loss curve)."""
        key = self.training_key(latent_channels)
        if key not in _MEMO:
            o = self.options
            space = self.space_for(nominal_task(self.backbone, latent_channels))
            d = os.path.join(cache_root(o), "supernet")
            os.makedirs(d, exist_ok=True)
            ckpt = os.path.join(d, f"{key}.ckpt")
            state, meta = locked_artifact(d, key, lambda: train_supernet(
                self.backbone, o, space, ckpt, progress))
            drop_checkpoint(ckpt)  # the final weights are stored
            with torch_session(o.train.seed, o.threads):
                net = Supernet(self.backbone, space, o)
            net.load_state_dict(state)
            net.requires_grad_(False)
            _MEMO[key] = (net, meta)
        return _MEMO[key]

    def one_time_cost(self, latent_channels: int = 4) -> dict[str, float]:
        """Wall and CPU seconds of the (cached) one-time training."""
        return {k: float(self.supernet(latent_channels)[1][k]) for k in ("wall_time_s", "cpu_s")}

    def check_arch(self, arch: ArchConfig) -> None:
        super().check_arch(arch)
        if not self.space_for(arch.task).contains(arch):
            raise ConfigError(f"arch {arch.arch_id} is not in the supernet's search space "
                              f"(set evaluator.options.space to the experiment's space)")

    def subnet(self, arch: ArchConfig, batch: int | None = None) -> nn.Module:
        """The scaled candidate (model batch ``batch``, default ``eval_batch``) with the
        pretrained spatial weights and its temporal weights copied from the supernet."""
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
        groups = self._val_groups(C)
        c0 = time.process_time()
        with torch_session(seed, o.threads):
            base = self._image_only(arch, groups)
            if o.finetune_steps and arch.num_temporal_blocks:
                model = self.subnet(arch, len(groups[0][0]))
                self._finetune(model, arch, seed)
                vl = mean_loss(model, groups)
            else:
                vl = self._inherited_loss(arch, groups)
        return base - vl, {"val_loss": vl, "val_loss_image": base,
                           "rel_improvement": (base - vl) / base, "cpu_s": time.process_time() - c0,
                           "supernet_train_wall_s": float(meta["wall_time_s"])}

    def _inherited_loss(self, arch: ArchConfig, groups) -> float:
        """Validation loss of the candidate run directly on the shared tensors (no copies;
        modules reused across candidates: the cheap path of :meth:`subnet`)."""
        from search_space.modules import build_model

        net = self.supernet(arch.task.latent_channels)[0]
        bb, sa = scaled_arch(self.backbone, replace(self.options, batch=len(groups[0][0])), arch)
        model = build_model(bb, sa.task, sa, self._blocks)
        fm = FunctionalModel(model, {**self.spatial_state(arch.task), **net.subnet_tensors(model)})
        with torch.inference_mode():
            tot = sum(float(denoise_loss(fm, *g, input_grad=False)) for g in groups)
        return tot / len(groups)

    def _image_only(self, arch: ArchConfig, groups) -> float:
        from search_space.modules import build_image_model
        C = arch.task.latent_channels
        if C not in self._image_loss:
            bb, sa = scaled_arch(self.backbone, replace(self.options, batch=len(groups[0][0])), arch)
            model = build_image_model(bb, sa.task)
            model.load_spatial_state_dict(self.spatial_state(arch.task))
            self._image_loss[C] = mean_loss(model, groups)
        return self._image_loss[C]

    def _finetune(self, model: nn.Module, arch: ArchConfig, seed: int) -> None:
        """``finetune_steps`` AdamW steps on the candidate's temporal weights (batch ``batch``,
        data and noise from ``seed``), in place."""
        o = self.options
        train, _ = data_splits(self.backbone, o, arch.task.latent_channels)
        small = self.subnet(arch, o.batch)
        params = list(small.temporal_parameters())
        opt = torch.optim.AdamW(params, lr=o.finetune_lr, weight_decay=0.0)
        for step in range(o.finetune_steps):
            loss = denoise_loss(small, *seeded_batch(train, o.batch, _batch_seed(10_007 + seed, step)))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
        with torch.no_grad():
            model.load_state_dict(small.state_dict())
