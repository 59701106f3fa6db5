"""A fleet of rollout engine actors: shards prompts across engines and broadcasts weights to all of them."""

from __future__ import annotations

from dataclasses import dataclass, field

import ray
import torch

from rollout.base import RolloutEngine, Sample, SamplingConfig
from rollout.vllm_engine import cpu_env

ENGINES = {"vllm": "rollout.vllm_engine:VLLMEngine", "hf": "rollout.hf_engine:HFEngine"}


@dataclass
class RolloutConfig:
    engine: str = "vllm"  # vllm | hf (fallback)
    num_engines: int = 1
    dtype: str = "bfloat16"  # engine weights; the learner keeps its own dtype
    max_model_len: int = 1024
    gpu_memory_utilization: float = 0.5
    enforce_eager: bool = True
    kv_cache_gib: int = 2  # CPU only
    num_cpus_per_engine: float = 0.5  # Ray scheduling; threads are set by num_threads
    num_gpus_per_engine: float | None = None  # None: 1 when the cluster has GPUs, else 0
    num_threads: int | None = None  # CPU threads of each engine; None: all cores of its node
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    eval_sampling: SamplingConfig = field(default_factory=lambda: SamplingConfig(n=1, temperature=0.0, max_tokens=256))


def _import(path: str):
    module, name = path.split(":")
    return getattr(__import__(module, fromlist=[name]), name)


@ray.remote
class RolloutActor:
    """Thin actor around one engine."""

    def __init__(self, engine: str, model_path: str, kwargs: dict):
        self.engine: RolloutEngine = _import(ENGINES[engine])(model_path, **kwargs)

    def generate(self, prompts: list[list[int]], sampling: SamplingConfig, seeds: list[int]) -> list[list[Sample]]:
        return self.engine.generate(prompts, sampling, seeds)

    def update_weights(self, state_dict: dict[str, torch.Tensor]) -> None:
        self.engine.update_weights(state_dict)

    def ready(self) -> bool:
        return True


class RolloutFleet:
    def __init__(self, cfg: RolloutConfig, model_path: str, seed: int = 0):
        if cfg.engine not in ENGINES:
            raise ValueError(f"rollout.engine={cfg.engine!r}; choose one of {sorted(ENGINES)}")
        gpus = cfg.num_gpus_per_engine
        if gpus is None:
            gpus = 1 if ray.cluster_resources().get("GPU", 0) > 0 else 0
        env = {} if gpus else cpu_env(cfg.num_threads, cfg.kv_cache_gib)
        kwargs = dict(dtype=cfg.dtype)
        if cfg.engine == "vllm":
            kwargs.update(
                max_model_len=cfg.max_model_len,
                gpu_memory_utilization=cfg.gpu_memory_utilization,
                enforce_eager=cfg.enforce_eager,
                seed=seed,
            )
        self.actors = [
            RolloutActor.options(num_cpus=cfg.num_cpus_per_engine, num_gpus=gpus, runtime_env={"env_vars": env}).remote(
                cfg.engine, model_path, kwargs
            )
            for _ in range(cfg.num_engines)
        ]
        ray.get([a.ready.remote() for a in self.actors])

    def generate(self, prompts: list[list[int]], sampling: SamplingConfig, seeds: list[int]) -> list[list[Sample]]:
        """Contiguous shards, one per engine; results come back in prompt order."""
        k = len(self.actors)
        bounds = [round(i * len(prompts) / k) for i in range(k + 1)]
        futures = [
            actor.generate.remote(prompts[lo:hi], sampling, seeds[lo:hi])
            for actor, lo, hi in zip(self.actors, bounds, bounds[1:])
            if hi > lo
        ]
        return [group for shard in ray.get(futures) for group in shard]

    def update_weights(self, state_dict_ref: "ray.ObjectRef | dict[str, torch.Tensor]") -> None:
        """Every engine loads the same weights; pass an ObjectRef so the tensors cross the object store once."""
        if not isinstance(state_dict_ref, ray.ObjectRef):
            state_dict_ref = ray.put(state_dict_ref)
        ray.get([a.update_weights.remote(state_dict_ref) for a in self.actors])

    def shutdown(self) -> None:
        for a in self.actors:
            ray.kill(a)
        self.actors = []
