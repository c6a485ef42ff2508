"""A node of a two-node Ray cluster (``ray.cluster_utils.Cluster`` on this machine) is removed
while evaluations run on it: Ray re-runs them on the surviving node and the search completes."""

from __future__ import annotations

import pytest
from rel_helpers import evaluation_counts, faulty, load_study, plugin_path, states, write_config

pytestmark = [pytest.mark.fault, pytest.mark.timeout(150), pytest.mark.own_ray_cluster]

N = 10


@pytest.fixture(scope="module")
def two_nodes():
    import ray
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    with plugin_path():
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
