"""A fleet of rollout engine actors: shards prompts across engines and broadcasts weights to all of them."""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import Callable

import ray
import torch
from ray.util.placement_group import remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from rl.cluster import engine_gpus, reserve
from rl.config.rollout import ENGINES, RolloutConfig, SamplingConfig
from rl.models.precision import detect
from rollout.base import RolloutEngine, Sample, TransferBroken
from rollout.vllm_engine import cpu_env

def _import(path: str):
    module, name = path.split(":")
    return getattr(__import__(module, fromlist=[name]), name)


@ray.remote(concurrency_groups={"probe": 1})
class RolloutActor:
    """Thin actor around one engine. Its calls run one at a time; `running` answers on a thread of its own. An
    engine that can serve no more (RolloutEngine.is_dead) ends this process: the fleet sees a dead actor, replaces
    it and redoes its shard, as after a killed process."""

    def __init__(self, engine: str, model_path: str, kwargs: dict):
        self.engine: RolloutEngine = _import(ENGINES[engine])(model_path, **kwargs)
        self._running: str | None = None

    def _call(self, method: str, *args):
        try:
            return getattr(self.engine, method)(*args)
        except Exception as e:
            if self.engine.is_dead(e):
                print(f"[rollout] the engine died during {method} ({type(e).__name__}: {e}); this actor exits",
                      file=sys.stderr, flush=True)
                os._exit(1)
            raise

    def generate(self, prompts: list[list[int]], sampling: SamplingConfig, seeds: list[int]) -> list[list[Sample]]:
        self._running = "generate"
        try:
            return self._call("generate", prompts, sampling, seeds)
        finally:
            self._running = None

    @ray.method(concurrency_group="probe")
    def running(self) -> str | None:
        """The engine call in progress now (\"generate\"), or None: answers while a generate runs."""
        return self._running

    def update_weights(self, state_dict: dict[str, torch.Tensor]) -> None:
        self._call("update_weights", state_dict)

    def receive_weights(self, init_info: dict, update_info: dict, version: str) -> None:
        self._call("receive_weights", init_info, update_info, version)

    def engine_core(self) -> str:
        """How the vLLM engine core runs: its client's class (InprocClient: in this process; SyncMPClient: a
        process of its own, the GPU default)."""
        return type(self.engine.llm.llm_engine.engine_core).__name__

    def placement(self) -> tuple[str | None, str]:
        """(this actor's placement group id, its node id): where Ray put it."""
        ctx = ray.get_runtime_context()
        return ctx.get_placement_group_id(), ctx.get_node_id()

    def num_threads(self) -> int:
        """torch's CPU threads in this engine's process (rollout.num_threads, or all cores of the node)."""
        return torch.get_num_threads()

    def ready(self) -> bool:
        return True


class RolloutFleet:
    """Engine actors that share the prompts of a call. An engine that dies (OOM, a lost node, a killed process) is
    replaced, loaded with the current weights, and given its unfinished prompts again; seeds are per prompt, so the
    redone samples are the ones the dead engine would have returned, and none is lost or counted twice."""

    def __init__(self, cfg: RolloutConfig, model_path: str, seed: int = 0, wait: bool = True,
                 learner_gpus: float | None = None, nodes: list[str] | None = None):
        """learner_gpus: a learner rank's GPUs, which the transfer backend needs to know (None: no learner syncs).
        nodes: the Ray node id of each engine, planned (rl/train/placement.py); None: wherever its bundle fits."""
        if cfg.engine not in ENGINES:
            raise ValueError(f"rollout.engine={cfg.engine!r}; choose one of {sorted(ENGINES)}")
        self.cfg, self.model_path = cfg, model_path
        tp = cfg.tensor_parallel_size
        gpus = engine_gpus(cfg)
        if tp > 1 and not gpus:
            raise ValueError(f"rollout.tensor_parallel_size={tp} splits an engine over GPUs and this cluster has "
                             "none: set rollout.tensor_parallel_size=1 (use more rollout.num_engines on CPU)")
        if cfg.weight_sync == "auto":  # what works with vLLM's default engine core where the engines run
            self.weight_sync = "transfer" if gpus and cfg.engine == "vllm" else "object_store"
        else:
            self.weight_sync = cfg.weight_sync
        transfer = self.weight_sync == "transfer"
        self.transport = None
        if transfer:
            from rollout.weight_transfer import choose

            self.transport = choose(cfg.weight_transfer_backend, gpus, learner_gpus)
        if gpus:  # reload_weights through collective_rpc needs the engine core in-process
            env = {} if transfer else {"VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
        else:
            env = cpu_env(cfg.num_threads, cfg.kv_cache_gib, multiprocess=transfer)
        bundle = {"CPU": cfg.num_cpus_per_engine, **({"GPU": gpus} if gpus else {})}
        self.options = dict(num_cpus=cfg.num_cpus_per_engine, num_gpus=gpus, runtime_env={"env_vars": env})
        # (the driver resolves auto once, rl/models/precision.py; a config built in code may still hold it)
        self.kwargs = dict(dtype=detect()[0] if cfg.dtype == "auto" else cfg.dtype)
        if cfg.engine == "vllm":
            self.kwargs.update(
                max_model_len=cfg.max_model_len,
                gpu_memory_utilization=cfg.gpu_memory_utilization,
                enforce_eager=cfg.enforce_eager,
                tensor_parallel_size=tp,
                seed=seed,
                weight_transfer=self.transport.name if transfer else None,
            )
        # loads the current weights into the given engine actors (the trainer points it at the learner): what a
        # replacement engine gets; None: the replacement keeps the weights of model_path
        self.weights_source: Callable[[list], None] | None = None
        self.restarts = 0  # engines replaced so far in this run
        self.closed = False  # shutdown() began: a death is no longer replaced
        self._restarts_this_call = 0  # incidents in the current call (generate or sync), bounded
        self._lock = threading.Lock()  # shutdown vs. a replacement started on the thread that collects ahead
        self.actors: list = []
        # engine i's bundle (its CPUs and all its GPUs, on one node) is bundle i of the fleet's placement group,
        # held for the whole run: a replacement starts in the bundle of the engine it replaces
        self.pg = reserve([dict(bundle) for _ in range(cfg.num_engines)], nodes,
                          what=f"rollout.num_engines={cfg.num_engines} engines of {bundle} each",
                          fix="lower rollout.num_engines, rollout.num_cpus_per_engine or the engines' GPUs, or add nodes")
        try:
            self.actors = [self._start(i) for i in range(cfg.num_engines)]
            if wait:
                self.wait_ready()
        except BaseException:  # an engine that cannot start: none is left running
            self.shutdown()
            raise

    def wait_ready(self) -> None:
        """Until every engine has loaded (RolloutFleet(wait=False) returns while they start)."""
        ray.get([a.ready.remote() for a in self.actors])

    def _start(self, i: int):
        """Engine i, in its bundle."""
        where = PlacementGroupSchedulingStrategy(self.pg, placement_group_bundle_index=i)
        return RolloutActor.options(**self.options, scheduling_strategy=where).remote(self.cfg.engine, self.model_path,
                                                                                      self.kwargs)

    def _replace(self, indices: list[int], error: Exception, load: bool = True) -> list:
        """Engines `indices` are gone (or their state unknown): new ones in their place, started together; one
        incident toward rollout.max_engine_restarts however many engines it takes (one death that breaks a weight
        broadcast takes every engine that was mid-load). load: the replacements get the current weights
        (weights_source); else the caller loads them. Returns the replacements."""
        if self._restarts_this_call >= self.cfg.max_engine_restarts:
            raise RuntimeError(
                f"rollout engine {indices} died and {self._restarts_this_call} replacements in this call died too "
                f"(rollout.max_engine_restarts={self.cfg.max_engine_restarts}); last error: {error}"
            ) from error
        with self._lock:  # (a replacement started here is one shutdown() kills)
            if self.closed:
                raise RuntimeError(f"rollout engine {indices} died while the fleet shuts down: {error}") from error
            self._restarts_this_call += 1
            self.restarts += len(indices)
            for i in indices:
                print(f"[rollout] engine {i} died ({type(error).__name__}); starting a replacement", flush=True)
                ray.kill(self.actors[i], no_restart=True)
                self.actors[i] = self._start(i)
        new = [self.actors[i] for i in indices]
        ray.get([a.ready.remote() for a in new])
        if load and self.weights_source is not None:  # (a failed load replaces them again, within the bound)
            self.weights_source(new)
        return new

    def _on_all(self, method: str, shards: list[tuple], on_result: Callable[[int, object], None] | None = None) -> list:
        """actor i runs `method(*shards[i])` (None: nothing for it); dead engines are replaced and their shard redone.
        `on_result(i, result)` is called as each shard finishes, in the order they finish."""
        self._restarts_this_call = 0
        futures = {i: getattr(self.actors[i], method).remote(*args) for i, args in enumerate(shards) if args is not None}
        results = {}
        while futures:
            (done,), _ = ray.wait(list(futures.values()), num_returns=1)
            i = next(i for i, f in futures.items() if f == done)
            try:
                results[i] = ray.get(done)
            except ray.exceptions.RayActorError as e:
                self._replace([i], e)
                futures[i] = getattr(self.actors[i], method).remote(*shards[i])
                continue
            del futures[i]
            if on_result is not None:
                on_result(i, results[i])
        return [results[i] for i in sorted(results)]

    def generate(self, prompts: list[list[int]], sampling: SamplingConfig, seeds: list[int],
                 on_groups: Callable[[int, list[list[Sample]]], None] | None = None) -> list[list[Sample]]:
        """Contiguous shards, one per engine; results come back in prompt order, one group per prompt.
        `on_groups(first_prompt_index, groups)` sees each engine's groups as soon as that engine is done (the trainer
        starts scoring them while the other engines still generate); it must not block."""
        k = len(self.actors)
        bounds = [round(i * len(prompts) / k) for i in range(k + 1)]
        shards = [(prompts[lo:hi], sampling, seeds[lo:hi]) if hi > lo else None for lo, hi in zip(bounds, bounds[1:])]

        def shard_done(i: int, groups: list[list[Sample]]) -> None:
            self._check_shard(groups, bounds[i + 1] - bounds[i])
            on_groups(bounds[i], groups)

        groups = [g for shard in self._on_all("generate", shards, shard_done if on_groups else None) for g in shard]
        self._check_shard(groups, len(prompts))
        return groups

    @staticmethod
    def _check_shard(groups: list, expected: int) -> None:
        if len(groups) != expected:  # cannot happen unless an engine breaks its contract; never train on it
            raise RuntimeError(f"the rollout fleet returned {len(groups)} groups for {expected} prompts")

    def update_weights(self, state_dict_ref: "ray.ObjectRef | dict[str, torch.Tensor]") -> None:
        """Every engine loads the same weights; pass an ObjectRef so the tensors cross the object store once."""
        if not isinstance(state_dict_ref, ray.ObjectRef):
            state_dict_ref = ray.put(state_dict_ref)
        self._on_all("update_weights", [(state_dict_ref,)] * len(self.actors))

    def sync_weights(self, learner, version: str, actors: list | None = None) -> None:
        """The learner's weights (after step `version`) into every engine, or into `actors` (replacements), as
        rollout.weight_sync says. `learner`: rl.train.learner_group.LearnerGroup."""
        if self.weight_sync == "transfer":
            self.transfer_weights(learner, version, actors)
        elif actors is None:
            self.update_weights(learner.export_weights(self.cfg.dtype))
        else:
            ref = learner.export_weights(self.cfg.dtype)
            ray.get([e.update_weights.remote(ref) for e in actors])

    def transfer_weights(self, learner, version: str, actors: list | None = None) -> None:
        """The learner's weights into the engines (all, or `actors`) through vLLM's weight-transfer API: one group
        of the learner's rank 0 and the engines for this sync, over rollout.weight_transfer_backend
        (rollout/weight_transfer.py), so a replaced engine needs nothing special. `learner`:
        rl.train.learner_group.LearnerGroup. What follows holds for gloo, whose waits give up; over nccl a sync that
        does not finish within the timeout stops the run.

        Failures, by who failed:
        - an engine found dead before the group forms: replaced first, and the replacement joins the group;
        - an engine that dies during the sync (its actor is gone; one that was mid-load exits on purpose, its
          weights half new) is replaced, and the replacements are loaded in a group of their own; a death breaks
          the broadcast for the others, and those still alive (their receive gave up before loading anything: the
          group never formed) are loaded again with them, not replaced;
        - the learner's failure with no engine dead is the learner's own, and is raised (so is the learner's death);
          so is one outside the broadcast itself (not TransferBroken: reading or casting its weights, say), though
          the engines it left mid-load exit: the next sync finds them dead and replaces them.
        """
        if actors is None:  # a sync of the whole fleet (not a replacement's load)
            self._restarts_this_call = 0
            dead = self._dead()
            if dead:
                self._replace(dead, RuntimeError("found dead before the weight sync"), load=False)
            actors = list(self.actors)
        address, port = learner.endpoint()
        tp = self.cfg.tensor_parallel_size  # (every worker of an engine joins: it loads its shard of the whole)
        world = 1 + len(actors) * tp
        t, bucket = self.transport, self.cfg.weight_bucket_mib << 20
        meta, timeout = learner.weight_metadata(self.cfg.dtype), self.cfg.weight_transfer_timeout_s
        receiving = [a.receive_weights.remote(t.engine_init(address, port, 1 + i * tp, world, timeout, bucket),
                                              t.update_info(meta, bucket), version) for i, a in enumerate(actors)]
        sending = learner.broadcast(address, port, world, self.cfg.dtype, bucket, timeout, t.name)
        if not t.gives_up:  # (NCCL waits forever for a peer that died: the whole sync is bounded here instead)
            self._bounded(receiving + sending, timeout)
        died, unloaded = [], []  # (actor, error): its actor is gone / it lives, its receive raised
        for actor, ref in zip(actors, receiving):
            try:
                ray.get(ref)
            except ray.exceptions.RayActorError as e:
                died.append((actor, e))
            except ray.exceptions.RayError as e:
                unloaded.append((actor, e))
        try:
            ray.get(sending)
            broken = False
        except ray.exceptions.RayError as e:
            if isinstance(e, ray.exceptions.RayActorError) or not died or not isinstance(e, TransferBroken):
                raise
            broken = True  # (by the engines that died)
        if broken:
            again = [a for a, _ in unloaded]  # alive with their old weights: loaded again
        else:  # the learner's broadcast completed, yet these engines raised: their weights are unknown
            again, died = [], died + unloaded
        indices = [i for i, a in enumerate(self.actors) if any(a is d for d, _ in died)]  # (not replaced meanwhile)
        new = self._replace(indices, died[0][1], load=False) if indices else []
        again = [a for a in again if any(a is b for b in self.actors)]
        if new or again:
            self.transfer_weights(learner, version, new + again)

    def _bounded(self, ends: list, timeout: float) -> None:
        """A sync over a transport that cannot give up (nccl), watched end by end: the first end that fails, or the
        timeout, stops the run with its error (the ends still waiting in the group cannot be freed, so no engine
        is replaced and no sync retried)."""
        name, stops = self.transport.name, ("so the run stops here (its last checkpoint is intact). "
                                            "rollout.weight_transfer_backend=gloo replaces such engines and goes on")
        deadline, pending = time.monotonic() + timeout, list(ends)
        while pending:
            done, pending = ray.wait(pending, num_returns=1, timeout=max(0.0, deadline - time.monotonic()))
            if not done:
                raise RuntimeError(f"the weight sync over {name} did not finish in rollout.weight_transfer_timeout_s="
                                   f"{timeout} s ({len(pending)} of {len(ends)} ends still waiting); {name} cannot "
                                   f"give up on a peer that died mid-broadcast, {stops}")
            try:
                ray.get(done[0])
            except Exception as e:
                raise RuntimeError(f"the weight sync over {name} failed at one end ({type(e).__name__}: {e}); the "
                                   f"other ends cannot leave the group, {stops}") from e

    def _dead(self) -> list[int]:
        """The engines that do not answer (their actor has died)."""
        pings = [a.ready.remote() for a in self.actors]
        dead = []
        for i, ref in enumerate(pings):
            try:
                ray.get(ref)
            except ray.exceptions.RayActorError:
                dead.append(i)
        return dead

    def shutdown(self) -> None:
        with self._lock:
            self.closed = True  # (a collect still running on another thread then ends with an error, not a new engine)
            for a in self.actors:
                ray.kill(a)
            self.actors = []
            if self.pg is not None:
                remove_placement_group(self.pg)
                self.pg = None
