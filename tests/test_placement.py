"""The placement plan for a few cluster shapes (rl/train/placement.py); the real multi-GPU run cannot happen here."""

from __future__ import annotations

import time

import pytest

from rl.train.placement import PlacementError, Slot, plan_placement


def test_one_node_learner_first_then_tensor_parallel_engines():
    plan = plan_placement([8], learner_ranks=4, num_engines=2, tensor_parallel_size=2)
    assert plan.learner == tuple(Slot(0, (g,)) for g in range(4))
    assert plan.engines == (Slot(0, (4, 5)), Slot(0, (6, 7)))
    assert plan.describe() == ("node 0: learner rank 0: [0], learner rank 1: [1], learner rank 2: [2], "
                               "learner rank 3: [3], engine 0: [4, 5], engine 1: [6, 7]")


def test_two_nodes_a_node_for_the_learner_and_one_for_the_engines():
    plan = plan_placement([8, 8], learner_ranks=8, num_engines=4, tensor_parallel_size=2)
    assert {s.node for s in plan.learner} == {0}
    assert plan.engines == (Slot(1, (0, 1)), Slot(1, (2, 3)), Slot(1, (4, 5)), Slot(1, (6, 7)))


def test_an_engine_never_spans_two_nodes():
    # after the learner's 6 GPUs node 0 has 2 free: too few for a TP-4 engine, which goes to node 1
    plan = plan_placement([8, 8], learner_ranks=6, num_engines=2, tensor_parallel_size=4)
    assert plan.engines == (Slot(1, (0, 1, 2, 3)), Slot(1, (4, 5, 6, 7)))
    with pytest.raises(PlacementError, match=r"rollout.num_engines=3 .* room for 2 such engines .* lower "
                                             r"rollout.num_engines to 2"):
        plan_placement([8, 8], learner_ranks=6, num_engines=3, tensor_parallel_size=4)


def test_a_learner_larger_than_a_node_and_uneven_nodes():
    plan = plan_placement([8, 8, 4], learner_ranks=12, num_engines=3, tensor_parallel_size=2)
    assert [s.node for s in plan.learner] == [0] * 8 + [1] * 4
    assert plan.engines == (Slot(1, (4, 5)), Slot(1, (6, 7)), Slot(2, (0, 1)))
    two = plan_placement([8], learner_ranks=2, num_engines=1, tensor_parallel_size=4, learner_gpus_per_rank=2)
    assert two.learner == (Slot(0, (0, 1)), Slot(0, (2, 3)))
    assert two.engines == (Slot(0, (4, 5, 6, 7)),)


@pytest.mark.parametrize("shape, kw, problem", [
    ([8], dict(learner_ranks=1, num_engines=1, tensor_parallel_size=16), "more GPUs than any node has"),
    ([4, 4], dict(learner_ranks=9, num_engines=0), "learner.num_ranks=9 ranks .* the cluster has 8"),
    ([8], dict(learner_ranks=8, num_engines=1), r"room for 0 such engines \(each inside one node\); lower "
                                                r"rollout.tensor_parallel_size or learner.num_ranks"),
])
def test_what_does_not_fit_names_the_keys(shape, kw, problem):
    with pytest.raises(PlacementError, match=problem):
        plan_placement(shape, **kw)


@pytest.fixture
def gpu_cluster(monkeypatch):
    """rl.cluster's reading of Ray: a cluster of nodes with these GPU counts (the planning on top is real)."""
    import ray

    import rl.cluster

    def shape(nodes: list[int]) -> None:
        monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 64.0, "GPU": float(sum(nodes))})
        monkeypatch.setattr(rl.cluster, "node_gpus", lambda: [(f"node-{i}", g) for i, g in enumerate(nodes)])
    return shape


def test_the_run_config_is_planned_on_the_cluster_s_gpus(gpu_cluster):
    from rl.cluster import plan_gpus
    from rl.config import load_config

    def cfg(*extra):
        return load_config("recipes/quickstart.yaml", list(extra))

    gpu_cluster([0])
    assert plan_gpus(cfg()) is None  # a CPU cluster: nothing to plan
    gpu_cluster([8])
    plan = plan_gpus(cfg("learner.num_ranks=4", "rollout.num_engines=2", "rollout.tensor_parallel_size=2"))
    assert [s.gpus for s in plan.learner] == [(0,), (1,), (2,), (3,)]
    assert plan.engines == (Slot(0, (4, 5)), Slot(0, (6, 7)))
    gpu_cluster([2, 4])  # the learner's 4 ranks: 2 on node 0, 2 on node 1; the TP-2 engine on node 1's rest
    plan = plan_gpus(cfg("learner.num_ranks=4", "rollout.num_engines=1", "rollout.tensor_parallel_size=2"))
    assert plan.nodes(plan.learner) == ["node-0", "node-0", "node-1", "node-1"]  # where their bundles are pinned
    assert plan.nodes(plan.engines) == ["node-1"]
    assert plan_gpus(cfg("rollout.num_gpus_per_engine=0.5")) is None  # GPUs shared on purpose: Ray places them
    with pytest.raises(PlacementError, match=r"engines of rollout.num_gpus_per_engine=4 GPUs do not fit"):
        plan_gpus(cfg("learner.num_ranks=4", "rollout.num_engines=2", "rollout.num_gpus_per_engine=4"))


def test_a_bundle_pinned_to_its_node_is_placed_there_and_one_pinned_elsewhere_is_refused(ray_cluster, monkeypatch):
    """rl.cluster.reserve on the real local cluster: bundles pinned to this node's id land on it; a bundle pinned
    to a node that is not there (a planned node that left) is refused with what and the keys to change, and its
    placement group is removed (the CPUs are free again)."""
    ray = ray_cluster
    import rl.cluster
    from ray.util.placement_group import placement_group_table, remove_placement_group

    here = ray.get_runtime_context().get_node_id()
    free = ray.available_resources().get("CPU")
    pg = rl.cluster.reserve([{"CPU": 0.25}, {"CPU": 0.25}], [here, here], what="two bundles", fix="fix them")
    try:
        table = placement_group_table(pg)
        assert table["state"] == "CREATED" and set(table["bundles_to_node_id"].values()) == {here}
    finally:
        remove_placement_group(pg)
    monkeypatch.setattr(rl.cluster, "PLACEMENT_TIMEOUT_S", 3)
    with pytest.raises(RuntimeError, match=r"cannot place two bundles on the planned nodes within 3 s .*: fix them"):
        rl.cluster.reserve([{"CPU": 0.25}, {"CPU": 0.25}], [here, "f" * 56], what="two bundles", fix="fix them")
    deadline = time.time() + 10
    while ray.available_resources().get("CPU") != free:  # (a removed group's CPUs come back asynchronously)
        assert time.time() < deadline, f"CPUs never came back: {ray.available_resources()} free, {free} before"
        time.sleep(0.1)
