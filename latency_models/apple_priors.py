"""The shipped Apple device *priors* (``python -m latency_models.apple_priors`` rebuilds them).

Since issue 13 they come from the Neural Engine cost model fitted across network families on
published Core ML latencies (:mod:`latency_models.ane`, ``temponas latency build-priors``);
this module keeps the command and the SD-2.1-base workload the priors are checked on.
"""

from __future__ import annotations

from search_space.arch import ArchConfig
from search_space.presets import default_task, get_backbone


def sd21_image_arch() -> ArchConfig:
    """SD-2.1-base UNet as one image call: batch 2 (CFG), 64x64 latent, T = 1, no temporal layers."""
    bb = get_backbone("sd21")
    task = default_task("sd21").replace(num_frames=1, batch=2, latent_height=64, latent_width=64)
    return ArchConfig.create(bb.name, task, {}, bb.stage_ids)


def main(argv: list[str] | None = None) -> int:
    from latency_models.ane.priors import main as build

    return build(argv)


if __name__ == "__main__":
    raise SystemExit(main())
