"""Searches on a two-node Ray cluster started on this machine (``ray.cluster_utils.Cluster``,
every node bound to 127.0.0.1; the worker node declares one GPU, so GPU placement is real Ray
scheduling even where torch has no CUDA): trials run on both nodes; a plug-in evaluator that
lives outside the installed packages reaches the workers through the runtime environment; a
``device: auto`` evaluator gets one GPU per evaluation; impossible resources and a runtime env
Ray cannot set up fail in seconds with one line."""

from __future__ import annotations

import json
import os
import textwrap
import time
from dataclasses import replace
from pathlib import Path

import pytest
import yaml
from exp_helpers import cli, counted_states, load_study, states
from netcheck import exposed

from experiments.cache import read_records
from experiments.distributed import loopback_only
from experiments.runner import SearchOptions, run_search
from experiments.trials import trial_attrs

ROOT = Path(__file__).resolve().parents[2]
SMOKE = ROOT / "experiments" / "configs" / "smoke.yaml"

PLUGIN = '''
"""A user's evaluator outside the installed packages: records where each evaluation ran."""
import json, os, time
from pathlib import Path

from evaluators.base import Direction, EvalResult


class Where:
    name = "where"
    direction = Direction.MAXIMIZE
    resources = {"num_cpus": 1.0}

    def __init__(self, backbone, log_dir="", data_file="", sleep_s=0.4):
        self.backbone, self.log_dir, self.data_file, self.sleep_s = backbone, log_dir, data_file, sleep_s

    @property
    def config_key(self):
        return "where-1"

    def evaluate(self, arch, *, seed=0, budget=0):
        import ray

        import experiments.distributed as project
        from search_space.flops import network_cost

        rec = {"node_id": ray.get_runtime_context().get_node_id(), "plugin_file": __file__,
               "project_file": project.__file__, "cwd": os.getcwd(), "pid": os.getpid(),
               "mark": os.environ.get("WHERE_MARK"), **self.extra()}
        if self.data_file:
            rec["data"] = Path(self.data_file).read_text()
        Path(self.log_dir, f"{os.getpid()}-{time.time_ns()}.json").write_text(json.dumps(rec))
        time.sleep(self.sleep_s)
        return EvalResult(float(network_cost(self.backbone, arch.task, arch).params), {}, self.sleep_s)

    def extra(self):
        return {}


class GpuWhere(Where):
    """Uses a GPU if it gets one, like a torch evaluator with ``device: auto``."""

    gpu_if_available = True

    def extra(self):
        import ray

        from evaluators import resolve_device

        return {"gpu_ids": [str(i) for i in ray.get_gpu_ids()], "device": str(resolve_device("auto"))}
'''


@pytest.fixture(scope="module")
def plugin_dir(tmp_path_factory):
    """``where_eval.py``: a user's module on the driver's sys.path only (the cluster nodes
    were started without any path to it)."""
    import sys

    d = tmp_path_factory.mktemp("plugins")
    (d / "where_eval.py").write_text(textwrap.dedent(PLUGIN))
    sys.path.insert(0, str(d))
    yield d
    sys.path.remove(str(d))
    sys.modules.pop("where_eval", None)


@pytest.fixture(scope="module")
def two_node_cluster():
    import ray
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    # loopback only: without node_ip_address Ray binds every node to the machine's address,
    # and without loopback_only its servers listen on every interface
    with loopback_only():
        cluster = Cluster(initialize_head=True, connect=False,
                          head_node_args={"num_cpus": 1, "include_dashboard": False,
                                          "node_ip_address": "127.0.0.1"})
        cluster.add_node(num_cpus=1, num_gpus=1, node_ip_address="127.0.0.1")
        cluster.wait_for_nodes()
    yield cluster
    if ray.is_initialized():
        ray.shutdown()
    cluster.shutdown()


def _node_ids(cluster) -> tuple[str, str]:
    """(head node id, worker node id)."""
    head = cluster.head_node.node_id
    (worker,) = [n.node_id for n in cluster.list_all_nodes() if n.node_id != head]
    return head, worker


def _config(path: Path, **over) -> Path:
    d = yaml.safe_load(SMOKE.read_text())
    d.update(over)
    path.write_text(yaml.safe_dump(d, sort_keys=False))
    return path


def test_search_on_two_nodes_uses_both(tmp_path, smoke_cfg, two_node_cluster):
    import ray

    cfg = replace(smoke_cfg, search=replace(smoke_cfg.search, n_trials=12, workers=2))
    s = run_search(cfg, SearchOptions(out=str(tmp_path / "run"), progress=False, write_plots=False,
                                      ray_address=two_node_cluster.address))
    assert not ray.is_initialized()  # the driver disconnects from a cluster it joined
    study = load_study(tmp_path / "run", cfg.name)
    st = counted_states(study)
    assert st["COMPLETE"] + st["PRUNED"] == 12 and st["FAIL"] == 0
    nodes = {r["node_id"] for r in read_records(tmp_path / "run")}
    assert nodes == set(_node_ids(two_node_cluster))
    # every complete trial records where its evaluation ran
    for t in study.trials:
        if t.state.name == "COMPLETE" and "duplicate_of" not in t.user_attrs \
                and not t.user_attrs.get("not_evaluated"):
            assert set(trial_attrs(t)["node_ids"]) <= nodes
    assert s.evaluations_run == len(read_records(tmp_path / "run"))
    assert {n.node_ip_address for n in two_node_cluster.list_all_nodes()} == {"127.0.0.1"}
    assert not exposed(os.getpid())  # every server of both nodes listens on loopback only


def test_plugin_outside_the_installed_packages_runs_on_both_nodes(tmp_path, two_node_cluster,
                                                                  plugin_dir, monkeypatch):
    """The plug-in module lives in a directory only the driver's sys.path has (the nodes were
    started before it existed, with no path to it); the driver works from an empty directory,
    so nothing of Ray's own driver-path forwarding can reach it either. The search ships the
    plug-in, temponas's packages, the working_dir with the data the evaluator reads by a
    relative path, and env_vars."""
    logs, data, cwd = (tmp_path / d for d in ("logs", "workdir", "cwd"))
    for d in (logs, data / "clips", cwd):
        d.mkdir(parents=True)
    (data / "clips" / "manifest.txt").write_text("clip-0001.mp4\n")
    monkeypatch.chdir(cwd)
    evaluator = {"name": "where_eval:Where", "options": {"log_dir": str(logs),
                                                          "data_file": "clips/manifest.txt"}}
    cfg = _config(tmp_path / "cfg.yaml", evaluator=evaluator, constraints={},
                  search={"n_trials": 6, "workers": 2, "sampler": "random"},
                  runtime_env={"working_dir": str(data), "env_vars": {"WHERE_MARK": "shipped"}})
    rc, out, err = cli("search", str(cfg), "--out", str(tmp_path / "run"), "--no-progress",
                       "--ray-address", two_node_cluster.address)
    assert rc == 0, err
    st = states(load_study(tmp_path / "run", "smoke"))
    assert st["COMPLETE"] == 6, st
    recs = [json.loads(p.read_text()) for p in logs.glob("*.json")]
    assert {r["node_id"] for r in recs} == set(_node_ids(two_node_cluster))
    for r in recs:
        assert "runtime_resources" in r["plugin_file"] and not r["plugin_file"].startswith(str(plugin_dir))
        assert "runtime_resources" in r["project_file"] and not r["project_file"].startswith(str(ROOT))
        assert r["data"] == "clip-0001.mp4\n" and r["mark"] == "shipped"

    # the same search without shipping the plug-in: the workers cannot import it
    cfg = _config(tmp_path / "cfg2.yaml", evaluator=evaluator, constraints={},
                  search={"n_trials": 4, "workers": 2},
                  runtime_env={"working_dir": str(data), "ship_plugins": False})
    t0 = time.monotonic()
    rc, out, err = cli("search", str(cfg), "--out", str(tmp_path / "run2"), "--no-progress",
                       "--ray-address", two_node_cluster.address)
    wall = time.monotonic() - t0
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert "cannot import module 'where_eval'" in lines[0] and "Ray node" in lines[0], lines[0]
    assert wall < 60 and not (tmp_path / "run2").exists()  # smoke's evaluation timeout: 60 s


def test_gpu_if_available_takes_one_gpu_per_evaluation(tmp_path, two_node_cluster, plugin_dir,
                                                       monkeypatch):
    """An evaluator that uses a GPU when it gets one (``device: auto`` of the torch
    evaluators) reserves one per evaluation on a cluster with GPUs: every evaluation runs on
    the GPU node, in a fresh worker process, and sees the GPU Ray assigned (its device is
    still the CPU here: torch has no CUDA; the node's GPU is declared)."""
    monkeypatch.chdir(tmp_path)
    logs = tmp_path / "logs"
    logs.mkdir()
    cfg = _config(tmp_path / "cfg.yaml", constraints={},
                  evaluator={"name": "where_eval:GpuWhere", "options": {"log_dir": str(logs),
                                                                        "sleep_s": 0.0}},
                  search={"n_trials": 2, "workers": 2, "sampler": "random"})
    rc, out, err = cli("search", str(cfg), "--out", str(tmp_path / "run"), "--no-progress",
                       "--ray-address", two_node_cluster.address)
    assert rc == 0, err
    recs = [json.loads(p.read_text()) for p in logs.glob("*.json")]
    _, gpu_node = _node_ids(two_node_cluster)
    assert len(recs) == 2 and {r["node_id"] for r in recs} == {gpu_node}
    assert all(r["gpu_ids"] == ["0"] and r["device"] == "cpu" for r in recs), recs
    assert len({r["pid"] for r in recs}) == 2  # a fresh worker process per GPU evaluation


@pytest.mark.parametrize("resources, fragment", [
    ({"num_gpus": 2}, "num_gpus: 2 GPU per evaluation, but the largest node of the Ray cluster has 1 GPU"),
    ({"num_cpus": 4}, "num_cpus: 4 CPUs per evaluation, but the largest node of the Ray cluster has 1 CPU"),
    ({"num_cpus": 1, "num_gpus": 1, "ssd": 1}, "resources.ssd: 1 'ssd' per evaluation, but no node"),
])
def test_impossible_resources_fail_in_seconds(tmp_path, two_node_cluster, resources, fragment):
    cfg = _config(tmp_path / "cfg.yaml", evaluator={"name": "params",
                                                    "options": {"resources": resources}})
    t0 = time.monotonic()
    rc, out, err = cli("search", str(cfg), "--out", str(tmp_path / "run"), "--no-progress",
                       "--ray-address", two_node_cluster.address)
    wall = time.monotonic() - t0
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    assert fragment in lines[0] and "cfg.yaml: evaluator.options.resources." in lines[0], lines[0]
    assert wall < 20 and not (tmp_path / "run").exists()


def test_runtime_env_ray_cannot_set_up_stops_in_one_line(tmp_path, two_node_cluster):
    """A shipped wheel pip cannot install: every evaluation would fail the same way, so the
    first failure stops the search with pip's reason."""
    wheel = tmp_path / "broken-0.1-py3-none-any.whl"
    wheel.write_bytes(b"not a zip file")
    cfg = _config(tmp_path / "cfg.yaml", runtime_env={"py_modules": [str(wheel)]})
    rc, out, err = cli("search", str(cfg), "--out", str(tmp_path / "run"), "--no-progress",
                       "--ray-address", two_node_cluster.address)
    # ours is one line; Ray's raylet may forward its own report of the failure (its lines
    # start with "(raylet)") before or after it
    lines = [ln for ln in err.splitlines() if ln.strip() and "(raylet)" not in ln]
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    assert "runtime_env: Ray could not set up" in lines[0] and "broken" in lines[0], lines[0]
    assert not (tmp_path / "run").exists()
