"""``naswot`` (Mellor et al. 2021): how differently the network partitions its inputs.

Each frame of the fixed batch gets a binary code: the signs of every normalization output of
the network (GroupNorm outputs in the frame layout ``(B*T, C, H, W)``, i.e. which side of
zero each unit's pre-activation falls; the nets use SiLU/GELU, for which that is the
activation pattern). With ``K[i, j] = #units where codes i and j agree``, the score is
``log |det K|`` (higher = inputs are told apart better). Temporal blocks change the codes of
every later layer, so candidates differ; the image model is a valid candidate too.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from evaluators._torch_setup import noisy
from evaluators._zero_cost import ZeroCostEvaluator


class NaswotEvaluator(ZeroCostEvaluator):
    """log|det K| of the frames' activation-pattern kernel (see module docstring)."""

    name = "naswot"

    @torch.no_grad()
    def _proxy(self, model, batches, rt) -> tuple[float, Mapping[str, float]]:
        x0, text, t, noise = batches[0]
        frames = x0.shape[0] * x0.shape[2]
        codes: list[torch.Tensor] = []

        def hook(_m, _inp, out):
            if out.dim() == 4 and out.shape[0] == frames:
                codes.append((out.reshape(frames, -1) > 0).to(torch.float64))

        handles = [m.register_forward_hook(hook) for m in model.modules()
                   if isinstance(m, nn.GroupNorm)]
        try:
            with rt.autocast():
                model(noisy(x0, noise, t), t, text)
        finally:
            for h in handles:
                h.remove()
        c = torch.cat(codes, dim=1)
        k = c @ c.T + (1 - c) @ (1 - c).T
        sign, logdet = torch.linalg.slogdet(k)
        value = float(logdet) if float(sign) > 0 else float("-inf")
        return value, {"units": float(c.shape[1]), "frames": float(frames)}
