"""``short_train``: the paper's proxy at small scale.

The scaled spatial backbone is pretrained once as an image denoiser (``_pretrain``), loaded
into the candidate and frozen; only the temporal blocks (zero-initialized, so training starts
from the image model exactly) train for ``budget`` steps on the bundled training videos.
Score = held-out video denoising loss of the image-only model minus that of the candidate
(higher is better; 0 for a candidate without temporal blocks).

The learning rate is constant after a short linear warm-up, so the model after ``A`` steps of
a ``B``-step run is the model of an ``A``-step run: :meth:`ShortTrainEvaluator.evaluate_budgets`
scores several budgets in one run. Results are cached as JSON by
``(config_key, arch_id, budget, seed)``.

``keep_weights``: every result also carries the evaluated temporal weights (safetensors bytes,
:mod:`evaluators._kept`), cached next to the JSON result; the search driver writes them into
the run folder.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from common.fsio import atomic_write_bytes, atomic_write_json, json_safe
from evaluators._kept import pack, spatial_sha256
from evaluators._pretrain import pretrain_key, pretrained_spatial
from evaluators._torch_setup import (
    NUM_TRAIN_TIMESTEPS,
    TorchEvaluator,
    TorchOptions,
    cache_root,
    data_splits,
    denoise_loss,
    mean_loss,
    prepare_data,
    scaled_arch,
    validation_batches,
    validation_subset,
    weights_key,
)
from evaluators._train_state import TrainState
from evaluators.base import EvalResult
from evaluators.options import options_dict, parse_options
from search_space.arch import ArchConfig
from search_space.errors import ConfigError
from search_space.task import VideoTask


@dataclass(frozen=True)
class ShortTrainOptions(TorchOptions):
    """``batch``: videos per training step (4: half the seed noise of 2 at equal compute);
    ``default_budget``: steps when ``evaluate(budget=0)``; ``lr``/``warmup``: AdamW on the
    temporal parameters; ``ema``: decay of the exponential moving average of the temporal
    weights that is evaluated (0 = the last iterate; averaging removes most of the
    last-step noise); ``val_timesteps``: noise levels per validation video;
    ``cache_results``: read/write the JSON result cache (does not change scores);
    ``keep_weights``: return the evaluated temporal weights with every result (does not change
    scores; see :mod:`evaluators._kept`)."""

    batch: int = 4
    default_budget: int = 30
    lr: float = 3e-3
    warmup: int = 5
    ema: float = 0.9
    val_timesteps: int = 2
    cache_results: bool = True
    keep_weights: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.default_budget < 1:
            raise ConfigError(f"default_budget: must be >= 1, got {self.default_budget}")
        if self.lr <= 0:
            raise ConfigError(f"lr: must be > 0, got {self.lr}")
        if self.warmup < 0:
            raise ConfigError(f"warmup: must be >= 0, got {self.warmup}")
        if self.val_timesteps < 1:
            raise ConfigError(f"val_timesteps: must be >= 1, got {self.val_timesteps}")
        if not 0 <= self.ema < 1:
            raise ConfigError(f"ema: must be in [0, 1), got {self.ema}")


class ShortTrainEvaluator(TorchEvaluator):
    """Train only the temporal layers of the scaled candidate; score the held-out loss gain."""

    name = "short_train"
    Options = ShortTrainOptions
    uses_budget = True

    def __init__(self, backbone, options=None, where=None) -> None:
        super().__init__(backbone, options, where)
        self._image_loss: dict[str, float] = {}

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d["options"].pop("cache_results", None)
        d["options"].pop("keep_weights", None)
        return d

    def setup(self, task: VideoTask, progress: bool | None = None) -> dict[str, Any]:
        return prepare_data(self.backbone, self.options, task.latent_channels, progress)

    # ---- cache ------------------------------------------------------------------------------
    def _cache_path(self, arch: ArchConfig, budget: int, seed: int) -> str:
        d = os.path.join(cache_root(self.options), "results", self.name, self.config_key)
        return os.path.join(d, f"{arch.arch_id}.b{budget}.s{seed}.json")

    def cached(self, arch: ArchConfig, budget: int, seed: int) -> EvalResult | None:
        """The cached result (a miss when weights are to be kept and were not)."""
        if not self.options.cache_results:
            return None
        path = self._cache_path(arch, budget, seed)
        weights = None
        try:
            with open(path, encoding="utf-8") as f:
                d = json.load(f)
            if self.options.keep_weights:
                with open(path[:-len(".json")] + ".safetensors", "rb") as f:
                    weights = f.read()
        except (OSError, json.JSONDecodeError):
            return None
        return EvalResult(float(d["value"]), {**d["extras"], "cache_hit": 1.0},
                          float(d["wall_time_s"]), weights=weights)

    def _store(self, arch: ArchConfig, budget: int, seed: int, r: EvalResult) -> None:
        if not self.options.cache_results:
            return
        path = self._cache_path(arch, budget, seed)
        if r.weights is not None:  # first: a JSON without its weights would be a hit
            atomic_write_bytes(path[:-len(".json")] + ".safetensors", r.weights, durable=False)
        record = {"arch_id": arch.arch_id, "arch": arch.to_dict(), "budget": budget,
                  "seed": seed, "evaluator": self.describe(), "value": r.value,
                  "extras": dict(r.extras), "wall_time_s": r.wall_time_s}
        atomic_write_json(path, json_safe(record), indent=1)

    # ---- evaluation ------------------------------------------------------------------------
    def evaluate(self, arch: ArchConfig, *, seed: int = 0, budget: int = 0) -> EvalResult:
        return self.evaluate_budgets(arch, seed=seed, budgets=[budget])[budget or self.options.default_budget]

    def evaluate_budgets(self, arch: ArchConfig, *, seed: int, budgets: Sequence[int]
                         ) -> dict[int, EvalResult]:
        """Scores at several budgets from ONE training run (see module docstring)."""
        self.check_arch(arch)
        want = sorted({int(b) or self.options.default_budget for b in budgets})
        if any(b < 0 for b in want):
            raise ConfigError(f"budget: must be >= 0, got {min(want)}")
        out: dict[int, EvalResult] = {}
        for b in want:
            hit = self.cached(arch, b, seed)
            if hit is not None:
                out[b] = hit
        missing = [b for b in want if b not in out]
        if missing:
            for b, r in self._train(arch, int(seed), missing).items():
                self._store(arch, b, seed, r)
                out[b] = r
        return out

    def image_only_loss(self, latent_channels: int, val_fraction: float = 1.0) -> float:
        """Held-out video denoising loss of the (pretrained) image model, frame by frame (on
        the ``val_fraction`` subset of the validation batches, see :func:`validation_subset`)."""
        key = f"{latent_channels}/{val_fraction:g}"
        if key not in self._image_loss:
            from search_space.modules import build_image_model
            bb = self.options.scale.backbone(self.backbone)
            _, val = data_splits(self.backbone, self.options, latent_channels)
            with self.options.session(0) as rt:
                s = self.options.scale
                from search_space.task import VideoTask
                task = VideoTask(latent_channels, s.num_frames, s.latent_height, s.latent_width,
                                 self.options.batch, s.text_tokens, bb.cross_attention_dim)
                model = build_image_model(bb, task)
                if self.options.spatial != "random":
                    state, _ = pretrained_spatial(self.backbone, self.options, latent_channels)
                    model.load_spatial_state_dict(state)
                vb = rt.batches(validation_subset(validation_batches(
                    val, self.options.batch, self.options.val_timesteps), val_fraction))
                self._image_loss[key] = mean_loss(rt.module(model), vb, rt)
        return self._image_loss[key]

    def trained_model(self, arch: ArchConfig, *, seed: int, budget: int) -> torch.nn.Module:
        """The scaled candidate after ``budget`` training steps (not cached; for inspection)."""
        self.check_arch(arch)
        return self._run(arch, int(seed), [int(budget) or self.options.default_budget])[1]

    def evaluate_resumable(self, arch: ArchConfig, *, seed: int, budget: int,
                           checkpoint: bytes | None = None, val_fraction: float = 1.0
                           ) -> tuple[EvalResult, bytes]:
        """Score at ``budget`` by training on from ``checkpoint`` (the bytes an earlier call
        returned for the same arch and seed at a lower budget; None = from the start); returns
        the result and the checkpoint at ``budget`` (a safetensors blob, see
        :mod:`evaluators._train_state`). Training on from a checkpoint gives the result of
        training straight to ``budget`` (same weights, optimizer, data and noise draws); the
        result's extras then say ``start_step`` (the checkpoint's step).

        ``val_fraction < 1``: score on that fraction of the validation batches (evenly spaced
        over videos and noise levels; the image-only loss on the same subset): a cheaper,
        noisier estimate for a lower rung's prune/continue decision. It is not this
        evaluator's score at ``budget`` and is not written to the result cache."""
        if not 0 < val_fraction <= 1:
            raise ConfigError(f"val_fraction: must be in (0, 1], got {val_fraction}")
        self.check_arch(arch)
        b = int(budget) or self.options.default_budget
        start = None
        if checkpoint is not None:
            start = TrainState.from_bytes(checkpoint)
            want = {"arch_id": arch.arch_id, "seed": str(int(seed)), "config_key": self.config_key}
            for k, v in want.items():
                if start.meta.get(k) != v:
                    raise ConfigError(f"checkpoint: {k} {start.meta.get(k)!r} does not match "
                                      f"this evaluation ({v!r})")
            if start.step > b:
                raise ConfigError(f"checkpoint: at step {start.step}, beyond budget {b}")
        results, _, state = self._run(arch, int(seed), [b], start=start, val_fraction=val_fraction)
        if val_fraction >= 1:
            self._store(arch, b, int(seed), results[b])
        return results[b], state.to_bytes()

    def _train(self, arch: ArchConfig, seed: int, budgets: list[int]) -> dict[int, EvalResult]:
        return self._run(arch, seed, budgets)[0]

    def _run(self, arch: ArchConfig, seed: int, budgets: list[int], start: TrainState | None = None,
             val_fraction: float = 1.0) -> tuple[dict[int, EvalResult], torch.nn.Module, TrainState]:
        """Train to each of ``budgets`` (ascending) from ``start`` (or the beginning); the
        results, the model and the training state at the last budget."""
        from search_space.modules import build_model, is_temporal_name

        o = self.options
        C = arch.task.latent_channels
        t0 = time.perf_counter()
        c0 = time.process_time()
        base = self.image_only_loss(C, val_fraction)
        train, val = data_splits(self.backbone, o, C)
        vbatches = validation_subset(validation_batches(val, o.batch, o.val_timesteps), val_fraction)
        bb, sarch = scaled_arch(self.backbone, o, arch)
        state = pretrained_spatial(self.backbone, o, C)[0] if o.spatial != "random" else None
        t_setup = time.perf_counter() - t0
        out: dict[int, EvalResult] = {}
        meta = {"arch_id": arch.arch_id, "seed": str(seed), "config_key": self.config_key}
        with o.session(seed) as rt:
            model = build_model(bb, sarch.task, sarch)
            if state is not None:
                model.load_spatial_state_dict(state)
            model.freeze_spatial()
            rt.module(model)
            vbatches = rt.batches(vbatches)
            kept = _Keeper(self, arch, seed, model, bb, sarch) if o.keep_weights else None
            names = [n for n, _ in model.named_parameters() if is_temporal_name(n)]
            params = list(model.temporal_parameters())
            n_temporal = sum(p.numel() for p in params)
            gen = torch.Generator().manual_seed(seed)
            if not params:  # the image model itself: nothing to train
                for b in budgets:
                    out[b] = EvalResult(0.0, {"val_loss": base, "val_loss_image": base,
                                              "rel_improvement": 0.0, "temporal_params": 0.0,
                                              "budget": float(b)}, time.perf_counter() - t0,
                                        weights=kept and kept.pack({}, b, base))
                return out, model, TrainState(max(budgets), {}, {}, {}, gen.get_state(), None, meta)
            run = _Run(model, names, params, gen, o, rt, start)
            resumed = {"start_step": float(start.step)} if start is not None else {}
            if val_fraction < 1:
                resumed["val_fraction"] = float(val_fraction)
            for b in budgets:
                run.train_to(b, train)
                vl = self._eval_averaged(model, params, run.avg, vbatches, rt)
                out[b] = EvalResult(base - vl, {
                    "val_loss": vl, "val_loss_image": base, "rel_improvement": (base - vl) / base,
                    "train_loss_ema": float(run.loss_ema) if run.loss_ema is not None else float("nan"),
                    "temporal_params": float(n_temporal), "budget": float(b),
                    "setup_s": t_setup, "cpu_s": time.process_time() - c0, **resumed},
                    time.perf_counter() - t0,
                    weights=kept and kept.pack(dict(zip(names, run.avg)), b, vl))
            return out, model, run.state(meta)

    @staticmethod
    def _eval_averaged(model, params, avg, vbatches, rt) -> float:
        """Validation loss with the averaged temporal weights swapped in (then swapped back)."""
        with torch.no_grad():
            live = [p.detach().clone() for p in params]
            for p, a in zip(params, avg):
                p.copy_(a)
        try:
            return mean_loss(model, vbatches, rt)
        finally:
            with torch.no_grad():
                for p, v in zip(params, live):
                    p.copy_(v)

    def _score(self, arch, seed, budget):  # pragma: no cover - evaluate() is overridden
        r = self.evaluate(arch, seed=seed, budget=budget)
        return r.value, r.extras


class _Run:
    """One training run of the temporal parameters: AdamW with a linear warm-up to a constant
    learning rate, gradient clipping at 1, an exponential moving average of the weights (the
    scored ones) and of the training loss; resumable from a :class:`TrainState`."""

    def __init__(self, model: torch.nn.Module, names: list[str], params: list[torch.nn.Parameter],
                 gen: torch.Generator, o: ShortTrainOptions, rt, start: TrainState | None) -> None:
        self.model, self.names, self.params, self.gen, self.o = model, names, params, gen, o
        self.rt = rt
        self.opt = torch.optim.AdamW(params, lr=o.lr, weight_decay=0.0)
        self.scaler = rt.grad_scaler()  # fp16 only; its loss scale restarts on a resume
        self.avg = [p.detach().clone() for p in params]
        self.step = 0
        self.loss_ema: float | None = None
        if start is not None:
            start.restore(names, params, self.avg, self.opt, gen)
            self.step, self.loss_ema = start.step, start.loss_ema

    def train_to(self, budget: int, train) -> None:
        o, gen, params = self.o, self.gen, self.params
        warm = max(1, o.warmup)
        while self.step < budget:
            idx = torch.randint(0, len(train), (o.batch,), generator=gen)
            x0 = train.latents[idx]
            t = torch.randint(0, NUM_TRAIN_TIMESTEPS, (o.batch,), generator=gen)
            noise = torch.randn(x0.shape, generator=gen)  # drawn on the CPU: same on every device
            x0, text, t, noise = self.rt.tensors(x0, train.text[idx], t, noise)
            loss = denoise_loss(self.model, x0, text, t, noise, rt=self.rt)
            for g in self.opt.param_groups:  # = LambdaLR(min(1, (step + 1) / warm)), step by step
                g["lr"] = o.lr * min(1.0, (self.step + 1) / warm)
            self.rt.optimizer_step(loss, self.opt, params, self.scaler, max_norm=1.0)
            with torch.no_grad():
                for a, p in zip(self.avg, params):
                    a.mul_(o.ema).add_(p.detach(), alpha=1 - o.ema)
            lv = float(loss.detach())
            self.loss_ema = lv if self.loss_ema is None else 0.9 * self.loss_ema + 0.1 * lv
            self.step += 1

    def state(self, meta: dict[str, str]) -> TrainState:
        return TrainState.capture(self.step, self.names, self.params, self.avg, self.opt,
                                  self.gen, self.loss_ema, meta)


class _Keeper:
    """Packs the evaluated temporal weights of one training run (``keep_weights``)."""

    def __init__(self, ev: ShortTrainEvaluator, arch: ArchConfig, seed: int, model, bb, sarch):
        o = ev.options
        C = arch.task.latent_channels
        key = pretrain_key(ev.backbone, o, C) if o.spatial != "random" else f"random-s{seed}"
        # the backbone's own weights are known by their files' hash (no second pass over GBs)
        sha = (weights_key(o) if o.spatial == "backbone"
               else spatial_sha256(key, model.spatial_state_dict()))
        self.meta = {
            "arch_id": arch.arch_id, "seed": seed, "evaluator": ev.name,
            "config_key": ev.config_key, "options": json_safe(options_dict(o)),
            "backbone": ev.backbone.to_dict(), "eval_backbone": bb.to_dict(),
            "eval_arch": sarch.to_dict(), "spatial": key,
            "spatial_sha256": sha}

    def pack(self, tensors: dict[str, torch.Tensor], budget: int, val_loss: float) -> bytes:
        return pack(tensors, {**self.meta, "budget": budget, "val_loss": float(val_loss).hex()})


def validation_loss(model: torch.nn.Module, backbone, options=None, latent_channels: int = 4) -> float:
    """The held-out loss ``short_train`` with ``options`` reports as ``val_loss`` for a
    candidate of ``backbone``, computed for ``model`` (e.g. an exported one, reloaded): the same
    validation videos, timesteps and noise, the same threads, device (``model`` is moved there)
    and precision."""
    o = parse_options(ShortTrainOptions, options, "options")
    _, val = data_splits(backbone, o, latent_channels)
    with o.session(0) as rt:
        vb = rt.batches(validation_batches(val, o.batch, o.val_timesteps))
        return mean_loss(rt.module(model), vb, rt)
