"""``meco`` (Jiang et al., NeurIPS 2023): minimum eigenvalue of feature correlation.

For every block output of the network in frame layout (``stages.<sid>.{resnets,
transformers,temporal}.<i>`` and the resamplers), take the features of the first video of the
fixed batch, ``(C, T*H*W)``, compute the ``C x C`` Pearson correlation matrix across channels
and its smallest eigenvalue; score = sum over blocks (MeCo uses one sample). Forward only.
Low minimum eigenvalues mean redundant (linearly dependent) channels.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from evaluators._torch_setup import noisy
from evaluators._zero_cost import ZeroCostEvaluator


class MecoEvaluator(ZeroCostEvaluator):
    """Sum over block outputs of the smallest eigenvalue of the channel correlation."""

    name = "meco"

    @torch.no_grad()
    def _proxy(self, model, batches, rt) -> tuple[float, Mapping[str, float]]:
        x0, text, t, noise = batches[0]
        b, frames = x0.shape[0], x0.shape[2]
        feats: list[torch.Tensor] = []

        def hook(_m, _inp, out):
            if isinstance(out, torch.Tensor) and out.dim() == 4 and out.shape[0] == b * frames:
                f = out[:frames].permute(1, 0, 2, 3).reshape(out.shape[1], -1)  # video 0: (C, T*H*W)
                feats.append(f.double())

        handles = []
        for name, m in model.named_modules():
            parts = name.split(".")
            if (len(parts) == 4 and parts[0] == "stages" and parts[2] in ("resnets", "transformers", "temporal")) or (
                    len(parts) == 3 and parts[0] == "stages" and parts[2] == "resample"):
                handles.append(m.register_forward_hook(hook))
        try:
            with rt.autocast():
                model(noisy(x0, noise, t), t, text)
        finally:
            for h in handles:
                h.remove()
        score, used = 0.0, 0
        for f in feats:
            f = f - f.mean(dim=1, keepdim=True)
            sd = f.norm(dim=1)
            keep = sd > 1e-12
            if int(keep.sum()) < 2:
                continue
            f = f[keep] / sd[keep, None]
            corr = f @ f.T
            score += float(torch.linalg.eigvalsh(corr)[0])
            used += 1
        return score, {"layers": float(used)}
