"""Nodes of a Ray cluster (``ray.cluster_utils.Cluster`` on this machine, every node on
127.0.0.1) leave while evaluations run on them: Ray re-runs the evaluations on the surviving
node and the search completes; or, when the node that left was the only one with a resource
the evaluations need, the search stops within seconds with one line naming it."""

from __future__ import annotations

import time

import pytest
from rel_helpers import evaluation_counts, faulty, load_study, plugin_path, states, write_config

from experiments.distributed import loopback_only

pytestmark = [pytest.mark.fault, pytest.mark.timeout(150), pytest.mark.own_ray_cluster]

N = 10


@pytest.fixture(scope="module")
def two_nodes():
    import ray
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    with plugin_path(), loopback_only():
        cluster = Cluster(initialize_head=True, connect=False,
                          head_node_args={"num_cpus": 1, "include_dashboard": False,
                                          "node_ip_address": "127.0.0.1"})
        worker = cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1")
        cluster.wait_for_nodes()
    yield cluster, worker
    if ray.is_initialized():
        ray.shutdown()
    cluster.shutdown()


def test_node_removed_mid_search_completes(tmp_path, two_nodes, record):
    from experiments.cache import read_records
    from experiments.config import load_config
    from experiments.runner import SearchOptions, run_search

    cluster, worker = two_nodes
    cfg = load_config(write_config(tmp_path / "nodes.yaml", constraints={"memory_budget_mb": None},
                                   evaluator=faulty(tmp_path / "script", sleep_s=0.5, retries=2),
                                   search={"n_trials": N, "workers": 2}))
    run = tmp_path / "run"
    removed = {}

    def remove_worker_node(done: int) -> None:
        recs = read_records(run)
        if not removed and any(r["node_id"] == worker.node_id for r in recs):
            removed["at"] = done
            removed["evals_before"] = len(recs)
            cluster.remove_node(worker, allow_graceful=False)

    s = run_search(cfg, SearchOptions(out=str(run), progress=False, write_plots=False,
                                      ray_address=cluster.address, on_trial=remove_worker_node))
    assert removed, "no evaluation ran on the worker node before the end"
    study = load_study(run)
    st = states(study)
    assert st["COMPLETE"] == N and st["RUNNING"] == 0, (st, [t.user_attrs.get("failure_reason")
                                                            for t in study.trials])
    recs = read_records(run)
    assert max(evaluation_counts(run).values()) == 1
    after = recs[removed["evals_before"]:]
    assert after and all(r["node_id"] != worker.node_id for r in after[1:])
    record("fault", "a node of a two-node Ray cluster is removed mid-search",
           f"`ray.cluster_utils.Cluster` head + worker node (1 CPU each), `--ray-address`; the "
           f"worker node's raylet and workers killed after {removed['at']} trials, evaluations "
           f"(0.5 s each) in flight",
           f"nothing: lost evaluations are re-run on the head node (evaluator.retries); "
           f"{s.complete} complete, {s.failed} failed",
           f"{removed['evals_before']} evaluations from before the loss; {N}/{N} COMPLETE, no "
           f"evaluation repeated")


def test_nodes_with_the_resource_leave_mid_search_fails_in_seconds(tmp_path, two_nodes, record):
    """The only node with the resource an evaluation needs leaves mid-search (its raylet
    stopped; Ray declares it dead at once -- after a crash it takes Ray's health checks, ~10-15
    s more): the search stops with one line naming the resource, not after the evaluations'
    timeout, keeping what finished; --resume continues once such a node is back."""
    from experiments.cache import read_records
    from experiments.config import load_config
    from experiments.resources import INFEASIBLE_GRACE_S, ResourceError
    from experiments.runner import SearchOptions, run_search

    cluster, _ = two_nodes
    with plugin_path(), loopback_only():
        rare = cluster.add_node(num_cpus=1, resources={"rare": 1}, node_ip_address="127.0.0.1")
    cluster.wait_for_nodes()
    ev = {**faulty(tmp_path / "script", sleep_s=0.3), "timeout_s": 600}
    ev["options"]["resources"] = {"num_cpus": 1, "rare": 1}
    cfg = load_config(write_config(tmp_path / "rare.yaml", constraints={"memory_budget_mb": None},
                                   evaluator=ev, search={"n_trials": 30, "workers": 2}))
    run = tmp_path / "run"
    removed = {}

    def remove_rare_node(done: int) -> None:
        if not removed and read_records(run):
            removed["at"], removed["t"] = done, time.monotonic()
            cluster.remove_node(rare, allow_graceful=True)

    with pytest.raises(ResourceError) as e:
        run_search(cfg, SearchOptions(out=str(run), progress=False, write_plots=False,
                                      ray_address=cluster.address, on_trial=remove_rare_node))
    after_s = time.monotonic() - removed["t"]
    msg = str(e.value)
    assert "evaluator.options.resources.rare" in msg and "no node" in msg and "\n" not in msg, msg
    assert after_s < 30, after_s  # 2 s polls + 3 s grace; not the 600 s evaluation timeout
    study = load_study(run)
    st = states(study)
    assert st["COMPLETE"] >= 1 and st["RUNNING"] == 0, st
    record("fault", "the only node with an evaluation's resource leaves mid-search",
           "custom resource `rare` on a third node only, evaluator.options.resources "
           "{num_cpus: 1, rare: 1}, evaluator.timeout_s 600; that node's raylet stopped after "
           f"{removed['at']} trial(s)",
           f"exit 2 {after_s:.0f} s after the node left (2 s polls of the nodes, then "
           f"{INFEASIBLE_GRACE_S:g} s grace), one line: \"{msg.replace(str(tmp_path), '<tmp>')}\"",
           f"{st['COMPLETE']} COMPLETE trials; the evaluations in flight are queued again for "
           f"--resume")
