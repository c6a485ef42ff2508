"""Measurement backends: ``torch_cpu`` (times blocks and networks here) and ``coreml_export``
(converts them to Core ML packages + a macOS runner). torch and coremltools are imported only
when a function needs them.
"""

from latency_models.backends.coreml_export import (
    PALETTIZE_MODES,
    TARGETS,
    Precision,
    compress_weights,
    convert_block,
    convert_module,
    convert_network,
    export_bundle,
    mil_features,
    mil_op_counts,
    palettize,
    quantize_int8,
)
from latency_models.backends.torch_cpu import TimingPolicy, TorchCpuBackend, measure

__all__ = ["PALETTIZE_MODES", "TARGETS", "Precision", "TimingPolicy", "TorchCpuBackend",
           "compress_weights", "convert_block", "convert_module", "convert_network",
           "export_bundle", "measure", "mil_features", "mil_op_counts", "palettize",
           "quantize_int8"]
