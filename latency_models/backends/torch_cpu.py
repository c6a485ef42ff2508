"""``torch-cpu`` backend: real timings of blocks and whole networks on this machine.

Protocol per probe: build the module (``search_space.modules.build_block``) in eval mode under
``torch.inference_mode``, warm up (at least ``warmup`` calls and ``warmup_s`` seconds), then time
calls one by one until the median is stable (the bootstrap-free estimate ``1.58 * IQR / sqrt(n)``
of the median's standard error falls below ``rel_precision`` of the median, after ``min_runs``),
or ``max_runs`` / the per-probe ``time_limit_s`` is reached. Threads are pinned with
``torch.set_num_threads``. Repeats are interleaved (repeat r measures every probe once, in a
shuffled order) so that a slow spell of the machine shows up as repeat-to-repeat spread (the
noise floor) instead of biasing some probes.

Two things make timings on a shared virtual machine reproducible (``benchmarks/results/
latency_accuracy.json`` has the numbers):

* **Steady-state allocator** (:func:`steady_allocator`). glibc serves buffers above a *dynamic*
  threshold with fresh ``mmap`` pages, so whether a block's intermediates page-fault on every
  call depends on what ran before it (one temporal attention block measured 8-19 ms by that
  alone). The backend turns ``mmap`` off and never trims the heap: every call reuses warm memory,
  as an inference runtime with pre-planned buffers does.
* **Paired reference** (``paired=True``). The machine's speed wanders by +-10-40 % over tens to
  hundreds of milliseconds (other tenants of the host). Every timed call is followed by a fixed
  reference op (a 256x256 matmul, :class:`ReferenceOp`); the row's ``ref_ms`` is the reference
  latency those pairs imply, ``latency_ms / median(call / mean of the two neighbouring reference
  calls)``, so that fits can use ``latency_ms * median(ref_ms) / ref_ms``: the median ratio at
  the file's typical speed. ``latency_ms`` stays the raw median.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import datetime as _dt
import math
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

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


_STEADY: bool | None = None


def steady_allocator() -> bool:
    """Serve every allocation from the (never trimmed) heap: glibc ``mallopt(M_MMAP_MAX, 0)`` and
    ``mallopt(M_TRIM_THRESHOLD, 2**62)``. Process-wide, idempotent; False where there is no glibc
    (the timings then include whatever page faults the allocator causes)."""
    global _STEADY
    if _STEADY is None:
        _STEADY = False
        name = ctypes.util.find_library("c")
        if platform.system() == "Linux" and name:
            try:
                libc = ctypes.CDLL(name)
                m_trim_threshold, m_mmap_max = -1, -4
                _STEADY = bool(libc.mallopt(m_mmap_max, 0)) and bool(
                    libc.mallopt(m_trim_threshold, ctypes.c_int(2**31 - 1)))
            except (OSError, AttributeError):
                _STEADY = False
    return _STEADY


class ReferenceOp:
    """The paired reference: ``out = a @ b`` with 256x256 fp32 operands (about 0.5 ms on one core
    of a 2.4 GHz EPYC), no allocation per call."""

    SIZE = 256

    def __init__(self):
        import torch

        g = torch.Generator().manual_seed(0)
        self.a = torch.randn(self.SIZE, self.SIZE, generator=g)
        self.b = torch.randn(self.SIZE, self.SIZE, generator=g)
        self.out = torch.empty(self.SIZE, self.SIZE)

    def __call__(self) -> None:
        import torch

        torch.mm(self.a, self.b, out=self.out)


@dataclass(frozen=True)
class Timing:
    median_ms: float
    p10_ms: float
    p90_ms: float
    runs: int
    warmup: int
    ref_ms: float = math.nan  # the paired reference's implied latency (NaN when unpaired)


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
                  clock: Callable[[], int] = time.perf_counter_ns,
                  reference: Callable[[], object] | None = None) -> Timing:
    """Warm up, then time ``fn`` with ``clock`` until its median is stable (module docstring).

    With ``reference``, every timed call is followed by a timed reference call; the stopping rule
    then watches the call/reference ratios and ``Timing.ref_ms`` is ``median_ms / median ratio``.
    """
    start = time.perf_counter()
    nw = 0
    while nw < policy.warmup or (time.perf_counter() - start < policy.warmup_s and nw < 50):
        fn()
        if reference is not None:
            reference()
        nw += 1
        if time.perf_counter() - start > policy.time_limit_s / 2:
            break
    times: list[float] = []
    ratios: list[float] = []
    ref_prev = 0.0
    if reference is not None:
        t0 = clock()
        reference()
        ref_prev = float(clock() - t0)
    t_begin = time.perf_counter()
    while True:
        t0 = clock()
        fn()
        t1 = clock()
        times.append((t1 - t0) / 1e6)
        if reference is not None:
            reference()
            ref_now = float(clock() - t1)
            ratios.append((t1 - t0) / max(0.5 * (ref_prev + ref_now), 1.0))
            ref_prev = ref_now
        n = len(times)
        if n >= policy.max_runs or time.perf_counter() - t_begin > policy.time_limit_s:
            break
        if n >= policy.min_runs:
            q1, med, q3 = np.percentile(ratios if reference is not None else times, [25, 50, 75])
            if 1.58 * (q3 - q1) / math.sqrt(n) <= policy.rel_precision * med:
                break
    a = np.asarray(times)
    p10, med, p90 = np.percentile(a, [10, 50, 90])
    ref_ms = float(med / np.median(ratios)) if ratios else math.nan
    return Timing(float(med), float(p10), float(p90), len(times), nw, ref_ms)


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


class TorchCpuBackend:
    """Times blocks and networks with torch on the CPU, ``threads`` pinned, the allocator in
    steady state; ``paired``: a reference op after every timed call (``ref_ms``, drift)."""

    def __init__(self, threads: int = 1, policy: TimingPolicy | None = None, clock: str = "wall",
                 paired: bool = True):
        import torch

        self.threads = int(threads)
        self.policy = policy or TimingPolicy()
        self.clock = clock_ns(clock, self.threads)
        torch.set_num_threads(self.threads)
        self.steady_allocator = steady_allocator()
        self.reference = ReferenceOp() if paired else None
        info = device_info(self.threads, clock)
        self.info = replace(info, versions=info.versions + (";malloc=steady" if self.steady_allocator
                                                            else ";malloc=default"))
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

    def _time(self, fn: Callable[[], object]) -> Timing:
        import torch

        torch.set_num_threads(self.threads)
        with torch.inference_mode():
            return time_callable(fn, self.policy, self.clock, self.reference)

    def time_block(self, sig: BlockSignature, repeat: int = 0) -> BlockRow:
        m, inputs = self._block(sig)
        t = self._time(lambda: m(*inputs))
        return BlockRow(sig, t.median_ms, t.p10_ms, t.p90_ms, t.runs, t.warmup, repeat, 0.0, _now(),
                        ref_ms=t.ref_ms)

    def time_network(self, backbone: BackboneSpec, arch: ArchConfig, repeat: int = 0,
                     is_preset: bool = True) -> NetworkRow:
        import torch

        from search_space.modules import build_model, network_example_inputs

        torch.manual_seed(0)
        model = build_model(backbone, arch.task, arch).eval()
        lat, ts, text = network_example_inputs(arch.task, seed=0)
        t = self._time(lambda: model(lat, ts, text))
        return NetworkRow(arch, backbone, t.median_ms, t.p10_ms, t.p90_ms, t.runs, t.warmup, repeat,
                          0.0, _now(), is_preset, ref_ms=t.ref_ms)


def interleaved_order(n: int, repeats: int, seed: int = 0,
                      counts: Sequence[int] | None = None) -> list[tuple[int, int]]:
    """``(repeat, index)`` pairs in ``repeats`` rounds, each round in its own shuffled order.
    Every item is visited once per round, or, with ``counts``, in ``counts[i]`` rounds drawn at
    random (its repeats numbered 0, 1, ... in time order)."""
    rng = np.random.default_rng(seed)
    if counts is None:
        return [(r, int(i)) for r in range(repeats) for i in rng.permutation(n)]
    rounds: list[list[int]] = [[] for _ in range(repeats)]
    for i, c in enumerate(counts):
        for r in rng.choice(repeats, size=min(int(c), repeats), replace=False):
            rounds[int(r)].append(i)
    seen = [0] * n
    out = []
    for members in rounds:
        for i in rng.permutation(np.asarray(members, dtype=int)):
            out.append((seen[int(i)], int(i)))
            seen[int(i)] += 1
    return out


def measure(backend: TorchCpuBackend, sigs: Sequence[BlockSignature],
            archs: Sequence[tuple[BackboneSpec, ArchConfig]] = (), repeats: int = 1,
            seed: int = 0, progress: bool = True, desc: str = "measure",
            on_row: Callable[[BlockRow | NetworkRow], None] | None = None,
            calibration: Sequence[BlockSignature] = (), calibration_repeats: int | None = None
            ) -> tuple[list[BlockRow], list[NetworkRow]]:
    """Time every block signature and network ``repeats`` times and every ``calibration`` block
    ``calibration_repeats`` times (default ``repeats``), all interleaved, with a tqdm bar."""
    from tqdm import tqdm

    items: list[tuple[str, object]] = ([("b", s) for s in sigs] + [("b", s) for s in calibration]
                                       + [("n", a) for a in archs])
    cal_r = repeats if calibration_repeats is None else max(1, min(calibration_repeats, repeats))
    counts = [repeats] * len(sigs) + [cal_r] * len(calibration) + [repeats] * len(archs)
    order = interleaved_order(len(items), repeats, seed, counts if cal_r != repeats else None)
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
