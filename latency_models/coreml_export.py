"""Public alias of :mod:`latency_models.backends.coreml_export` (Core ML conversion, probe
bundles, MIL features). coremltools and torch are imported only when a function is called."""

from latency_models.backends.coreml_export import (  # noqa: F401
                                                   TARGETS,
                                                   ExportError,
                                                   convert_block,
                                                   convert_module,
                                                   convert_network,
                                                   export_bundle,
                                                   mil_features,
                                                   mil_op_counts,
                                                   summarize_mil,
)
