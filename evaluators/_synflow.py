"""``synflow`` (Tanaka et al. 2020): data-free synaptic flow.

On a float64 copy of the scaled candidate with every parameter replaced by its absolute value,
feed all-ones latents and text at a fixed timestep, take ``R = sum(output)`` and score
``sum |theta * dR/dtheta|`` over the temporal parameters. The reference implementation runs
BatchNorm nets in eval mode; a GroupNorm/LayerNorm of a constant input would output zeros,
and without any normalization the GEGLU products overflow float64 (measured: inf on every
snapgen_v candidate), so each normalization layer is replaced by a division by its input's
mean magnitude (detached: a fixed rescaling, like BatchNorm's running statistics).
``extras["log10"]`` is ``log10`` of the score. It runs on the evaluator's device in float64
whatever ``precision`` says: its products overflow every lower precision.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping

import torch
from torch import nn

from evaluators._zero_cost import ZeroCostEvaluator, temporal_named_parameters

SYNFLOW_TIMESTEP = 500


class _MeanScale(nn.Module):
    """``x / mean(|x|)`` with the divisor detached (a data-dependent constant)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x / x.detach().abs().mean().clamp_min(1e-30)


def _strip_norms(model: nn.Module) -> None:
    for m in list(model.modules()):
        for cname, child in list(m.named_children()):
            if isinstance(child, (nn.GroupNorm, nn.LayerNorm)):
                setattr(m, cname, _MeanScale())


class SynflowEvaluator(ZeroCostEvaluator):
    """Data-free synaptic flow through the temporal parameters (see module docstring)."""

    name = "synflow"

    def _proxy(self, model, batches, rt) -> tuple[float, Mapping[str, float]]:
        if not temporal_named_parameters(model):
            return 0.0, {"log10": float("-inf")}
        m = copy.deepcopy(model).double()
        _strip_norms(m)
        with torch.no_grad():
            for p in m.parameters():
                p.abs_()
        temporal = {n for n, _ in temporal_named_parameters(m)}
        for n, p in m.named_parameters():
            p.requires_grad_(n in temporal)
        x0, text, _, _ = batches[0]
        x = torch.ones_like(x0, dtype=torch.float64).requires_grad_(True)
        t = torch.full((x0.shape[0],), SYNFLOW_TIMESTEP, dtype=torch.long, device=x0.device)
        out = m(x, t, torch.ones_like(text, dtype=torch.float64))
        out.sum().backward()
        total = 0.0
        for _, p in temporal_named_parameters(m):
            if p.grad is not None:
                total += float((p.detach() * p.grad).abs().sum())
        if not math.isfinite(total):
            total = float("inf")
        return total, {"log10": math.log10(total) if 0 < total < float("inf") else float("nan")}
