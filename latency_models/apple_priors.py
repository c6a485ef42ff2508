"""The shipped Apple device *priors* (``python -m latency_models.apple_priors`` rebuilds them).

Since issue 13 they come from the Neural Engine cost model fitted across network families on
published Core ML latencies (:mod:`latency_models.ane.priors`, ``temponas latency build-priors``);
this module keeps the command and the SD-2.1-base workload the priors are checked on.
"""

from latency_models.ane.priors import main, sd21_image_arch

__all__ = ["main", "sd21_image_arch"]

if __name__ == "__main__":
    raise SystemExit(main())
