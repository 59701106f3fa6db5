"""Weight sync through vLLM's weight-transfer API (rollout/weight_transfer.py) into engines whose engine core runs
in a process of its own, as on a GPU: the path where `collective_rpc("reload_weights", ...)` hands the worker
lists instead of tensors. A 2-rank FSDP2 learner group gathers and broadcasts; two engines receive over one gloo
group. What must hold: the engines then sample exactly what an in-process engine given the same weights through the
object store samples, and not what they sampled before."""

from __future__ import annotations

import os
import socket

import psutil
import pytest
import ray

from rl.config.algorithm import PolicyLossConfig
from rl.config.learner import LearnerConfig, OptimConfig
from rl.config.rollout import RolloutConfig, SamplingConfig
from rl.train.learner_group import LearnerGroup
from rollout.fleet import RolloutFleet
from rollout.weight_transfer import buckets
from tests.test_learner import make_batch

pytestmark = pytest.mark.integration

PROMPTS = [[1, 504, 3458, 314], [1, 2030, 314, 216, 34, 1232, 216, 35], [1, 28, 29, 30]]
GREEDY = SamplingConfig(n=1, temperature=0.0, max_tokens=12)


def tokens(fleet: RolloutFleet) -> list[list[int]]:
    return [g[0].response_ids for g in fleet.generate(PROMPTS, GREEDY, seeds=[0, 1, 2])]


def test_buckets_split_at_the_limit():
    assert buckets([4, 4, 4, 10, 1], 8) == [[0, 1], [2], [3], [4]]
    assert buckets([], 8) == []


def test_transfer_into_multiprocess_engines_equals_the_object_store(ray_cluster, tiny_model_path):
    # 2 + 2 + 1 actors on the fixture's 2-CPU cluster: a quarter CPU each (Ray scheduling only)
    cfg = LearnerConfig(num_threads=1, num_ranks=2, micro_batch_size=2, num_cpus=0.25, optim=OptimConfig(lr=1e-2))
    learner = LearnerGroup(cfg, tiny_model_path, cfg, PolicyLossConfig(), None, total_steps=2, max_response_tokens=8)
    common = dict(dtype="float32", max_model_len=256, kv_cache_gib=1, weight_bucket_mib=1,  # several buckets
                  num_cpus_per_engine=0.25)
    transfer = RolloutFleet(RolloutConfig(num_engines=2, weight_sync="transfer", **common), tiny_model_path)
    plain = RolloutFleet(RolloutConfig(num_engines=1, **common), tiny_model_path)
    try:
        assert ray_cluster.get([a.engine_core.remote() for a in transfer.actors]) == ["SyncMPClient"] * 2
        assert ray_cluster.get(plain.actors[0].engine_core.remote()) == "InprocClient"
        before = tokens(transfer)
        assert tokens(plain) == before
        for step in (1, 2):  # a new transfer group each sync
            learner.run("update", make_batch(seed=step))
            transfer.transfer_weights(learner, version=str(step))
            plain.update_weights(learner.export_weights("float32"))
            after = tokens(transfer)
            assert after == tokens(plain), f"sync {step}: the transferred weights sample differently"
            assert after != before, f"sync {step}: the engines still sample with the old weights"
            before = after

        # engine 1's engine core process dies (out of memory, a crashed worker) and its actor lives on, vLLM raising
        # EngineDeadError to every call: the actor exits, and the fleet replaces it, loads the current weights into
        # the replacement and redoes its shard
        transfer.weights_source = lambda actors: transfer.transfer_weights(learner, "2", actors)
        pid = ray_cluster.get(transfer.actors[1].__ray_call__.remote(lambda self: os.getpid()))
        cores = [p for p in psutil.Process(pid).children(recursive=True) if "EngineCore" in " ".join(p.cmdline())]
        assert len(cores) == 1, [p.cmdline() for p in psutil.Process(pid).children(recursive=True)]
        cores[0].kill()
        cores[0].wait(30)
        assert tokens(transfer) == after
        assert transfer.restarts == 1
    finally:
        transfer.shutdown()
        plain.shutdown()
        learner.shutdown()


def each_engine(fleet: RolloutFleet) -> list[list[list[int]]]:
    """Every engine's greedy tokens for all of PROMPTS."""
    out = ray.get([a.generate.remote(PROMPTS, GREEDY, [0, 1, 2]) for a in fleet.actors])
    return [[g[0].response_ids for g in groups] for groups in out]


def test_an_engine_that_dies_around_a_sync_is_replaced_with_the_new_weights(ray_cluster, tiny_model_path):
    """Engine 0 found dead before a sync: it is replaced and its replacement joins the group. Engine 1 dying after
    that check, before the group forms: the rendezvous gives up after weight_transfer_timeout_s; engine 1 is
    replaced, and engine 0, alive with its old weights, is loaded again, not replaced. Either way every engine then
    samples alike, and not as before the sync (the test above holds the transfer equal to the object store). A
    learner that fails on its own (its port taken) with every engine well: its error is raised, nothing is
    replaced, and the next sync works. A learner that fails on its own mid-send (between buckets): its error is
    raised, though the engines it left mid-load exit, and none is replaced in that call."""
    cfg = LearnerConfig(num_threads=1, micro_batch_size=2, num_cpus=0.25, optim=OptimConfig(lr=1e-2))
    learner = LearnerGroup(cfg, tiny_model_path, cfg, PolicyLossConfig(), None, total_steps=3, max_response_tokens=8)
    fleet = RolloutFleet(RolloutConfig(num_engines=2, weight_sync="transfer", weight_transfer_timeout_s=120,
                                       dtype="float32", max_model_len=256, kv_cache_gib=1, num_cpus_per_engine=0.25),
                         tiny_model_path)
    version = {"now": "0"}
    fleet.weights_source = lambda actors: fleet.transfer_weights(learner, version["now"], actors)
    try:
        before = each_engine(fleet)[0]
        learner.run("update", make_batch(seed=1))
        version["now"] = "1"
        ray_cluster.kill(fleet.actors[0], no_restart=True)
        fleet.transfer_weights(learner, "1")
        assert fleet.restarts == 1
        first, second = each_engine(fleet)
        assert first == second != before

        learner.run("update", make_batch(seed=2))
        version["now"] = "2"
        check, survivor = fleet._dead, fleet.actors[0]

        def dies_after_the_check():  # the engine is alive when pinged, dead when the group forms
            dead = check()
            ray_cluster.kill(fleet.actors[1], no_restart=True)
            return dead

        fleet._dead = dies_after_the_check
        # (a short wait for the engine that never joins; 120 s above: a loaded machine's slow rendezvous is no death)
        fleet.cfg.weight_transfer_timeout_s = 10
        fleet.transfer_weights(learner, "2")
        fleet._dead = check
        assert fleet.restarts == 2  # engine 1 only
        assert fleet.actors[0] is survivor  # loaded again in a group of its own, with engine 1's replacement
        now = each_engine(fleet)
        assert now[0] == now[1] and now[0] not in (before, first)

        learner.run("update", make_batch(seed=3))
        endpoint = learner.endpoint
        with socket.socket() as taken:  # bound, not listening: the learner cannot host the group's store there
            taken.bind(("", 0))
            learner.endpoint = lambda: (endpoint()[0], taken.getsockname()[1])
            with pytest.raises(ray.exceptions.RayTaskError):
                fleet.transfer_weights(learner, "3")
            learner.endpoint = endpoint
        assert fleet.restarts == 2 and fleet.actors[0] is survivor
        fleet.cfg.weight_transfer_timeout_s = 120
        fleet.transfer_weights(learner, "3")
        later = each_engine(fleet)
        assert later[0] == later[1] and later[0] != now[0]

        # the learner fails mid-send on its own (after its first bucket, between broadcasts): its error is raised, not
        # an engine's, and nothing is replaced in that call; the engines it left mid-load have exited
        def _fail_after_one_bucket(_learner) -> None:  # in the learner's process: send fails after one bucket
            from rollout import weight_transfer as wt

            real = wt.send

            def send(pg, weights, bucket_bytes):  # the first bucket broadcast as usual, then an error of its own
                names = list(weights)
                first = wt.buckets([v.numel() * v.element_size() for v in weights.values()], bucket_bytes)[0]
                real(pg, {names[i]: weights[names[i]] for i in first}, bucket_bytes)
                raise ValueError("the learner could not read bucket 2")

            wt.send = send

        learner.run("update", make_batch(seed=4))
        fleet.cfg.weight_bucket_mib = 1  # (several buckets)
        ray_cluster.get(learner.actors[0].__ray_call__.remote(_fail_after_one_bucket))
        with pytest.raises(ray.exceptions.RayTaskError, match="the learner could not read bucket 2"):
            fleet.transfer_weights(learner, "4")
        assert fleet.restarts == 2
        assert fleet._dead() == [0, 1]  # (the next sync replaces them, as engine 0 at the start of this test)
    finally:
        fleet.shutdown()
        learner.shutdown()
