"""The placement plan for a few cluster shapes (rl/train/placement.py); the real multi-GPU run cannot happen here."""

from __future__ import annotations

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
    ([8], dict(learner_ranks=8, num_engines=1), r"room for 0 such engines"),
])
def test_what_does_not_fit_names_the_keys(shape, kw, problem):
    with pytest.raises(PlacementError, match=problem):
        plan_placement(shape, **kw)
