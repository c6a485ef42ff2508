"""Resource bounds on everything temponas reads: ONE place for every limit (docs/limits.md).

Input that could exhaust the machine (a YAML "billion laughs", 20,000-deep nesting, a 10 GB
CSV, ``threads: 10**20``) is refused with one :class:`ConfigError` line naming the file and
key/row, before any work starts. Each bound is far above what a real search uses; change a
number here (and in docs/limits.md) if a real use needs more.
"""

from __future__ import annotations

import math
from typing import Any

from common.errors import ConfigError

# ---- files ----------------------------------------------------------------------------------
#: largest YAML file read (experiment configs, ``--options`` files, space files), bytes
MAX_YAML_BYTES = 1 << 20
#: largest JSON file or JSON text read (arch JSON, diffusers ``config.json`` and weight index,
#: latency model directories, JSON columns of a measurement CSV, clip manifests), bytes
MAX_JSON_BYTES = 16 << 20
#: largest measurement CSV, bytes
MAX_CSV_BYTES = 64 << 20
#: deepest nesting of a YAML or JSON document (mappings and lists; a config needs about 6)
MAX_NESTING = 64
#: most values (scalars, lists, mappings) a YAML document may hold after its aliases
#: (``*name``) are expanded: a 442-byte document of nine chained anchors expands to 9**9
MAX_YAML_VALUES = 100_000

# ---- the video task and the search space (search_space.task / search_space.space) -----------
#: VideoTask field -> (min, max)
TASK_RANGES: dict[str, tuple[int, int]] = {
    "latent_channels": (1, 64),
    "num_frames": (1, 1024),
    "latent_height": (1, 1024),
    "latent_width": (1, 1024),
    "batch": (1, 64),
    "text_tokens": (1, 4096),
    "text_dim": (1, 16384),
}
#: space dimension -> (min, max) of each listed value (heads must also divide the channels,
#: kernels must be odd, counts fit the stage's units)
SPACE_RANGES: dict[str, tuple[int, int]] = {
    "counts": (1, 64),
    "heads": (1, 1024),
    "kernel_t": (1, 31),
    "kernel_s": (1, 31),
}
#: block-signature field (a measurement CSV column) -> (min, max); 0 = not used by the block
SIGNATURE_RANGES: dict[str, tuple[int, int]] = {
    "in_channels": (0, 65536), "out_channels": (0, 65536), "skip_channels": (0, 65536),
    "batch": (1, 64), "frames": (1, 1024), "height": (1, 2048), "width": (1, 2048),
    "heads": (0, 1024), "depth": (0, 64), "kernel_t": (0, 31), "kernel_s": (0, 31),
    "context_tokens": (0, 4096), "context_dim": (0, 16384), "temb_dim": (0, 65536),
    "norm_groups": (0, 1024),
}

#: BackboneSpec (inline backbone of a config, diffusers config.json) field -> (min, max)
BACKBONE_RANGES: dict[str, tuple[int, int]] = {
    "levels": (1, 8), "channels": (1, 65536), "resnets": (1, 64), "transformers": (0, 64),
    "transformer_depth": (1, 64), "heads": (1, 1024), "norm_groups": (1, 1024),
    "cross_attention_dim": (1, 16384), "time_embed_dim": (1, 65536), "latent_channels": (0, 64),
}

# ---- measurements ---------------------------------------------------------------------------
#: measurement CSV value column -> (min, max): latencies are ms per call (1e6 ms = 17 min)
MEASUREMENT_RANGES: dict[str, tuple[float, float]] = {
    "latency_ms": (0.0, 1e6), "p10_ms": (0.0, 1e6), "p90_ms": (0.0, 1e6), "load_ms": (0.0, 1e7),
    "ref_ms": (0.0, 1e6), "runs": (0, 10**7), "warmup": (0, 10**7), "repeat": (0, 10**6),
    "threads": (0, 4096),
}

# ---- numeric options (experiment config keys and evaluator options, by key name) -------------
#: key name -> (min, max), inclusive. Applies to the experiment config (``evaluator.threads``,
#: ``search.n_trials`` ...) and to every evaluator's options (``evaluator.options.batch`` ...);
#: a test checks that every numeric key of both has an entry.
OPTION_RANGES: dict[str, tuple[float, float]] = {
    # experiment config
    "budget": (0, 10**6),
    "seeds": (0, 2**32 - 1),
    "seed": (0, 2**32 - 1),
    "timeout_s": (0.001, 7 * 86400.0),
    "retries": (0, 100),
    "threads": (1, 1024),
    "num_cpus": (0, 1024),
    "latency_budget_ms": (0, 1e7),
    "memory_budget_mb": (0, 1e8),
    "n_trials": (1, 10**7),
    "workers": (1, 1024),  # also --workers (experiments.resources.MAX_WORKERS)
    "config_version": (0, 1000),
    # multi-fidelity rungs and the weight-sharing supernet
    "min_budget": (1, 10**6),
    "reduction_factor": (2, 100),
    "latency_buckets": (1, 1000),
    "rung_val_fraction": (0, 1.0),
    "bootstrap_count": (0, 10**6),
    "checkpoint_every": (0, 10**6),
    "eval_batch": (1, 4096),
    "finetune_steps": (0, 10**6),
    "finetune_lr": (0, 10.0),
    # search.sampler_options (Optuna's sampler arguments)
    "population_size": (2, 10**5),
    "mutation_prob": (0, 1.0),
    "crossover_prob": (0, 1.0),
    "swapping_prob": (0, 1.0),
    "n_startup_trials": (0, 10**6),
    "n_ei_candidates": (1, 10**5),
    "prior_weight": (0, 10**6),
    # command-line flags without a config key (``--calibration`` ...)
    "calibration": (0, 10**5),
    "repeats": (1, 1000),
    "networks": (0, 10**5),
    "limit": (0, 10**7),
    "runs": (1, 10**6),
    "time_limit_s": (0, 86400.0),
    "videos": (1, 1000),
    "n_archs": (1, 10**5),
    "bootstrap": (0, 10**6),
    # evaluator options
    "batch": (1, 4096),
    "steps": (0, 10**6),
    "default_budget": (0, 10**6),
    "lr": (0, 10.0),
    "warmup": (0, 10**6),
    "ema": (0, 1.0),
    "val_timesteps": (1, 1000),
    "num_batches": (1, 10**4),
    "num_train": (1, 10**6),
    "num_val": (1, 10**6),
    "patch": (1, 64),
    "stride": (1, 1000),
    "windows": (1, 1000),
    "val_fraction": (0, 1.0),
    "width_mult": (0, 1.0),
    "num_frames": (1, 1024),
    "latent_height": (1, 1024),
    "latent_width": (1, 1024),
    "text_tokens": (1, 4096),
}
#: Ray resource amounts of one evaluation (``evaluator.options.resources``): CPUs/GPUs and
#: custom resources, and ``memory`` in bytes
RESOURCE_MAX = 1024.0
RESOURCE_MEMORY_MAX = 1e15


def _shown(x: float) -> str:
    if isinstance(x, float) and not x.is_integer():
        return f"{x:.3g}"
    return f"{x:,.0f}" if abs(x) < 1e15 else f"{x:.3g}"


def check_range(where: str, value: Any, bounds: tuple[float, float]) -> Any:
    """``value`` if it is finite and within ``bounds`` (inclusive), else a one-line
    :class:`ConfigError` naming ``where``."""
    lo, hi = bounds
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{where}: expected a finite number, got {value!r}")
    if value < lo:
        raise ConfigError(f"{where}: must be >= {_shown(lo)}, got {_shown(value)}")
    if value > hi:
        raise ConfigError(f"{where}: must be <= {_shown(hi)}, got {_shown(value)} (temponas's "
                          f"limit, see docs/limits.md)")
    return value


def option_range(where: str, value: Any) -> Any:
    """:func:`check_range` with the :data:`OPTION_RANGES` entry of the last key of ``where``
    (``evaluator.options.threads`` -> ``threads``; ``seeds[2]`` -> ``seeds``)."""
    name = where.rsplit(".", 1)[-1].split("[", 1)[0].rsplit(" ", 1)[-1]
    bounds = OPTION_RANGES.get(name)
    return value if bounds is None else check_range(where, value, bounds)
