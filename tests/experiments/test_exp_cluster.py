"""A search on a two-node Ray cluster started on this machine: trials run on both nodes."""

from __future__ import annotations

from dataclasses import replace

import pytest
from exp_helpers import counted_states, load_study

from experiments.cache import read_records
from experiments.runner import SearchOptions, run_search
from experiments.trials import trial_attrs


@pytest.fixture(scope="module")
def two_node_cluster():
    import ray
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    cluster = Cluster(initialize_head=True, connect=False,
                      head_node_args={"num_cpus": 1, "include_dashboard": False})
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    yield cluster
    if ray.is_initialized():
        ray.shutdown()
    cluster.shutdown()


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
    cluster_nodes = {n.node_id for n in two_node_cluster.list_all_nodes()}
    assert len(nodes) == 2 and nodes <= cluster_nodes
    # every complete trial records where its evaluation ran
    for t in study.trials:
        if t.state.name == "COMPLETE" and "duplicate_of" not in t.user_attrs \
                and not t.user_attrs.get("not_evaluated"):
            assert set(trial_attrs(t)["node_ids"]) <= nodes
    assert s.evaluations_run == len(read_records(tmp_path / "run"))
