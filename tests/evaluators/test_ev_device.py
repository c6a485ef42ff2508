"""``device`` and ``precision`` of every torch evaluator: during a real evaluation every module
call sees its parameters, buffers and inputs on the requested device (read from the tensors'
``.device`` by global module hooks), and matmuls/convolutions run in the requested precision.
CUDA cases skip where there is none; the CPU cases run everywhere."""

from __future__ import annotations

import pytest
import torch
from ev_helpers import tiny_options
from torch import nn

import evaluators._pretrain as pretrain_mod
from evaluators._device import resolve_device
from evaluators._torch_setup import TorchOptions
from evaluators.registry import BUILTIN, create_evaluator, ray_remote_options, resolve
from search_space.errors import ConfigError

TORCH_EVALUATORS = [n for n in BUILTIN if issubclass(resolve(n).Options, TorchOptions)]
HAS_CUDA = torch.cuda.is_available()
no_cuda = pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device here")
DEVICES = ["cpu", pytest.param("auto", marks=no_cuda), pytest.param("cuda", marks=no_cuda),
           pytest.param("cuda:0", marks=no_cuda)]
LOW = {torch.bfloat16, torch.float16}


def expected(device: str) -> str:
    if device == "auto":
        return "cuda:0" if HAS_CUDA else "cpu"
    return "cuda:0" if device == "cuda" else device


class Seen:
    """Every module call while active: devices of its own parameters/buffers and of its tensor
    inputs, and the dtypes Linear/Conv layers return."""

    def __init__(self) -> None:
        self.calls, self.param_devices, self.input_devices, self.out_dtypes = 0, set(), set(), set()

    def _pre(self, m: nn.Module, args: tuple) -> None:
        self.calls += 1
        for t in [*m.parameters(recurse=False), *m.buffers(recurse=False)]:
            self.param_devices.add(str(t.device))
        for a in args:
            if isinstance(a, torch.Tensor):
                self.input_devices.add(str(a.device))

    def _post(self, m: nn.Module, args: tuple, out) -> None:
        if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)) and isinstance(out, torch.Tensor):
            self.out_dtypes.add(out.dtype)

    def __enter__(self) -> Seen:
        from torch.nn.modules.module import (
            register_module_forward_hook,
            register_module_forward_pre_hook,
        )

        self._handles = [register_module_forward_pre_hook(self._pre),
                         register_module_forward_hook(self._post)]
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()


def _options(name: str, cache_dir: str, **over) -> dict:
    opts = {**tiny_options(name, cache_dir), **over}
    if name == "short_train":
        opts["cache_results"] = False  # a cached result would skip the run
    return opts


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", TORCH_EVALUATORS)
def test_parameters_and_inputs_on_the_requested_device(name, device, tiny, temporal_arch, cache_dir):
    ev = create_evaluator(name, tiny, _options(name, cache_dir, device=device))
    with Seen() as seen:  # pretraining too, if this configuration has not been pretrained yet
        r = ev.evaluate(temporal_arch, seed=0, budget=2)
    assert r.value == r.value  # not NaN
    want = expected(device)
    assert seen.calls > 10
    assert seen.param_devices == {want}, seen.param_devices
    assert seen.input_devices == {want}, seen.input_devices
    if name != "synflow":  # fp32 by default (synflow: float64)
        assert torch.float32 in seen.out_dtypes and not seen.out_dtypes & LOW


def test_auto_is_the_cpu_without_cuda(tiny, temporal_arch, cache_dir):
    ev = create_evaluator("naswot", tiny, _options("naswot", cache_dir, device="auto"))
    with Seen() as seen:
        ev.evaluate(temporal_arch, seed=0)
    assert seen.calls > 10 and seen.param_devices == seen.input_devices == {expected("auto")}


@pytest.mark.parametrize("name", TORCH_EVALUATORS)
def test_precision_is_honoured(name, tiny, temporal_arch, cache_dir):
    ev = create_evaluator(name, tiny, _options(name, cache_dir, device="cpu", precision="bf16"))
    with Seen() as seen:
        r = ev.evaluate(temporal_arch, seed=0, budget=2)
    assert r.value == r.value
    if name == "synflow":  # float64 whatever the precision (its products overflow)
        assert seen.out_dtypes == {torch.float64}
    else:
        assert torch.bfloat16 in seen.out_dtypes, seen.out_dtypes


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=no_cuda)])
def test_pretraining_runs_on_the_device_in_the_precision(device, tiny, tmp_path, monkeypatch):
    monkeypatch.setattr(pretrain_mod, "_MEMO", {})  # really pretrain (fresh cache dir too)
    opts = create_evaluator("naswot", tiny, {**_options("naswot", str(tmp_path)),
                                             "device": device, "precision": "bf16"}).options
    with Seen() as seen:
        state, meta = pretrain_mod.pretrained_spatial(tiny, opts, 4, progress=False)
    assert seen.calls > 10 and seen.param_devices == {expected(device)}
    assert seen.input_devices == {expected(device)} and torch.bfloat16 in seen.out_dtypes
    assert meta["device"] == expected(device) and meta["precision"] == "bf16"
    assert {str(t.device) for t in state.values()} == {"cpu"}  # saved from the CPU


def test_fp16_training_steps_through_the_grad_scaler(tiny, temporal_arch, cache_dir, monkeypatch):
    steps = []
    real = torch.amp.GradScaler.step
    monkeypatch.setattr(torch.amp.GradScaler, "step",
                        lambda self, opt, *a, **kw: steps.append(self.is_enabled()) or real(self, opt, *a, **kw))
    ev = create_evaluator("short_train", tiny, _options("short_train", cache_dir, device="cpu",
                                                        precision="fp16", spatial="random"))
    r = ev.evaluate(temporal_arch, seed=0, budget=2)
    assert r.value == r.value and steps == [True, True]


# ---- options, keys and Ray resources (no torch work) -------------------------------------------

def test_device_is_not_in_the_key_precision_is(tiny, cache_dir):
    base = create_evaluator("naswot", tiny, tiny_options("naswot", cache_dir))
    key = base.config_key
    assert create_evaluator("naswot", tiny, {**tiny_options("naswot", cache_dir),
                                             "device": "cpu"}).config_key == key
    assert create_evaluator("naswot", tiny, {**tiny_options("naswot", cache_dir),
                                             "precision": "fp32"}).config_key == key
    assert create_evaluator("naswot", tiny, {**tiny_options("naswot", cache_dir),
                                             "precision": "bf16"}).config_key != key


def test_resources_follow_the_device(tiny):
    assert ray_remote_options(create_evaluator("naswot", tiny, {"device": "cuda"})) == {
        "num_cpus": 1.0, "num_gpus": 1.0}
    assert ray_remote_options(create_evaluator("naswot", tiny, {"device": "cpu"})) == {"num_cpus": 1.0}
    auto = create_evaluator("naswot", tiny, {})
    assert ray_remote_options(auto) == {"num_cpus": 1.0} and auto.gpu_if_available
    mine = create_evaluator("naswot", tiny, {"device": "cuda:1",
                                             "resources": {"num_cpus": 2, "num_gpus": 0.5}})
    assert ray_remote_options(mine) == {"num_cpus": 2.0, "num_gpus": 0.5}
    assert not mine.gpu_if_available
    assert not create_evaluator("naswot", tiny, {"resources": {"num_cpus": 1}}).gpu_if_available


@pytest.mark.parametrize("options, key", [
    ({"device": "gpu"}, "evaluator.options.device"),
    ({"device": "cuda:x"}, "evaluator.options.device"),
    ({"precision": "fp8"}, "evaluator.options.precision"),
    ({"device": "cuda", "resources": {"num_cpus": 1}}, "evaluator.options.resources"),
])
def test_bad_device_options_name_the_key(options, key, tiny):
    with pytest.raises(ConfigError) as e:
        create_evaluator("short_train", tiny, options)
    assert key in str(e.value) and "\n" not in str(e.value)


@pytest.mark.skipif(HAS_CUDA, reason="checks the message where there is no CUDA")
def test_cuda_without_a_gpu_names_the_option():
    with pytest.raises(ConfigError, match="device: 'cuda' requested but this process sees no CUDA"):
        resolve_device("cuda")
    assert resolve_device("auto") == torch.device("cpu")
