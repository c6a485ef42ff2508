"""The supernet of the ``supernet`` evaluator (:mod:`evaluators._supernet`): its options, the
shared temporal modules over a search space, and the resumable one-time training on them."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from evaluators._common import CODE_VERSION
from evaluators._device import Runtime
from evaluators._pretrain import pretrained_spatial
from evaluators._torch_setup import (
    TorchOptions,
    data_splits,
    denoise_loss,
    scaled_arch,
)
from evaluators._weight_sharing import (
    FunctionalModel,
    ReusedBlocks,
    load_checkpoint,
    save_checkpoint,
    seeded_batch,
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


def frozen_spatial_state(full: BackboneSpec, opts: SupernetOptions, task: VideoTask,
                         progress: bool = True) -> dict[str, torch.Tensor]:
    if opts.spatial != "random":  # pretrained, or the backbone's own weights
        return pretrained_spatial(full, opts, task.latent_channels, progress)[0]
    from search_space.modules import build_image_model
    torch.manual_seed(opts.train.seed)  # "random": one seeded image model for every candidate
    bb = opts.scale.backbone(full)
    return build_image_model(bb, opts.scale.task(task, bb)).spatial_state_dict()


def batch_seed(seed: int, i: int) -> int:
    return seed * 1_000_003 + i


def train_supernet(full: BackboneSpec, opts: SupernetOptions, space: SearchSpace, ckpt: str,
                   progress: bool = True) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Train the shared temporal weights on ``opts``' device and precision, resuming from the
    checkpoint ``ckpt`` if there is one. Returns ``(template state dict (CPU), metadata)``."""
    from tqdm import tqdm

    tr = opts.train
    spatial = frozen_spatial_state(full, opts, space.task, progress)  # pretraining: timed on its own
    train, _ = data_splits(full, opts, space.task.latent_channels)
    t0, c0 = time.perf_counter(), time.process_time()
    with opts.session(tr.seed) as rt:
        net = rt.module(Supernet(full, space, opts))
        params = dict(net.named_parameters())
        opt = torch.optim.AdamW(params.values(), lr=tr.lr, weight_decay=0.0)
        ema = {k: p.detach().clone() for k, p in params.items()} if tr.ema else {}
        groups = {"param": params, "ema": ema}
        done = load_checkpoint(ckpt, groups, opt) or {"step": 0, "curve": [], "spent_s": [0, 0]}
        start, curve, spent = done["step"], done["curve"], done["spent_s"]
        bar = tqdm(range(start, tr.steps), total=tr.steps, initial=start, leave=False,
                   desc=f"supernet {full.name}", disable=not progress,
                   mininterval=1.0 if sys.stderr.isatty() else 10.0)
        step_fn = _Stepper(full, opts, net, rt.tensor_dict(spatial), train, rt)
        run = None
        for step in bar:
            for g in opt.param_groups:
                g["lr"] = tr.lr * _lr_factor(tr, step)
            lv = step_fn(step, opt, params)
            run = lv if run is None else 0.98 * run + 0.02 * lv
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
            "data_version": DATA_VERSION, "device": str(rt.device), "precision": rt.precision}
    return {k: (ema or params)[k].detach().cpu().clone() for k in params}, meta


class _Stepper:
    """One training step of the supernet: the sampled candidate(s) run on the shared tensors
    (gradients accumulated, fp16 loss-scaled), clipped, one optimizer step."""

    def __init__(self, full: BackboneSpec, opts: SupernetOptions, net: Supernet,
                 spatial: dict[str, torch.Tensor], train, rt: Runtime) -> None:
        self.full, self.opts, self.net, self.spatial, self.train, self.rt = full, opts, net, spatial, train, rt
        self.blocks = ReusedBlocks()
        self.scaler = rt.grad_scaler()

    def __call__(self, step: int, opt: torch.optim.Optimizer, params: dict[str, nn.Parameter]) -> float:
        from search_space.modules import build_model

        tr, o, rt = self.opts.train, self.opts, self.rt
        archs = self.net.sample(np.random.default_rng([tr.seed, step]))
        opt.zero_grad(set_to_none=True)
        total = 0.0
        for k, arch in enumerate(archs):
            bb, sa = scaled_arch(self.full, o, arch)
            model = rt.module(build_model(bb, sa.task, sa, self.blocks))
            batch = rt.tensors(*seeded_batch(self.train, o.batch, batch_seed(tr.seed, step * len(archs) + k)))
            fm = FunctionalModel(model, {**self.spatial, **self.net.subnet_tensors(model)})
            loss = denoise_loss(fm, *batch, rt=rt) / len(archs)
            self.scaler.scale(loss).backward()
            total += float(loss.detach())
        rt.step(opt, [p for p in params.values() if p.grad is not None], self.scaler, max_norm=1.0)
        return total


def space_dict(space: SearchSpace) -> dict[str, Any]:
    """The resolved space as a restriction mapping (canonical: equal spaces, equal dicts)."""
    return {s.stage: s.to_dict() for s in space.stages}


