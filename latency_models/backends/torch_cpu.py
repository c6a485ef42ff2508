"""``torch-cpu`` backend: real timings of blocks and whole networks on this machine.

Protocol per probe: build the module (``search_space.modules.build_block``) in eval mode under
``torch.inference_mode``, warm up (at least ``warmup`` calls and ``warmup_s`` seconds), then time
calls one by one with ``perf_counter_ns`` until the median is stable (the bootstrap-free
estimate ``1.58 * IQR / sqrt(n)`` of the median's standard error falls below ``rel_precision``
of the median, after ``min_runs``), or ``max_runs`` / the per-probe ``time_limit_s`` is reached.
Threads are pinned with ``torch.set_num_threads``. Repeats are interleaved (repeat r measures
every probe once, in a shuffled order) so that load drifts of a shared machine show up as
repeat-to-repeat spread (the noise floor) instead of biasing some probes.
"""

from __future__ import annotations

import datetime as _dt
import math
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from latency_models.measurements import BlockRow, DeviceInfo, NetworkRow
from search_space.arch import ArchConfig
from search_space.backbone import BackboneSpec
from search_space.geometry import BlockSignature


@dataclass(frozen=True)
class TimingPolicy:
    warmup: int = 3
    warmup_s: float = 0.05
    min_runs: int = 7
    max_runs: int = 200
    rel_precision: float = 0.01
    time_limit_s: float = 5.0


REF_POLICY = TimingPolicy(warmup=1, warmup_s=0.0, min_runs=5, max_runs=5, time_limit_s=1.0)


def pick_reference(sigs) -> BlockSignature | None:
    """A mid-cost ResNet of the probe set (deterministic): the drift reference."""
    from latency_models.features import op_table

    res = sorted((s for s in sigs if s.op.value == "resnet"), key=lambda s: op_table(s).flops.sum())
    return res[len(res) // 2] if res else None


@dataclass(frozen=True)
class Timing:
    median_ms: float
    p10_ms: float
    p90_ms: float
    runs: int
    warmup: int


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_info(threads: int, clock: str = "wall") -> DeviceInfo:
    import torch

    suffix = "" if clock == "wall" else f":{clock}-clock"
    return DeviceInfo(device=f"torch-cpu:{cpu_name()}:t{threads}{suffix}", backend="torch-cpu",
                      compute_units="cpu", precision="fp32",
                      os=f"{platform.system()} {platform.release()}", chip=cpu_name(),
                      versions=f"torch={torch.__version__};numpy={np.__version__};"
                               f"python={platform.python_version()}",
                      threads=threads)


CLOCKS = ("wall", "cpu")


def clock_ns(clock: str, threads: int) -> Callable[[], int]:
    """``wall``: ``perf_counter_ns`` (what a user waits; distorted when other processes share
    the cores). ``cpu``: CPU time of the timing thread (``threads == 1``: torch runs the ops
    inline) or of the whole process (``threads > 1``: summed over torch's worker threads) --
    insensitive to time slices lost to other processes on a shared machine."""
    if clock == "wall":
        return time.perf_counter_ns
    if clock == "cpu":
        return time.thread_time_ns if threads == 1 else time.process_time_ns
    raise ValueError(f"unknown clock {clock!r} (choose {', '.join(CLOCKS)})")


def time_callable(fn: Callable[[], object], policy: TimingPolicy,
                  clock: Callable[[], int] = time.perf_counter_ns) -> Timing:
    """Warm up, then time ``fn`` with ``clock`` until its median is stable (module docstring)."""
    start = time.perf_counter()
    nw = 0
    while nw < policy.warmup or (time.perf_counter() - start < policy.warmup_s and nw < 50):
        fn()
        nw += 1
        if time.perf_counter() - start > policy.time_limit_s / 2:
            break
    times: list[float] = []
    t_begin = time.perf_counter()
    while True:
        t0 = clock()
        fn()
        times.append((clock() - t0) / 1e6)
        n = len(times)
        if n >= policy.max_runs or time.perf_counter() - t_begin > policy.time_limit_s:
            break
        if n >= policy.min_runs:
            a = np.asarray(times)
            q1, med, q3 = np.percentile(a, [25, 50, 75])
            if 1.58 * (q3 - q1) / math.sqrt(n) <= policy.rel_precision * med:
                break
    a = np.asarray(times)
    p10, med, p90 = np.percentile(a, [10, 50, 90])
    return Timing(float(med), float(p10), float(p90), len(times), nw)


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


class TorchCpuBackend:
    """Times blocks and networks with torch on the CPU, ``threads`` pinned."""

    def __init__(self, threads: int = 1, policy: TimingPolicy | None = None, clock: str = "wall",
                 reference: BlockSignature | None = None):
        """``reference``: a block timed (``REF_POLICY``) right before every probe; its latency
        goes into ``ref_ms`` so that fits can divide out the machine's momentary slowdown."""
        import torch

        self.reference = reference
        self.threads = int(threads)
        self.policy = policy or TimingPolicy()
        self.clock = clock_ns(clock, self.threads)
        torch.set_num_threads(self.threads)
        self.info = device_info(self.threads, clock)
        self._modules: dict[BlockSignature, tuple[object, tuple]] = {}

    def _block(self, sig: BlockSignature):
        ent = self._modules.get(sig)
        if ent is None:
            import torch

            from search_space.modules import build_block, example_inputs

            torch.manual_seed(0)
            m = build_block(sig).eval()
            ent = (m, example_inputs(sig))
            if len(self._modules) > 64:
                self._modules.clear()
            self._modules[sig] = ent
        return ent

    def time_reference(self) -> float:
        """Median latency of the reference block now (NaN without a reference)."""
        if self.reference is None:
            return math.nan
        import torch

        m, inputs = self._block(self.reference)
        with torch.inference_mode():
            return time_callable(lambda: m(*inputs), REF_POLICY, self.clock).median_ms

    def time_block(self, sig: BlockSignature, repeat: int = 0) -> BlockRow:
        import torch

        torch.set_num_threads(self.threads)
        ref = self.time_reference()
        m, inputs = self._block(sig)
        with torch.inference_mode():
            t = time_callable(lambda: m(*inputs), self.policy, self.clock)
        return BlockRow(sig, t.median_ms, t.p10_ms, t.p90_ms, t.runs, t.warmup, repeat, 0.0, _now(),
                        ref_ms=ref)

    def time_network(self, backbone: BackboneSpec, arch: ArchConfig, repeat: int = 0,
                     is_preset: bool = True) -> NetworkRow:
        import torch

        from search_space.modules import build_model

        torch.set_num_threads(self.threads)
        ref = self.time_reference()
        torch.manual_seed(0)
        task = arch.task
        model = build_model(backbone, task, arch).eval()
        g = torch.Generator().manual_seed(0)
        lat = torch.randn((task.batch, task.latent_channels, task.num_frames, task.latent_height,
                           task.latent_width), generator=g)
        ts = torch.rand((task.batch,), generator=g) * 1000
        text = torch.randn((task.batch, task.text_tokens, task.text_dim), generator=g)
        with torch.inference_mode():
            t = time_callable(lambda: model(lat, ts, text), self.policy, self.clock)
        return NetworkRow(arch, backbone, t.median_ms, t.p10_ms, t.p90_ms, t.runs, t.warmup, repeat,
                          0.0, _now(), is_preset, ref_ms=ref)

    def clear(self) -> None:
        self._modules.clear()


def interleaved_order(n: int, repeats: int, seed: int = 0) -> list[tuple[int, int]]:
    """``(repeat, index)`` pairs: every repeat visits all ``n`` items in its own shuffled order."""
    rng = np.random.default_rng(seed)
    return [(r, int(i)) for r in range(repeats) for i in rng.permutation(n)]


def measure(backend: TorchCpuBackend, sigs: Sequence[BlockSignature],
            archs: Sequence[tuple[BackboneSpec, ArchConfig]] = (), repeats: int = 1,
            seed: int = 0, progress: bool = True, desc: str = "measure",
            on_row: Callable[[BlockRow | NetworkRow], None] | None = None
            ) -> tuple[list[BlockRow], list[NetworkRow]]:
    """Time every block signature and network ``repeats`` times (interleaved), with a tqdm bar."""
    from tqdm import tqdm

    items: list[tuple[str, object]] = [("b", s) for s in sigs] + [("n", a) for a in archs]
    order = interleaved_order(len(items), repeats, seed)
    blocks: list[BlockRow] = []
    nets: list[NetworkRow] = []
    for r, i in tqdm(order, desc=desc, disable=not progress, unit="probe", dynamic_ncols=True):
        kind, obj = items[i]
        if kind == "b":
            row = backend.time_block(obj, r)  # type: ignore[arg-type]
            blocks.append(row)
        else:
            bb, arch = obj  # type: ignore[misc]
            row = backend.time_network(bb, arch, r)
            nets.append(row)
        if on_row is not None:
            on_row(row)
    return blocks, nets
