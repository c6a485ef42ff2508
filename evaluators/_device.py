"""Where and in which precision a torch evaluation runs: ONE place that resolves the device,
moves models and batches there, and wraps autocast and gradient scaling.

Every torch evaluator opens :func:`torch_session` with its ``device``/``precision`` options
and uses the :class:`Runtime` it yields::

    with torch_session(seed, opts.threads, opts.device, opts.precision) as rt:
        model = rt.module(build_model(...))          # built (and seeded) on the CPU, then moved
        x0, text, t, noise = rt.tensors(x0, text, t, noise)
        with rt.autocast():
            pred = model(x_t, t, text)

Randomness (initial weights, batch indices, noise) is drawn on the CPU from CPU generators and
then moved, so every device sees the same draws; scores on CPU and CUDA differ only by the
kernels' floating-point rounding (close, not bit-identical). ``device`` is therefore not part
of a config key; ``precision`` is.

Devices: ``auto`` (CUDA if this process can use a GPU, else CPU), ``cpu``, ``cuda`` or
``cuda:<index>``. Inside a Ray task only the GPUs Ray assigned to the task count: ``cuda`` is
the assigned GPU (Ray sets ``CUDA_VISIBLE_DEVICES``; with
``RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES`` the physical index Ray assigned is used), and
``auto`` is the CPU for a task that reserved no GPU (Ray does not hide the node's GPUs from it).
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from search_space.errors import ConfigError

PRECISIONS = ("fp32", "bf16", "fp16")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")

#: fixed loss scale of fp16 gradients that are read rather than stepped (zero-cost proxies);
#: training uses a dynamic ``torch.amp.GradScaler`` instead
PROXY_LOSS_SCALE = 1024.0


def check_device(value: str, where: str = "device") -> str:
    """``value`` if it is ``auto``, ``cpu``, ``cuda`` or ``cuda:<index>``, else ConfigError."""
    if not isinstance(value, str) or not _DEVICE.match(value):
        raise ConfigError(f"{where}: expected auto, cpu, cuda or cuda:<index>, got {value!r}")
    return value


def ray_task_gpu_ids() -> list[str] | None:
    """GPU ids Ray assigned to the running task; None outside a Ray task (or without Ray).

    Reads the Ray already loaded in this process (never imports it)."""
    ray = sys.modules.get("ray")
    if ray is None:
        return None
    try:
        if not ray.is_initialized() or ray.get_runtime_context().get_task_id() is None:
            return None
        return [str(i) for i in ray.get_gpu_ids()]
    except Exception:  # noqa: BLE001 - a half-initialized Ray: behave as outside Ray
        return None


def resolve_device(spec: str, where: str = "device") -> torch.device:
    """The ``torch.device`` of ``spec`` in this process (see module docstring).

    A CUDA device that cannot be used here raises ConfigError naming ``where``."""
    check_device(spec, where)
    if spec == "cpu":
        return torch.device("cpu")
    assigned = ray_task_gpu_ids()
    usable = torch.cuda.is_available() and assigned != []
    if spec == "auto":
        return _cuda(None, assigned, where) if usable else torch.device("cpu")
    if not torch.cuda.is_available():
        raise ConfigError(f"{where}: {spec!r} requested but this process sees no CUDA device "
                          f"(torch {torch.__version__}, torch.cuda.is_available() is False)")
    if assigned == []:
        raise ConfigError(f"{where}: {spec!r} requested but Ray assigned this evaluation no GPU "
                          f"(give evaluator.options.resources a num_gpus, or leave resources unset)")
    index = int(spec.split(":", 1)[1]) if ":" in spec else None
    return _cuda(index, assigned, where)


def _cuda(index: int | None, assigned: list[str] | None, where: str) -> torch.device:
    noset = os.environ.get("RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES", "") not in ("", "0")
    if index is None:
        # Ray narrowed CUDA_VISIBLE_DEVICES to the assigned GPUs (the first is cuda:0), unless
        # told not to: then the physical id it assigned is the index
        index = int(assigned[0]) if assigned and noset else torch.cuda.current_device()
    n = torch.cuda.device_count()
    if index >= n:
        raise ConfigError(f"{where}: cuda:{index} requested but this process sees {n} CUDA "
                          f"device(s)" + (f" (Ray assigned GPU ids {assigned})" if assigned else ""))
    return torch.device("cuda", index)


@dataclass(frozen=True)
class Runtime:
    """Device and precision of one evaluation (made by :func:`torch_session`).

    ``precision``: ``fp32``, or ``bf16``/``fp16`` autocast (weights stay fp32; matmuls and
    convolutions run in the lower precision; losses are computed in fp32). fp16 training
    scales its loss dynamically (:meth:`grad_scaler`); fp16 gradients that are read directly
    (:meth:`backward` / :meth:`grad`) use the fixed ``PROXY_LOSS_SCALE``.
    """

    device: torch.device = torch.device("cpu")
    precision: str = "fp32"

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        """``torch.bfloat16``/``torch.float16`` under autocast; None for fp32."""
        return _DTYPES.get(self.precision)

    def autocast(self) -> contextlib.AbstractContextManager:
        """Autocast to :attr:`autocast_dtype` on this device (a no-op for fp32)."""
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def module(self, m: torch.nn.Module) -> torch.nn.Module:
        """``m`` moved to the device (in place; parameters keep their identity)."""
        return m.to(self.device)

    def tensors(self, *ts: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``ts`` on the device (CPU tensors go to a GPU through pinned memory, asynchronously;
        tensors already there are returned as they are)."""
        return tuple(self._to(t) for t in ts)

    def _to(self, t: torch.Tensor) -> torch.Tensor:
        if t.device == self.device:
            return t
        if t.device.type == "cpu" and self.device.type == "cuda":
            return t.pin_memory().to(self.device, non_blocking=True)
        return t.to(self.device)

    def batches(self, batches: Sequence[Sequence[torch.Tensor]]) -> list[tuple[torch.Tensor, ...]]:
        """Every tensor of every batch on the device."""
        return [self.tensors(*b) for b in batches]

    def tensor_dict(self, d: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A state dict (e.g. for ``torch.func.functional_call``) on the device."""
        return dict(zip(d, self.tensors(*d.values())))

    def grad_scaler(self) -> torch.amp.GradScaler:
        """A dynamic loss scaler for training: active for fp16, a pass-through otherwise."""
        return torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")

    def optimizer_step(self, loss: torch.Tensor, opt: torch.optim.Optimizer,
                       params: Sequence[torch.nn.Parameter], scaler: torch.amp.GradScaler,
                       max_norm: float = 1.0) -> None:
        """Zero grads, backward (scaled for fp16), then :meth:`step`."""
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        self.step(opt, params, scaler, max_norm)

    @staticmethod
    def step(opt: torch.optim.Optimizer, params: Sequence[torch.nn.Parameter],
             scaler: torch.amp.GradScaler, max_norm: float = 1.0) -> None:
        """Unscale, clip to ``max_norm``, step (skipped by the scaler on inf/NaN), update.
        With gradients accumulated as ``scaler.scale(loss_i).backward()``."""
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(params, max_norm)
        scaler.step(opt)
        scaler.update()

    @property
    def loss_scale(self) -> float:
        return PROXY_LOSS_SCALE if self.precision == "fp16" else 1.0

    def backward(self, loss: torch.Tensor) -> None:
        """``loss.backward()``, scaled by :attr:`loss_scale` (read the gradients with
        :meth:`grad`)."""
        (loss * self.loss_scale if self.loss_scale != 1.0 else loss).backward()

    def grad(self, p: torch.nn.Parameter) -> torch.Tensor:
        """The unscaled gradient of ``p`` after :meth:`backward` (zeros if it got none)."""
        if p.grad is None:
            return torch.zeros_like(p)
        return p.grad / self.loss_scale if self.loss_scale != 1.0 else p.grad


@contextlib.contextmanager
def torch_session(seed: int, threads: int, device: str = "cpu", precision: str = "fp32"
                  ) -> Iterator[Runtime]:
    """Seeded, deterministic, ``threads``-thread torch on ``device`` for one evaluation.

    Yields the :class:`Runtime`; global torch settings are restored afterwards. On CUDA it
    selects the device, asks cuBLAS for deterministic kernels and keeps fp32 math in full
    precision (no TF32) when ``precision`` is fp32.
    """
    if precision not in PRECISIONS:
        raise ConfigError(f"precision: expected one of {', '.join(PRECISIONS)}, got {precision!r}")
    dev = resolve_device(device)
    old_threads = torch.get_num_threads()
    old_det = torch.are_deterministic_algorithms_enabled()
    restore: list[Any] = []
    if dev.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS
        torch.cuda.set_device(dev)
        if precision == "fp32":
            restore = _no_tf32()
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.manual_seed(seed)  # CPU and every CUDA device
    try:
        yield Runtime(dev, precision)
    finally:
        torch.set_num_threads(old_threads)
        torch.use_deterministic_algorithms(old_det)
        for obj, attr, value in restore:
            setattr(obj, attr, value)


def _no_tf32() -> list[tuple[Any, str, Any]]:
    """Turn TF32 off for CUDA matmuls and convolutions; returns what to restore."""
    b = torch.backends
    if hasattr(b.cuda.matmul, "fp32_precision"):  # torch >= 2.9
        targets = [(b.cuda.matmul, "fp32_precision", "ieee"),
                   (b.cudnn.conv, "fp32_precision", "ieee")]
    else:
        targets = [(b.cuda.matmul, "allow_tf32", False), (b.cudnn, "allow_tf32", False)]
    restore = []
    try:
        for obj, attr, value in targets:
            restore.append((obj, attr, getattr(obj, attr)))
            setattr(obj, attr, value)
    except RuntimeError:  # torch refuses to mix the legacy and new TF32 APIs: leave it as set
        for obj, attr, value in reversed(restore):
            setattr(obj, attr, value)
        return []
    return restore
