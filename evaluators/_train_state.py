"""A resumable short-training state: everything that makes training on after a checkpoint
identical to training straight through.

``TrainState`` holds the step, the temporal weights (live and their exponential moving
average, by parameter name), AdamW's per-parameter state (``step``, ``exp_avg``,
``exp_avg_sq``), the data/noise generator's state and the training-loss EMA. It travels as
ONE safetensors blob (bytes: a Ray task can return it from any node and the driver stores it
in the run folder); the scalars and the identity of the run (arch, seed, evaluator config key)
are in the blob's string metadata (its JSON header, readable without torch).

Tensor names: ``live.<param>``, ``avg.<param>``, ``opt.<param>.<state>``, ``rng.generator``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from search_space.errors import ConfigError

#: format of the blob; bump when the layout changes (an old checkpoint is then refused)
STATE_FORMAT = "temponas-train-state-1"


@dataclass
class TrainState:
    """The state of one (arch, seed) training run after ``step`` steps."""

    step: int
    live: dict[str, torch.Tensor]
    avg: dict[str, torch.Tensor]
    opt: dict[str, dict[str, torch.Tensor]]
    generator: torch.Tensor
    loss_ema: float | None
    meta: dict[str, str]

    # ---- capture / restore ----------------------------------------------------------------
    @classmethod
    def capture(cls, step: int, names: Sequence[str], params: Sequence[torch.nn.Parameter],
                avg: Sequence[torch.Tensor], opt: torch.optim.Optimizer, gen: torch.Generator,
                loss_ema: float | None, meta: dict[str, str]) -> TrainState:
        """Copy the state of a run (tensors are cloned: training may go on afterwards)."""
        ostate = {}
        for n, p in zip(names, params):
            st = opt.state.get(p) or {}
            ostate[n] = {k: (v.detach().clone() if torch.is_tensor(v) else torch.tensor(float(v)))
                         for k, v in st.items()}
        return cls(int(step), {n: p.detach().clone() for n, p in zip(names, params)},
                   {n: a.detach().clone() for n, a in zip(names, avg)}, ostate,
                   gen.get_state().clone(), loss_ema, dict(meta))

    def restore(self, names: Sequence[str], params: Sequence[torch.nn.Parameter],
                avg: Sequence[torch.Tensor], opt: torch.optim.Optimizer,
                gen: torch.Generator) -> None:
        """Load this state into a freshly built run (same arch, so the same parameter names
        and shapes; anything else is a ``ConfigError``)."""
        if sorted(names) != sorted(self.live):
            raise ConfigError(f"checkpoint: its temporal parameters do not match this "
                              f"architecture ({len(self.live)} stored, {len(names)} built)")
        with torch.no_grad():
            for n, p, a in zip(names, params, avg):
                if p.shape != self.live[n].shape:
                    raise ConfigError(f"checkpoint: {n} has shape {tuple(self.live[n].shape)}, "
                                      f"the built model {tuple(p.shape)}")
                p.copy_(self.live[n])
                a.copy_(self.avg[n])
        for n, p in zip(names, params):
            if self.opt.get(n):
                opt.state[p] = {k: v.clone() for k, v in self.opt[n].items()}
        gen.set_state(self.generator.clone())

    # ---- bytes ------------------------------------------------------------------------------
    def to_bytes(self) -> bytes:
        from safetensors.torch import save

        tensors = {f"live.{n}": t.contiguous() for n, t in self.live.items()}
        tensors.update({f"avg.{n}": t.contiguous() for n, t in self.avg.items()})
        for n, st in self.opt.items():
            tensors.update({f"opt.{n}.{k}": v.contiguous() for k, v in st.items()})
        tensors["rng.generator"] = self.generator.contiguous()
        meta = {**self.meta, "format": STATE_FORMAT, "step": str(self.step),
                "loss_ema": json.dumps(self.loss_ema)}
        return save(tensors, metadata=meta)

    @classmethod
    def from_bytes(cls, blob: bytes) -> TrainState:
        from safetensors import SafetensorError
        from safetensors.torch import load

        try:
            tensors = load(blob)
            meta = _metadata(blob)
        except (SafetensorError, ValueError) as e:
            raise ConfigError(f"checkpoint: not a readable safetensors blob ({e})") from None
        if meta.get("format") != STATE_FORMAT:
            raise ConfigError(f"checkpoint: format {meta.get('format')!r}, expected {STATE_FORMAT}")
        live, avg, opt, gen = {}, {}, {}, None
        for name, t in tensors.items():
            part, _, rest = name.partition(".")
            if part == "live":
                live[rest] = t
            elif part == "avg":
                avg[rest] = t
            elif part == "opt":
                pname, _, key = rest.rpartition(".")
                opt.setdefault(pname, {})[key] = t
            elif name == "rng.generator":
                gen = t
        if gen is None or set(avg) != set(live):
            raise ConfigError("checkpoint: incomplete training state (generator or averages missing)")
        ema = json.loads(meta.get("loss_ema", "null"))
        return cls(int(meta["step"]), live, avg, opt, gen,
                   None if ema is None or not math.isfinite(ema) else float(ema), meta)


def _metadata(blob: bytes) -> dict[str, str]:
    """The string metadata of a safetensors blob (its JSON header's ``__metadata__``)."""
    n = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8:8 + n])
    return dict(header.get("__metadata__") or {})
