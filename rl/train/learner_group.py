"""The learner group: learner.num_ranks Ray actors on one placement group, joined in one torch.distributed process
group, each holding one Learner rank (an FSDP2 shard: rl/train/distributed.py). One rank is the same group of one.

The driver calls every rank with the same arguments (the batch crosses the object store once) and reads rank 0's
answer: the ranks agree on everything they return (metrics are summed over ranks inside the learner), and rank 0
holds the gathered weights.
"""

from __future__ import annotations

import threading

import ray
from ray.util.placement_group import remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from rl.cluster import gpus_per_actor, reserve as reserve_bundles


class LearnerRank:
    """One rank: joins the group, then builds its Learner; `call` runs a Learner method."""

    _store = None  # rank 0's rendezvous store (`listen`), on the other ranks and in a group of one None

    def address(self) -> tuple[str, int]:
        """This node's address and a port free now: where a weight-transfer group meets (vLLM's API takes a port
        number and opens it itself)."""
        import socket

        with socket.socket() as s:
            s.bind(("", 0))
            return ray.util.get_node_ip_address(), s.getsockname()[1]

    def listen(self, world_size: int) -> tuple[str, int]:
        """Rank 0: this node's address and the port of the group's rendezvous store, held open until `start`."""
        from rl.train.distributed import listen

        host = ray.util.get_node_ip_address()
        if world_size <= 1:  # a group of one has no process group
            return host, 0
        self._store = listen(host, world_size)
        return host, self._store.port

    def start(self, rank: int, world_size: int, address: str, port: int, *args, **kwargs) -> None:
        from rl.train.distributed import init_group
        from rl.train.learner import Learner

        init_group(rank, world_size, address, port, store=self._store)
        self.learner = Learner(*args, **kwargs)

    def call(self, method: str, *args, **kwargs):
        return getattr(self.learner, method)(*args, **kwargs)


def reserve(cfg, nodes: list[str] | None = None):
    """The learner's placement group (learner.num_ranks bundles, packed onto as few nodes as possible, rank i's on
    node `nodes[i]` when planned), reserved: before the engines start, so on a GPU cluster the learner's ranks take
    their GPUs first (rl/train/placement.py)."""
    n, gpus = cfg.num_ranks, gpus_per_actor(cfg.num_gpus)
    bundle = {"CPU": cfg.num_cpus, **({"GPU": gpus} if gpus else {})}
    return reserve_bundles([dict(bundle) for _ in range(n)], nodes, what=f"learner.num_ranks={n} ranks of {bundle} each",
                           fix="lower learner.num_ranks, learner.num_cpus or learner.num_gpus, or add nodes")


class LearnerGroup:
    """learner.num_ranks LearnerRank actors, packed onto as few nodes as the placement group allows."""

    def __init__(self, cfg, *args, placement=None, **kwargs):
        """placement: the group's placement group, already reserved (`reserve`); None: reserved now."""
        n, gpus = cfg.num_ranks, gpus_per_actor(cfg.num_gpus)
        self.pg = placement if placement is not None else reserve(cfg)
        self.actors = []
        try:
            self._start(cfg, n, gpus, *args, **kwargs)
        except BaseException:  # a rank that cannot start (bad path, out of memory): nothing is left behind
            self.shutdown()
            raise
        self._pending: list = []  # the other ranks' part of the last export (they return None)
        self._lock = threading.Lock()

    def _start(self, cfg, n: int, gpus: float, *args, **kwargs) -> None:
        self.actors = [
            ray.remote(LearnerRank).options(
                num_cpus=cfg.num_cpus, num_gpus=gpus,
                scheduling_strategy=PlacementGroupSchedulingStrategy(self.pg, placement_group_bundle_index=i),
            ).remote()
            for i in range(n)
        ]
        address, port = ray.get(self.actors[0].listen.remote(n))
        ray.get([a.start.remote(i, n, address, port, *args, **kwargs) for i, a in enumerate(self.actors)])

    def submit(self, method: str, *args, **kwargs) -> list["ray.ObjectRef"]:
        """The call on every rank, in the same order on each (their collectives pair up); one ObjectRef per rank.
        Thread-safe: two threads' calls reach every rank in one order."""
        args = tuple(ray.put(a) if _large(a) else a for a in args)
        with self._lock:
            self._pending, pending = [], self._pending
            ray.get(pending)  # a failed rank's error is raised here, not lost
            return [a.call.remote(method, *args, **kwargs) for a in self.actors]

    def run(self, method: str, *args, **kwargs):
        """Rank 0's answer to the call on every rank, waited for."""
        return ray.get(self.submit(method, *args, **kwargs))[0]

    def export_weights(self, dtype: str | None) -> "ray.ObjectRef":
        """An ObjectRef of the whole state dict (from rank 0), for the engines to pull."""
        refs = self.submit("export_weights", dtype)
        with self._lock:
            self._pending += refs[1:]
        return refs[0]

    def endpoint(self) -> tuple[str, int]:
        """Rank 0's address and a free port there: where a weight-transfer group meets."""
        return ray.get(self.actors[0].address.remote())

    def weight_metadata(self, dtype: str | None) -> dict:
        """Names, dtype names and shapes of the exported weights (rollout/weight_transfer.py metadata)."""
        if getattr(self, "_metadata", (None, None))[0] != dtype:
            self._metadata = (dtype, self.run("weight_metadata", dtype))
        return self._metadata[1]

    def broadcast(self, address: str, port: int, world_size: int, dtype: str | None, bucket_bytes: int,
                  timeout_s: float, backend: str = "gloo") -> list["ray.ObjectRef"]:
        """Every rank gathers the weights; rank 0 joins the transfer group and streams them over `backend`."""
        return self.submit("broadcast_weights", address, port, world_size, dtype, bucket_bytes, timeout_s, backend)

    def shutdown(self) -> None:
        for a in self.actors:
            ray.kill(a)
        remove_placement_group(self.pg)


def _large(x) -> bool:
    """A batch goes into the object store once for all ranks."""
    from rl.core.batch import Batch

    return isinstance(x, Batch)
