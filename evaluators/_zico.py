"""``zico`` (Li et al., ICLR 2023): zero-shot proxy from gradient coefficients of variation.

Over ``num_batches`` (>= 2) fixed batches, collect the gradient of the denoising loss w.r.t.
every temporal parameter tensor; per tensor ``l``: ``log( sum_theta mean_b|g| / std_b(g) )``
over entries with non-zero std; score = sum over tensors. High mean / low variance gradients
mean a layer trains fast and stably (the paper's argument).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from evaluators._torch_setup import denoise_loss
from evaluators._zero_cost import ZeroCostEvaluator, ZeroCostOptions, temporal_named_parameters
from search_space.errors import ConfigError


@dataclass(frozen=True)
class ZicoOptions(ZeroCostOptions):
    num_batches: int = 3

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.num_batches < 2:
            raise ConfigError(f"num_batches: zico needs >= 2, got {self.num_batches}")


class ZicoEvaluator(ZeroCostEvaluator):
    """Sum over temporal tensors of log(sum mean|g| / std(g)) across batches (see module docstring)."""

    name = "zico"
    Options = ZicoOptions

    def _proxy(self, model, batches, rt) -> tuple[float, Mapping[str, float]]:
        params = temporal_named_parameters(model)
        if not params:
            return 0.0, {"tensors": 0.0}
        grads: dict[str, list[torch.Tensor]] = {n: [] for n, _ in params}
        for x0, text, t, noise in batches:
            model.zero_grad(set_to_none=True)
            rt.backward(denoise_loss(model, x0, text, t, noise, rt=rt))
            for n, p in params:
                grads[n].append(rt.grad(p).detach().clone())
        score, used = 0.0, 0
        for gs in grads.values():
            g = torch.stack(gs).double()
            std = g.std(dim=0)
            mask = std > 0
            if not bool(mask.any()):
                continue
            s = float((g.abs().mean(dim=0)[mask] / std[mask]).sum())
            if s > 0:
                score += math.log(s)
                used += 1
        return score, {"tensors": float(used)}
