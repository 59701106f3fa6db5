"""learner.block_attention against the dense mask, on the quickstart-shaped batch of benchmarks/learner_cpu.py.

1. Numerics: the gradient one update hands to AdamW, with blocks and with the dense mask, in float32 and under bf16
   autocast, each against the float32 dense-mask gradient (relative L2 difference).
2. Speed: one learner in one process, updates alternating between the two (the learner reads
   `block_attention` at each forward; the dense path is then transformers' sdpa over the [L, L] mask, as with
   learner.block_attention=false), so both see the same machine at the same time. A 2-core VM's speed drifts by 10-20%
   between processes a few minutes apart, more than the effect measured; pairs cancel that drift.

    .venv/bin/python benchmarks/block_attention_ab.py --pairs 4 --out benchmarks/results/learner_cpu.md
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE / "benchmarks"))
PATH_NAME = "smollm2-135m-instruct"  # the quickstart's model, as benchmarks/learner_cpu.py uses


def learner(mixed: str | None, blocks: bool):
    from rl.config.algorithm import PolicyLossConfig
    from rl.config.learner import LearnerConfig, OptimConfig
    from rl.models.resolve import resolve_model_path
    from rl.train.learner import Learner

    cfg = LearnerConfig(dtype="float32", mixed_precision=mixed, micro_batch_size=16, block_attention=blocks,
                        optim=OptimConfig(lr=2e-5, grad_clip=1.0))
    return Learner(resolve_model_path(PATH_NAME), cfg, PolicyLossConfig(clip_low=0.2, clip_high=0.28,
                   agg_mode="token-mean"), None, total_steps=100, max_response_tokens=96, seed=0)


def gradient(lrn, batch):
    """The flat gradient of one update (captured at the optimizer step)."""
    import torch

    seen = []
    step = lrn.optimizer.step
    lrn.optimizer.step = lambda: (seen.append(torch.cat([p.grad.flatten() for p in lrn.model.parameters()])), step())
    lrn.update(batch)
    lrn.optimizer.step = step
    return seen[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=4)
    ap.add_argument("--out", type=Path, default=None, help="append the tables to this markdown file")
    args = ap.parse_args()
    import torch
    from transformers import AutoTokenizer

    from learner_cpu import quickstart_batch
    from rl.models.precision import detect
    from rl.models.resolve import resolve_model_path

    tok = AutoTokenizer.from_pretrained(resolve_model_path(PATH_NAME))
    mixed = detect()[0]
    mixed = None if mixed == "float32" else mixed
    grads = {}
    for m in dict.fromkeys([None, mixed]):
        for blocks in (False, True):
            grads[(m or "float32", blocks)] = gradient(learner(m, blocks), quickstart_batch(1, tok))
    ref = grads[("float32", False)]
    numerics = [f"| {m} | {'blocks' if b else 'dense mask'} | {float((g - ref).norm() / ref.norm()):.2e} |"
                for (m, b), g in grads.items()]

    lrn = learner(mixed, True)
    lrn.update(quickstart_batch(0, tok))  # warm-up
    rows = []
    for i in range(args.pairs):
        pair = {}
        for blocks in ((True, False) if i % 2 else (False, True)):  # alternate which goes first
            lrn.block_attention = blocks
            t = time.perf_counter()
            lrn.update(quickstart_batch(1 + i, tok))
            pair[blocks] = time.perf_counter() - t
        rows.append(pair)
        print(f"pair {i}: dense {pair[False]:.1f} s, blocks {pair[True]:.1f} s", flush=True)
    ratio = statistics.median(p[True] / p[False] for p in rows)
    text = (f"\nCommand: `.venv/bin/python benchmarks/block_attention_ab.py {' '.join(sys.argv[1:])}`; "
            f"{datetime.date.today().isoformat()}, {os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), "
            f"{torch.get_num_threads()} torch threads, compute {mixed or 'float32'}.\n\n"
            "Gradient of one update against the float32 dense-mask gradient (relative L2):\n\n"
            "| compute | attention | relative difference |\n|---|---|---|\n" + "\n".join(numerics) + "\n\n"
            "Seconds per update, one learner, alternating:\n\n| pair | dense mask | blocks | blocks / dense |\n"
            "|---|---|---|---|\n" + "\n".join(f"| {i} | {p[False]:.1f} | {p[True]:.1f} | {p[True] / p[False]:.2f} |"
                                               for i, p in enumerate(rows))
            + f"\n\nMedian blocks / dense: **{ratio:.2f}**.\n")
    print(text)
    if args.out:
        with open(args.out, "a") as f:
            f.write(text)


if __name__ == "__main__":
    main()
