"""Starting (or joining) the Ray cluster and counting its accelerators: shared by training, evaluation and the
offline preparation steps."""

from __future__ import annotations

import sys


def ray_init_kwargs(rc) -> dict:
    """ray.init arguments: the dashboard is off unless asked for, and then listens on ray.dashboard_host (loopback)."""
    return dict(
        address=rc.address,
        num_cpus=rc.num_cpus if rc.address is None else None,
        include_dashboard=rc.dashboard,
        dashboard_host=rc.dashboard_host,
        logging_level="WARNING",
        log_to_driver=True,
    )


def start_ray(rc) -> None:
    """ray.init with ray_init_kwargs, unless this process already joined a cluster."""
    import ray

    if not ray.is_initialized():
        ray.init(**ray_init_kwargs(rc))


def gpus_per_actor(asked: float | None) -> float:
    """An actor's GPU share: the configured one, or (None) 1 when the cluster has GPUs, else 0."""
    import ray

    if asked is not None:
        return asked
    return 1 if ray.cluster_resources().get("GPU", 0) > 0 else 0


def engine_gpus(rc) -> float:
    """A rollout engine's GPUs (rollout config `rc`): rollout.num_gpus_per_engine, or (None) the
    tensor_parallel_size when the cluster has GPUs, else 0."""
    return gpus_per_actor(rc.num_gpus_per_engine) * (rc.tensor_parallel_size if rc.num_gpus_per_engine is None else 1)


def node_gpus() -> list[tuple[str, int]]:
    """(Ray node id, GPUs free now) of each live node, in Ray's node order. Free: held by no actor or placement group,
    another job's on a shared cluster included (Ray has no public per-node reading of that; without it, the total)."""
    import ray

    try:
        from ray._private.state import available_resources_per_node

        free = available_resources_per_node()
    except (ImportError, AttributeError):  # (another Ray: plan on the totals, a busy GPU then waits in reserve)
        free = None
    return [(n["NodeID"], int((free.get(n["NodeID"], {}) if free is not None else n["Resources"]).get("GPU", 0)))
            for n in ray.nodes() if n.get("Alive")]


PLACEMENT_TIMEOUT_S = 120
NODE_LABEL = "ray.io/node-id"  # every Ray node carries its id as this label


def reserve(bundles: list[dict], nodes: list[str] | None, what: str, fix: str):
    """A placement group of `bundles` (PACK: onto as few nodes as they fit), bundle i on Ray node `nodes[i]` when
    given (the placement plan's: rl/train/placement.py), reserved now. Its actors then start in their bundles
    (PlacementGroupSchedulingStrategy), a replacement in the bundle of the actor it replaces. RuntimeError naming
    `what` and the keys in `fix` when the cluster cannot place it within PLACEMENT_TIMEOUT_S."""
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group

    labels = [{NODE_LABEL: n} for n in nodes] if nodes is not None else None
    pg = placement_group(bundles, strategy="PACK", bundle_label_selector=labels)
    ready, _ = ray.wait([pg.ready()], timeout=PLACEMENT_TIMEOUT_S)
    if not ready:
        remove_placement_group(pg)
        where = " on the planned nodes" if nodes is not None else ""
        raise RuntimeError(f"the cluster cannot place {what}{where} within {PLACEMENT_TIMEOUT_S} s (it has "
                           f"{ray.available_resources()} free): {fix}")
    return pg


def check_cpus(cfg, reward_cpus: dict[str, float]) -> None:
    """The CPUs the run's actors ask Ray for (learner ranks, engines, class-based rewards: `reward_cpus`, {label:
    CPUs}) against the cluster's. Ray would leave an actor that finds no CPU waiting forever; on a cluster this process
    started (one machine) such a run is refused here, naming the keys, before any actor starts. A joined cluster
    (ray.address) may grow with an autoscaler: there it is one warning line."""
    import ray

    learner, r = cfg.learner, cfg.rollout
    parts = {f"learner.num_ranks={learner.num_ranks} x learner.num_cpus={learner.num_cpus}":
             learner.num_ranks * learner.num_cpus,
             f"rollout.num_engines={r.num_engines} x rollout.num_cpus_per_engine={r.num_cpus_per_engine}":
             r.num_engines * r.num_cpus_per_engine,
             **{f"reward {label!r}: its actor.replicas x actor.num_cpus": c for label, c in reward_cpus.items() if c}}
    need, have = sum(parts.values()), ray.cluster_resources().get("CPU", 0.0)
    if need <= have + 1e-9:
        return
    msg = (f"the run's actors ask Ray for {need:g} CPUs and this cluster has {have:g} ("
           + "; ".join(f"{k}: {v:g}" for k, v in parts.items())
           + "). Lower those keys (a fraction is fine: Ray's CPU count only schedules actors; rollout.num_threads sets "
           "an engine's threads), or set ray.num_cpus")
    if cfg.ray.address is None:
        raise ValueError(msg)
    print(f"[cluster] warning: {msg}; waiting for the cluster to grow", file=sys.stderr, flush=True)


def plan_gpus(cfg):
    """The placement plan (rl/train/placement.py) of the run's learner ranks and engines on the GPUs this cluster has
    free, with the Ray id of each planned node; PlacementError, naming the keys, when they do not fit. None on a CPU
    cluster, or when an actor asks for a fraction of a GPU (GPUs shared on purpose: Ray places those)."""
    from dataclasses import replace

    from rl.train.placement import plan_placement

    learner, engine = gpus_per_actor(cfg.learner.num_gpus), engine_gpus(cfg.rollout)
    if learner != int(learner) or engine != int(engine) or not learner or not engine:
        return None
    key = "rollout.num_gpus_per_engine" if cfg.rollout.num_gpus_per_engine is not None else "rollout.tensor_parallel_size"
    nodes = node_gpus()
    plan = plan_placement([g for _, g in nodes], cfg.learner.num_ranks, cfg.rollout.num_engines,
                          tensor_parallel_size=int(engine), learner_gpus_per_rank=int(learner), engine_key=key)
    return replace(plan, node_ids=tuple(i for i, _ in nodes))
