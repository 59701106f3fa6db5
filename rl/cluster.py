"""Starting (or joining) the Ray cluster and counting its accelerators: shared by training, evaluation and the
offline preparation steps."""

from __future__ import annotations


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
