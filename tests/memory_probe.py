"""Measure the learner's peak memory on CPU for one config, against rl/models/memory.py's estimate.

    python -m tests.memory_probe MODEL_FOLDER key=value ...   # prints one JSON line: estimate and measured, bytes

Run in a process of its own (its peak RSS is the learner's): the learner class directly (no Ray, no vLLM), two updates
on a batch of the longest rows the config allows (data.max_prompt_tokens + rollout.sampling.max_tokens tokens each,
learner.micro_batch_size of them a micro-batch), so the estimate's worst case is what runs. Measured = peak RSS minus
the RSS before the learner was built (the libraries and the batch are not the learner's).
"""

from __future__ import annotations

import json
import resource
import sys


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def measure(model: str, overrides: list[str]) -> dict:
    import torch

    from rl.config import load_config
    from rl.core.batch import Batch
    from rl.models.memory import Shape, learner_estimate, load_model_config
    from rl.train.learner import Learner

    cfg = load_config(None, [f"model.path={model}", *overrides])
    prompt, response = cfg.data.max_prompt_tokens, cfg.rollout.sampling.max_tokens
    rows = cfg.learner.micro_batch_size * 2
    g = torch.Generator().manual_seed(0)
    ids = lambda n: torch.randint(5, 400, (n,), generator=g).tolist()  # noqa: E731
    batch = Batch.from_sequences([ids(prompt) for _ in range(rows)], [ids(response) for _ in range(rows)],
                                 [[-1.0] * response for _ in range(rows)], list(range(rows)), pad_token_id=0)
    batch.advantages = torch.randn(rows, 1, generator=g) * batch.response_mask
    before = rss_bytes()
    learner = Learner(model, cfg.learner, cfg.algorithm.loss, cfg.algorithm.kl, total_steps=3,
                      max_response_tokens=response)
    for _ in range(2):  # the second update is the steady state: AdamW's moments exist during its backward pass
        learner.update(batch)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
    parts = learner_estimate(Shape.from_config(load_model_config(model)), cfg)
    return {"estimate": sum(parts.values()), "measured": peak, "parts": parts}


if __name__ == "__main__":
    print(json.dumps(measure(sys.argv[1], sys.argv[2:])))
