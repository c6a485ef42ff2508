"""Pure logic of the resource checks and the runtime environment plan (the real-Ray behaviour
is tested in test_exp_cluster.py and tests/reliability)."""

from __future__ import annotations

import sys
import time
from dataclasses import replace

import pytest

from common.errors import ConfigError
from evaluators import create_evaluator
from experiments.config import RuntimeEnvConfig, parse_config
from experiments.resources import (
    FeasibilityWatch,
    ResourceError,
    infeasible_reason,
    request_of,
    task_resources,
)
from experiments.runtime_env import PROJECT_PACKAGES, job_env, plugin_path
from search_space.presets import get_backbone

CPU2 = {"CPU": 2.0, "memory": 8 * 2**30, "node:127.0.0.1": 1.0}
GPU1 = {"CPU": 1.0, "GPU": 1.0, "memory": 8 * 2**30}


def key(resource: str) -> str:
    return f"cfg.yaml: evaluator.options.resources.{resource}"


@pytest.mark.parametrize("request_, nodes, fragment", [
    ({"GPU": 1.0}, [CPU2, CPU2], "resources.GPU: 1 GPU per evaluation, but no node of the Ray "
                                 "cluster has a GPU (2 node(s) alive; they have: CPU, memory)"),
    ({"CPU": 4.0}, [CPU2, GPU1], "resources.CPU: 4 CPUs per evaluation, but the largest node of "
                                 "the Ray cluster has 2 CPUs"),
    ({"CPU": 1.0, "vbench": 1.0}, [CPU2], "no node of the Ray cluster has the resource 'vbench'"),
    ({"CPU": 2.0, "GPU": 1.0}, [CPU2, GPU1], "no single node of the Ray cluster has 2 CPUs, 1 GPU"),
    ({"memory": 64.0 * 2**30}, [CPU2], "64 GiB of memory per evaluation, but the largest node"),
    ({"CPU": 1.0}, [], "no node is alive"),
])
def test_infeasible_requests_name_the_resource(request_, nodes, fragment):
    assert fragment in infeasible_reason(request_, nodes, key)


def test_feasible_requests():
    assert infeasible_reason({"CPU": 2.0, "GPU": 0.5}, [CPU2, {**GPU1, "CPU": 2.0}], key) is None
    assert infeasible_reason({}, [CPU2], key) is None


def test_request_of_ray_options():
    assert request_of({"num_cpus": 1.0, "num_gpus": 0.0, "memory": 5.0, "resources": {"x": 2}}) == {
        "CPU": 1.0, "memory": 5.0, "x": 2.0}


def test_device_auto_takes_a_gpu_only_where_the_cluster_has_one():
    bb = get_backbone("tiny")
    auto = create_evaluator("naswot", bb, {})
    assert task_resources(auto, [CPU2]) == {"num_cpus": 1.0}
    assert task_resources(auto, [CPU2, GPU1]) == {"num_cpus": 1.0, "num_gpus": 1.0}
    cpu = create_evaluator("naswot", bb, {"device": "cpu"})
    assert task_resources(cpu, [GPU1]) == {"num_cpus": 1.0}
    mine = create_evaluator("naswot", bb, {"resources": {"num_cpus": 2}})
    assert task_resources(mine, [GPU1]) == {"num_cpus": 2.0}
    assert task_resources(create_evaluator("params", bb, {}), [GPU1]) == {"num_cpus": 1.0}


def test_watch_raises_after_the_grace_only():
    nodes = [[GPU1], [CPU2], [GPU1], [CPU2], [CPU2]]
    watch = FeasibilityWatch({"GPU": 1.0}, key, interval_s=0.0, grace_s=0.2,
                             nodes=lambda: nodes.pop(0) if len(nodes) > 1 else nodes[0])
    watch.check()  # feasible
    watch.check()  # infeasible: grace starts
    watch.check()  # feasible again: grace reset
    watch.check()  # infeasible
    time.sleep(0.25)
    with pytest.raises(ResourceError, match="resources.GPU.*nodes left the cluster during the search"):
        watch.check()


# ---- runtime environment ------------------------------------------------------------------

def test_job_env_ships_project_and_plugin_only_when_joining(tmp_path, monkeypatch):
    (tmp_path / "my_plug.py").write_text("class Eval: ...\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import my_plug  # noqa: F401 - the driver imported it (create_evaluator does)

    try:
        rc = RuntimeEnvConfig()
        env = job_env(rc, "my_plug:Eval", joined=True, where="cfg.yaml: runtime_env")
        mods = env["py_modules"]
        assert [m.rsplit("/", 1)[-1] for m in mods[:-1]] == list(PROJECT_PACKAGES)
        assert mods[-1] == str((tmp_path / "my_plug.py").resolve())
        assert "__pycache__/" in env["excludes"] and "working_dir" not in env
        assert job_env(rc, "my_plug:Eval", joined=False, where="x") == {}
        off = replace(rc, ship_project=False, ship_plugins=False)
        assert job_env(off, "my_plug:Eval", joined=True, where="x") == {}
        data = tmp_path / "data"
        data.mkdir()
        env = job_env(replace(off, working_dir=str(data), py_modules=(str(tmp_path / "my_plug.py"),),
                              excludes=("*.mp4",)), "params", joined=False, where="x")
        assert env["working_dir"] == str(data.resolve()) and "*.mp4" in env["excludes"]
        assert env["py_modules"] == [str((tmp_path / "my_plug.py").resolve())]
    finally:
        sys.modules.pop("my_plug", None)


@pytest.mark.parametrize("name", ["params", "evaluators._naswot:NaswotEvaluator",
                                  "yaml:SafeLoader", "json:JSONDecoder"])
def test_registered_project_and_installed_modules_are_not_shipped(name):
    assert plugin_path(name) is None


@pytest.mark.parametrize("over, fragment", [
    ({"working_dir": "/no/such/dir"}, "cfg.yaml: runtime_env.working_dir: /no/such/dir"),
    ({"py_modules": ["/no/such/mod.py"]}, "cfg.yaml: runtime_env.py_modules[0]: /no/such/mod.py"),
])
def test_missing_paths_name_the_key(over, fragment):
    with pytest.raises(ConfigError, match=fragment.replace("[", r"\[").replace("]", r"\]")):
        job_env(replace(RuntimeEnvConfig(), **over), "params", joined=True,
                where="cfg.yaml: runtime_env")


def test_runtime_env_does_not_change_the_run_identity(smoke_cfg):
    d = smoke_cfg.to_dict()
    other = parse_config({**d, "runtime_env": {"env_vars": {"TEMPONAS_CACHE": "/shared"},
                                               "ship_project": False}}, "cfg.yaml")
    assert other.identity() == smoke_cfg.identity()
    assert other.runtime_env.env_vars["TEMPONAS_CACHE"] == "/shared"
