"""Where the learner's ranks and the rollout engines go on a GPU cluster, planned before any actor starts.

Disaggregated (the mode built): the learner's ranks take GPUs first, packed onto the fewest nodes in node order
(its FSDP2 collectives stay inside a node where they can), then each engine takes `tensor_parallel_size` GPUs of one
node (vLLM's tensor parallelism runs over a node's NVLink; an engine never spans nodes), first fit in node order.
Ray then places the actors as planned: the learner and the engines have a placement group each, whose bundle i (rank
i, engine i) is pinned to its planned node (rl/cluster.py `reserve`), the learner's reserved first; an engine's
bundle holds all its GPUs, so its tensor-parallel workers share its node. A colocated mode (learner and engines on the same GPUs, vLLM
sleeping between phases) is not built.

Pure: node GPU counts in, the plan out; no Ray, so the planning is unit-tested for any cluster shape.
"""

from __future__ import annotations

from dataclasses import dataclass


class PlacementError(ValueError):
    """The configured learner and engines do not fit the cluster's GPUs; the message names the keys to change."""


@dataclass(frozen=True)
class Slot:
    node: int
    gpus: tuple[int, ...]  # the node's GPU indices


@dataclass(frozen=True)
class Plan:
    learner: tuple[Slot, ...]  # one per rank
    engines: tuple[Slot, ...]  # one per engine, its tensor-parallel GPUs
    node_ids: tuple[str, ...] = ()  # Ray's id of each node index (rl/cluster.py plan_gpus); () in a pure plan

    def nodes(self, slots: tuple[Slot, ...]) -> list[str]:
        """The Ray node id of each slot (self.learner or self.engines): where its placement bundle is pinned."""
        return [self.node_ids[s.node] for s in slots]

    def describe(self) -> str:
        """One line per node: which GPUs the learner's ranks and each engine hold."""
        nodes = sorted({s.node for s in self.learner + self.engines})
        lines = []
        for n in nodes:
            parts = [f"learner rank {r}: {list(s.gpus)}" for r, s in enumerate(self.learner) if s.node == n]
            parts += [f"engine {e}: {list(s.gpus)}" for e, s in enumerate(self.engines) if s.node == n]
            lines.append(f"node {n}: " + ", ".join(parts))
        return "\n".join(lines)


def plan_placement(node_gpus: list[int], learner_ranks: int, num_engines: int, tensor_parallel_size: int = 1,
                   learner_gpus_per_rank: int = 1, engine_key: str = "rollout.tensor_parallel_size") -> Plan:
    """The disaggregated plan for nodes with `node_gpus[i]` GPUs each; PlacementError when it does not fit.
    `tensor_parallel_size`: an engine's GPUs, set by `engine_key` (rollout.num_gpus_per_engine when that is set)."""
    if tensor_parallel_size < 1 or learner_gpus_per_rank < 1:
        raise PlacementError(f"{engine_key} and learner.num_gpus must be >= 1 on a GPU cluster")
    widest = max(node_gpus, default=0)
    if tensor_parallel_size > widest:
        raise PlacementError(
            f"{engine_key}={tensor_parallel_size} is more GPUs than any node has ({widest}): an "
            f"engine's GPUs stay inside one node; lower it to at most {widest}")
    free = [list(range(g)) for g in node_gpus]
    learner = []
    for rank in range(learner_ranks):
        node = next((n for n, f in enumerate(free) if len(f) >= learner_gpus_per_rank), None)
        if node is None:
            raise PlacementError(
                f"learner.num_ranks={learner_ranks} ranks of {learner_gpus_per_rank} GPU(s) need "
                f"{learner_ranks * learner_gpus_per_rank} GPUs; the cluster has {sum(node_gpus)} ({node_gpus} per "
                "node): lower learner.num_ranks or add nodes")
        learner.append(Slot(node, tuple(free[node][:learner_gpus_per_rank])))
        del free[node][:learner_gpus_per_rank]
    engines = []
    for e in range(num_engines):
        node = next((n for n, f in enumerate(free) if len(f) >= tensor_parallel_size), None)
        if node is None:
            fits = len(engines)
            fewer = f"lower rollout.num_engines to {fits}, " if fits else "lower "
            raise PlacementError(
                f"rollout.num_engines={num_engines} engines of {engine_key}={tensor_parallel_size} "
                f"GPUs do not fit: after the learner's {learner_ranks * learner_gpus_per_rank} GPUs the nodes have "
                f"{[len(f) + sum(len(s.gpus) for s in engines if s.node == n) for n, f in enumerate(free)]} free, "
                f"room for {fits} such engines (each inside one node); {fewer}{engine_key} "
                "or learner.num_ranks, or add nodes")
        engines.append(Slot(node, tuple(free[node][:tensor_parallel_size])))
        del free[node][:tensor_parallel_size]
    return Plan(tuple(learner), tuple(engines))
