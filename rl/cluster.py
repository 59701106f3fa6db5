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


def node_gpus() -> list[int]:
    """The GPU count of each live node of the cluster, in Ray's node order."""
    import ray

    return [int(n["Resources"].get("GPU", 0)) for n in ray.nodes() if n.get("Alive")]


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
    """The placement plan (rl/train/placement.py) of the run's learner ranks and engines on this cluster's GPUs;
    PlacementError, naming the keys, when they do not fit. None on a CPU cluster, or when an actor asks for a
    fraction of a GPU (GPUs shared on purpose: Ray places those)."""
    from rl.train.placement import plan_placement

    learner, engine = gpus_per_actor(cfg.learner.num_gpus), engine_gpus(cfg.rollout)
    if learner != int(learner) or engine != int(engine) or not learner or not engine:
        return None
    key = "rollout.num_gpus_per_engine" if cfg.rollout.num_gpus_per_engine is not None else "rollout.tensor_parallel_size"
    return plan_placement(node_gpus(), cfg.learner.num_ranks, cfg.rollout.num_engines,
                          tensor_parallel_size=int(engine), learner_gpus_per_rank=int(learner), engine_key=key)
