"""How well does the analytic activation-memory model (search_space.flops) track reality?

Measures the peak of LIVE activation bytes while eager PyTorch runs each block standalone and
whole networks (no_grad, eval, math SDPA so attention scores are materialized as in a Core ML
program without a fused kernel), with a dispatch-mode tracker that counts every tensor storage
an op creates and releases it when its last tensor dies. Parameters/buffers and the inputs
are not activations; inputs are added back since the model counts them. Measured fp32 bytes
are halved to compare with the fp16 model.

This is eager PyTorch, not the device: it checks the model's bookkeeping (which tensors are
alive together, skip tensors, score matrices), not Core ML's allocator.

    python benchmarks/memory_model.py [--quick] [--json]

Writes benchmarks/results/memory_model.json and a parity plot memory_model.png (with --json)
and prints a table.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import weakref
from collections import defaultdict

import torch
from bench_results import add_out_argument, results_dir
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode
from tqdm import tqdm

from common.fsio import atomic_path, atomic_write_text
from search_space.arch import ArchConfig, StageChoice, TemporalKind
from search_space.flops import MB, block_cost, network_cost
from search_space.geometry import network_blocks
from search_space.modules import build_block, build_model, example_inputs
from search_space.presets import default_task, get_backbone
from search_space.task import VideoTask

K = TemporalKind


class LiveBytes(TorchDispatchMode):
    """Peak bytes of storages created by ops and still referenced by a live tensor."""

    def __init__(self, external: list[torch.Tensor]) -> None:
        super().__init__()
        self.external = {t.untyped_storage().data_ptr() for t in external}
        self.refs: dict[int, int] = defaultdict(int)
        self.size: dict[int, int] = {}
        self.live = 0
        self.peak = 0

    def _release(self, key: int) -> None:
        self.refs[key] -= 1
        if self.refs[key] == 0:
            self.live -= self.size.pop(key)
            del self.refs[key]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in pytree.tree_leaves(out):
            if not isinstance(t, torch.Tensor):
                continue
            st = t.untyped_storage()
            key, nbytes = st.data_ptr(), st.nbytes()
            if key in self.external or nbytes == 0:
                continue
            if key not in self.size:
                self.size[key] = nbytes
                self.live += nbytes
                self.peak = max(self.peak, self.live)
            self.refs[key] += 1
            weakref.finalize(t, self._release, key)
        return out


def measure(module: torch.nn.Module, inputs: tuple[torch.Tensor, ...]) -> float:
    """Peak live activation MB (fp16-equivalent) of ``module(*inputs)``, inputs included."""
    external = [*module.parameters(), *module.buffers(), *inputs]
    in_bytes = sum(t.numel() * t.element_size() for t in inputs)
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH):
        tracker = LiveBytes(external)
        with tracker:
            out = module(*inputs)
        del out
    return (tracker.peak + in_bytes) / 2 / MB


def block_rows(task: VideoTask) -> list[dict]:
    bb = get_backbone("small")
    rows, seen = [], set()
    kinds = [StageChoice(k, 1, heads=4) if k.is_attention else StageChoice(k, 1, kernel_t=3, kernel_s=3)
             for k in TemporalKind if k is not K.NONE]
    for c in tqdm(kinds, desc="blocks", file=sys.stderr):
        arch = ArchConfig.create(bb.name, task, {"down1": c, "up2": c}, bb.stage_ids)
        for b in network_blocks(bb, task, arch):
            key = (b.sig.op_name, b.sig.height, b.sig.skip_channels > 0, b.sig.in_channels)
            if key in seen:
                continue
            seen.add(key)
            m = build_block(b).eval()
            got = measure(m, example_inputs(b))
            model = block_cost(b).activation_mb
            rows.append({"block": b.path, "op": b.sig.op_name, "model_mb": model,
                         "eager_mb": got, "ratio": model / got})
    return rows


def network_rows(task: VideoTask, quick: bool) -> list[dict]:
    bb = get_backbone("small")
    archs = {"image": {}, "conv1d": {"down1": StageChoice(K.CONV1D, 1, kernel_t=3)},
             "attn1d_all": {s: StageChoice(K.ATTN1D, bb.stage(s).units, heads=4) for s in bb.stage_ids},
             "attn3d_hi": {"down0": StageChoice(K.ATTN3D, 1, heads=4)}}
    if not quick:
        archs["xattn3d_all"] = {s: StageChoice(K.XATTN3D, 1, heads=4) for s in bb.stage_ids}
        archs["conv3d_all"] = {s: StageChoice(K.CONV3D, bb.stage(s).units, kernel_t=3, kernel_s=3)
                               for s in bb.stage_ids}
    rows = []
    for name, ch in tqdm(archs.items(), desc="networks", file=sys.stderr):
        arch = ArchConfig.create(bb.name, task, ch, bb.stage_ids)
        model = build_model(bb, task, arch).eval()
        g = torch.Generator().manual_seed(0)
        args = (torch.randn(task.batch, task.latent_channels, task.num_frames, task.latent_height,
                            task.latent_width, generator=g), torch.full((task.batch,), 500.0),
                torch.randn(task.batch, task.text_tokens, task.text_dim, generator=g))
        got = measure(model, args)
        cost = network_cost(bb, task, arch)
        rows.append({"arch": name, "arch_id": arch.arch_id, "model_mb": cost.peak_activation_mb,
                     "eager_mb": got, "ratio": cost.peak_activation_mb / got,
                     "model_peak_block": cost.peak_path})
    return rows


def plot(result: dict, path: str) -> None:
    """Parity plot: modelled vs eager-measured peak MB, blocks and networks (log-log)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 5))
    b, n = result["blocks"], result["networks"]
    ax.scatter([r["eager_mb"] for r in b], [r["model_mb"] for r in b], s=18, label="blocks")
    ax.scatter([r["eager_mb"] for r in n], [r["model_mb"] for r in n], s=40, marker="s",
               label="networks")
    vals = [r[k] for r in b + n for k in ("eager_mb", "model_mb") if r[k] > 0]
    lo, hi = min(vals) / 1.5, max(vals) * 1.5
    ax.plot([lo, hi], [lo, hi], "k--", lw=0.8, label="y = x")
    ax.set(xscale="log", yscale="log", xlim=(lo, hi), ylim=(lo, hi),
           xlabel="eager PyTorch live-tensor peak (MB, fp16-equivalent)",
           ylabel="search_space.flops model (MB)",
           title=f"Activation memory model, {result['backbone']} preset")
    ax.legend()
    fig.tight_layout()
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=120, format="png")
    finally:
        plt.close(fig)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer frames and networks")
    ap.add_argument("--json", action="store_true", help="write benchmarks/results/memory_model.json")
    add_out_argument(ap)
    args = ap.parse_args()
    torch.set_num_threads(2)
    t0 = time.time()
    task = default_task("small")
    if args.quick:
        task = task.replace(num_frames=4, latent_height=16, latent_width=16)
    blocks = block_rows(task)
    nets = network_rows(task, args.quick)
    print(f"{'block':<28} {'op':<22} {'model MB':>9} {'eager MB':>9} {'ratio':>6}")
    for r in blocks:
        print(f"{r['block']:<28} {r['op']:<22} {r['model_mb']:>9.2f} {r['eager_mb']:>9.2f} {r['ratio']:>6.2f}")
    print(f"\n{'network':<14} {'model MB':>9} {'eager MB':>9} {'ratio':>6}  model peak at")
    for r in nets:
        print(f"{r['arch']:<14} {r['model_mb']:>9.2f} {r['eager_mb']:>9.2f} {r['ratio']:>6.2f}  "
              f"{r['model_peak_block']}")
    ratios = sorted(r["ratio"] for r in blocks)
    summary = {"blocks": len(blocks), "block_ratio_min": ratios[0], "block_ratio_median":
               ratios[len(ratios) // 2], "block_ratio_max": ratios[-1],
               "network_ratio_min": min(r["ratio"] for r in nets),
               "network_ratio_max": max(r["ratio"] for r in nets)}
    print("\n" + ", ".join(f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}" for k, v in summary.items()))
    if args.json:
        out = {"benchmark": "memory_model", "quick": args.quick, "task": task.to_dict(),
               "backbone": "small", "torch": torch.__version__, "wall_time_s": time.time() - t0,
               "summary": summary, "blocks": blocks, "networks": nets}
        path = str(results_dir(args.quick, args.out) / "memory_model.json")  # quick: untracked
        atomic_write_text(path, json.dumps(out, indent=2))
        plot(out, path.replace(".json", ".png"))
        print(f"wrote {path} and {path.replace('.json', '.png')}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
