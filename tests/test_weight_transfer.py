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
import torch

from rl.config.algorithm import PolicyLossConfig
from rl.config.learner import LearnerConfig, OptimConfig
from rl.config.rollout import RolloutConfig, SamplingConfig
from rl.train.learner_group import LearnerGroup
from rollout.fleet import RolloutFleet
from rollout.weight_transfer import NCCL_BUFFERS, TRANSPORTS, _engine_class, buckets, choose
from tests.test_learner import make_batch

pytestmark = pytest.mark.integration

PROMPTS = [[1, 504, 3458, 314], [1, 2030, 314, 216, 34, 1232, 216, 35], [1, 28, 29, 30]]
GREEDY = SamplingConfig(n=1, temperature=0.0, max_tokens=12)


def tokens(fleet: RolloutFleet) -> list[list[int]]:
    return [g[0].response_ids for g in fleet.generate(PROMPTS, GREEDY, seeds=[0, 1, 2])]


def test_buckets_split_at_the_limit():
    assert buckets([4, 4, 4, 10, 1], 8) == [[0, 1], [2], [3], [4]]
    assert buckets([], 8) == []


def test_each_backend_s_messages_are_what_its_vllm_engine_parses():
    """The init and update info the fleet builds for each backend are accepted by the engine class vLLM runs for it
    (our gloo engine; vLLM's own NCCLWeightTransferEngine), and nccl's packing geometry is the learner's."""
    from vllm.distributed.weight_transfer.nccl_engine import NCCLWeightTransferEngine

    meta = {"names": ["a", "b"], "dtype_names": ["bfloat16", "float32"], "shapes": [[2, 3], [4]]}
    engines = {"gloo": _engine_class(), "nccl": NCCLWeightTransferEngine}
    assert set(engines) == set(TRANSPORTS)
    for name, t in TRANSPORTS.items():
        cls = engines[name]
        init = cls.init_info_cls(**t.engine_init("10.0.0.1", 29500, 3, 5, 60.0, 1 << 20))
        assert (init.master_address, init.master_port, init.rank_offset, init.world_size) == ("10.0.0.1", 29500, 3, 5)
        update = cls.update_info_cls(**t.update_info(meta, 1 << 20))
        assert (update.names, update.dtype_names, update.shapes) == (meta["names"], meta["dtype_names"],
                                                                     meta["shapes"])
    nccl = NCCLWeightTransferEngine.init_info_cls(**TRANSPORTS["nccl"].engine_init("h", 1, 1, 2, 60.0, 1 << 20))
    assert (nccl.packed, nccl.packed_buffer_size_bytes, nccl.packed_num_buffers) == (True, 1 << 20, NCCL_BUFFERS)
    with pytest.raises(TypeError):  # (what the check above guards: an update key the engine does not know)
        NCCLWeightTransferEngine.update_info_cls(**TRANSPORTS["gloo"].update_info(meta, 1 << 20))


def test_the_backend_is_nccl_only_between_whole_gpus():
    cases = ((0, 0), (1, 0), (0, 1), (1, 1), (0.5, 1), (1, 0.5), (2, 1), (1, None), (0.5, None))
    assert [choose("auto", e, l).name for e, l in cases] == [
        "gloo", "gloo", "gloo", "nccl", "gloo", "gloo", "nccl", "nccl", "gloo"]  # (None: no learner, as in eval)
    assert choose("gloo", 1, 1).name == "gloo" and choose("nccl", 1, None).name == "nccl"
    for engines, learner, who in ((0, 1, "engines"), (1, 0, "learner"), (0.5, 1, "engines"), (1, 0.5, "learner")):
        with pytest.raises(ValueError, match=f"{who} ha.* less than a whole GPU.*rollout.weight_transfer_backend=gloo"):
            choose("nccl", engines, learner)


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

        # rank 0 fails while gathering (an out-of-memory in a cast, say) after the first parameter: its error is
        # raised, and it still runs the gathers rank 1 is waiting in, so the ranks stay in step (rank 1 would wait
        # out the process group's timeout in its next all-gather otherwise): the next update and export work
        def _fail_after_one_gather(_rank) -> None:  # in rank 0's process, once
            from rl.train.learner import Learner

            real = Learner._gathered

            def gathered(self, weights, cast, done=None):
                stream = real(self, weights, cast, done)
                yield next(stream)
                Learner._gathered = real
                raise MemoryError("rank 0 could not cast parameter 2")

            Learner._gathered = gathered

        ray_cluster.get(learner.actors[0].__ray_call__.remote(_fail_after_one_gather))
        with pytest.raises(ray.exceptions.RayTaskError, match="rank 0 could not cast parameter 2"):
            transfer.transfer_weights(learner, version="3")
        learner.run("update", make_batch(seed=3))
        assert list(ray_cluster.get(learner.export_weights("float32"))) == learner.weight_metadata("float32")["names"]
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

            def send(pg, weights, meta, bucket_bytes):  # the first bucket broadcast as usual, then an error of its own
                first = wt.buckets(wt.sizes(meta), bucket_bytes)[0]
                stream = iter(weights)
                real(pg, [next(stream) for _ in first], {k: [v[i] for i in first] for k, v in meta.items()},
                     bucket_bytes)
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


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="vLLM's nccl backend needs 2 GPUs (a learner and an engine)")
def test_nccl_transfer_from_the_learner_s_gpu_into_an_engine_s(ray_cluster, tiny_model_path):
    """On a GPU node (never run here: no GPU with vLLM): a learner on one GPU streams its weights over vLLM's nccl
    backend into an engine on another; the engine then samples otherwise, and a fresh learner's sync (the
    original weights) restores the engine's first samples exactly."""
    cfg = LearnerConfig(micro_batch_size=2, num_gpus=1, optim=OptimConfig(lr=1e-2))
    fleet = RolloutFleet(RolloutConfig(num_engines=1, weight_sync="transfer", weight_transfer_backend="nccl",
                                       dtype="float32", max_model_len=256, gpu_memory_utilization=0.3),
                         tiny_model_path, learner_gpus=1)
    learner = LearnerGroup(cfg, tiny_model_path, cfg, PolicyLossConfig(), None, total_steps=2, max_response_tokens=8)
    try:
        assert fleet.transport.name == "nccl"
        before = tokens(fleet)
        learner.run("update", make_batch(seed=1))
        fleet.transfer_weights(learner, "1")
        assert tokens(fleet) != before
        learner.shutdown()
        learner = LearnerGroup(cfg, tiny_model_path, cfg, PolicyLossConfig(), None, total_steps=2,
                               max_response_tokens=8)
        fleet.transfer_weights(learner, "0")
        assert tokens(fleet) == before
    finally:
        fleet.shutdown()
        learner.shutdown()
