"""Measurement backends: ``torch_cpu`` (here) and ``coreml`` (export + macOS runner)."""
