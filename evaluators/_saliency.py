"""Gradient-saliency proxies at initialization: ``grad_norm`` and ``snip``.

Both differentiate the denoising loss of one fixed batch w.r.t. the temporal parameters:
``grad_norm`` = sum over parameter tensors of ``||dL/dtheta||_2`` (Abdelfattah et al. 2021);
``snip`` = ``sum |theta * dL/dtheta|`` (connection sensitivity, Lee et al. 2019).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from evaluators._device import Runtime
from evaluators._torch_setup import denoise_loss
from evaluators._zero_cost import ZeroCostEvaluator, temporal_named_parameters


def _temporal_grads(model: nn.Module, batches: list, rt: Runtime
                    ) -> list[tuple[str, nn.Parameter, torch.Tensor]]:
    params = temporal_named_parameters(model)
    if not params:
        return []
    model.zero_grad(set_to_none=True)
    for x0, text, t, noise in batches:
        rt.backward(denoise_loss(model, x0, text, t, noise, rt=rt) / len(batches))
    return [(n, p, rt.grad(p)) for n, p in params]


class GradNormEvaluator(ZeroCostEvaluator):
    """Sum of per-tensor gradient norms of the temporal parameters."""

    name = "grad_norm"

    def _proxy(self, model, batches, rt) -> tuple[float, Mapping[str, float]]:
        g = _temporal_grads(model, batches, rt)
        return float(sum(float(gr.norm()) for _, _, gr in g)), {"tensors": float(len(g))}


class SnipEvaluator(ZeroCostEvaluator):
    """``sum |theta * grad|`` over the temporal parameters."""

    name = "snip"

    def _proxy(self, model, batches, rt) -> tuple[float, Mapping[str, float]]:
        g = _temporal_grads(model, batches, rt)
        return float(sum(float((p.detach() * gr).abs().sum()) for _, p, gr in g)), {}
