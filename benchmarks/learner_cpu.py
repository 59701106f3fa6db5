"""The learn phase on CPU at the quickstart's settings: seconds per update, padding, peak memory, per learner layout.

Runs the learner class directly (no Ray, no vLLM) on SmolLM2-135M-Instruct with batches shaped like the quickstart's:
6 prompts x 8 responses, the quickstart's arithmetic prompts under the chat template, responses of a quickstart
step's lengths (quickstart_batch), the quickstart's learner config (float32 masters, learner.mixed_precision=auto,
micro-batches of 16 rows). Each arm
runs in its own process (its peak RSS is its own; the 2-rank arm in two, a gloo group with a core each, RSS summed):
one warm-up update, then the median of --updates updates.

    .venv/bin/python benchmarks/learner_cpu.py --out benchmarks/results/learner_cpu.md
    # the same arms on an older commit (fields it lacks are left out):
    git worktree add /tmp/old <rev> && (cd /tmp/old && ln -s $PWD/.venv .venv && \\
        .venv/bin/python $OLDPWD/benchmarks/learner_cpu.py --repo /tmp/old --label <rev>)
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import resource
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]

# name -> learner overrides (LearnerConfig fields; those the code at --repo lacks are dropped and reported)
ARMS = {
    "rows (micro 16)": {},
    "token budget 2048": {"micro_batch_size": 48, "max_tokens_per_micro_batch": 2048},
    "token budget 4096": {"micro_batch_size": 48, "max_tokens_per_micro_batch": 4096},
    "rows (micro 16), prompts not shared": {"share_prompts": False},
    "rows (micro 16), head in bf16": {"head_autocast": True},  # only differs where the compute dtype is bf16
    # sdpa on each pack's blocks, not over its whole [L, L] mask (the default at e5f6fc5-b393877, off since)
    "rows (micro 16), block attention": {"block_attention": True},
    # two FSDP2 ranks (gloo), each with one of the 2 cores and half of each update's rows, as learner.num_ranks=2
    "rows (micro 16), 2 ranks": {"num_ranks": 2},
    "rows (micro 16), LoRA rank 16": {"lora": {"rank": 16}},  # peft adapters on every linear layer
    # true packing: a micro-batch is one row of real tokens (sdpa with the block-diagonal mask on CPU)
    "varlen, budget 1024": {"micro_batch_size": 48, "max_tokens_per_micro_batch": 1024, "share_prompts": False,
                            "varlen": True},
    "varlen, budget 2048": {"micro_batch_size": 48, "max_tokens_per_micro_batch": 2048, "share_prompts": False,
                            "varlen": True},
}


def quickstart_batch(seed: int, tokenizer):
    """48 rows shaped like a quickstart step's: 6 of the quickstart's own arithmetic problems (data.arithmetic as in
    recipes/quickstart.yaml, under the chat template) x 8 responses, half of them cut at max_tokens=96 and the rest of
    20-95 tokens (a quickstart run's steps 1-4: 58% cut, mean length 69-89), GRPO-like advantages. Token ids are
    random: the cost depends on the lengths only."""
    import torch

    from rl.config.data import ArithmeticConfig
    from rl.core.batch import Batch
    from rl.data.prompts import arithmetic_problems

    problems = arithmetic_problems(ArithmeticConfig(num_train=4000, num_eval=200, min_ops=1, max_ops=1, max_value=20,
                                                    operations=["+", "-"]), "train")
    g = torch.Generator().manual_seed(seed)
    prompts, responses, groups = [], [], []
    for i in range(6):
        question = problems[int(torch.randint(0, len(problems), (1,), generator=g))]["question"]
        text = tokenizer.apply_chat_template([{"role": "user", "content": question}], tokenize=False,
                                             add_generation_prompt=True)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        for _ in range(8):
            cut = bool(torch.rand((), generator=g) < 0.5)
            n = 96 if cut else int(torch.randint(20, 96, (1,), generator=g))
            prompts.append(ids)
            responses.append(torch.randint(3, len(tokenizer) - 1, (n,), generator=g).tolist())
            groups.append(i)
    logps = [[-1.0] * len(r) for r in responses]
    batch = Batch.from_sequences(prompts, responses, logps, groups, pad_token_id=tokenizer.pad_token_id or 0)
    batch.advantages = torch.randn(len(prompts), 1, generator=g) * batch.response_mask
    return batch


def run_arm(repo: Path, arm: str, updates: int) -> dict:
    """One arm, in this process, or with num_ranks > 1 in that many spawned processes (a gloo group on this host,
    the cores split between them, as learner.num_ranks gives): rank 0's timings, the ranks' summed peak RSS."""
    ranks = ARMS[arm].get("num_ranks", 1)
    if ranks == 1:
        return _measure(repo, arm, updates)
    import tempfile

    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as out:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        mp.start_processes(_rank, args=(ranks, port, repo, arm, updates, out), nprocs=ranks, start_method="spawn")
        results = [json.loads((Path(out) / f"{r}.json").read_text()) for r in range(ranks)]
    return results[0] | {"peak_rss_gib": sum(r["peak_rss_gib"] for r in results)}


def _rank(rank: int, ranks: int, port: int, repo: Path, arm: str, updates: int, out: str) -> None:
    sys.path.insert(0, str(repo))
    import torch.distributed as dist

    from rl.train.distributed import init_group

    init_group(rank, ranks, "127.0.0.1", port)
    result = _measure(repo, arm, updates)
    (Path(out) / f"{rank}.json").write_text(json.dumps(result))
    dist.barrier()
    dist.destroy_process_group()


def _measure(repo: Path, arm: str, updates: int) -> dict:
    sys.path.insert(0, str(repo))
    import torch
    from transformers import AutoTokenizer

    from rl.config.algorithm import PolicyLossConfig
    from rl.config.learner import LearnerConfig, OptimConfig
    from rl.models.precision import detect
    from rl.models.resolve import resolve_model_path
    from rl.train.learner import Learner

    fields = {f.name for f in dataclasses.fields(LearnerConfig)}
    wanted = ARMS[arm]
    kw = {k: v for k, v in wanted.items() if k in fields}
    if "lora" in kw:  # (imported here: older commits have no LoraConfig)
        from rl.config.learner import LoraConfig

        kw["lora"] = LoraConfig(**kw["lora"])
    mixed = detect()[0]
    cfg = LearnerConfig(dtype="float32", mixed_precision=mixed if mixed != "float32" else None,
                        **{"micro_batch_size": 16, **kw}, optim=OptimConfig(lr=2e-5, grad_clip=1.0))
    path = resolve_model_path("smollm2-135m-instruct")
    tok = AutoTokenizer.from_pretrained(path)
    learner = Learner(path, cfg, PolicyLossConfig(clip_low=0.2, clip_high=0.28, agg_mode="token-mean"), None,
                      total_steps=updates + 1, max_response_tokens=96, seed=0)
    times, padding = [], []
    for i in range(updates + 1):
        batch = quickstart_batch(i, tok)
        t = time.perf_counter()
        m = learner.update(batch)
        if i:  # the first update warms up (allocator, threads)
            times.append(time.perf_counter() - t)
            padding.append(m.get("padding_frac", float("nan")))
    return {"arm": arm, "dropped": sorted(set(wanted) - fields), "s_per_update": statistics.median(times),
            "padding_frac": statistics.mean(padding), "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            / 2**20, "threads": torch.get_num_threads(), "compute": mixed}


def _commit(repo: Path) -> str:
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=repo, capture_output=True, text=True).stdout
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo, capture_output=True,
                           text=True).stdout.strip()
    return out.strip() + (" + uncommitted changes" if dirty else "")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repo", type=Path, default=HERE, help="the checkout whose learner is measured")
    ap.add_argument("--label", default=None, help="a name for --repo's code in the table (default: its commit)")
    ap.add_argument("--updates", type=int, default=2)
    ap.add_argument("--arms", nargs="*", default=list(ARMS))
    ap.add_argument("--out", type=Path, default=None, help="append the table to this markdown file")
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)  # child process: run one arm, print JSON
    args = ap.parse_args()
    if args.one:
        print("RESULT " + json.dumps(run_arm(args.repo.resolve(), args.one, args.updates)), flush=True)
        return
    label = args.label or _commit(args.repo)
    rows = []
    for arm in args.arms:
        env = dict(os.environ, PYTHONPATH=str(args.repo.resolve()))
        out = subprocess.run([sys.executable, __file__, "--repo", str(args.repo), "--updates", str(args.updates),
                              "--one", arm], env=env, capture_output=True, text=True)
        line = next((x for x in out.stdout.splitlines() if x.startswith("RESULT ")), None)
        if line is None:
            raise SystemExit(f"{arm}: failed\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}")
        r = json.loads(line[7:])
        rows.append(r)
        print(f"{label} | {arm}: {r['s_per_update']:.1f} s/update, padding {r['padding_frac']:.2f}, "
              f"peak RSS {r['peak_rss_gib']:.2f} GiB{' (dropped: ' + ', '.join(r['dropped']) + ')' if r['dropped'] else ''}",
              flush=True)
    table = [f"| {label} | {r['arm']}{' (' + ', '.join(r['dropped']) + ' not in this code: rows only)' if r['dropped'] else ''} "
             f"| {r['s_per_update']:.1f} | {r['padding_frac']:.2f} | {r['peak_rss_gib']:.2f} |" for r in rows]
    header = (f"\nCommand: `.venv/bin/python benchmarks/learner_cpu.py {' '.join(sys.argv[1:])}`; "
              f"{datetime.date.today().isoformat()}, {os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), "
              f"{rows[0]['threads']} torch threads, compute {rows[0]['compute']}, median of {args.updates} updates "
              "after one warm-up.\n\n| code | micro-batches | s / update | padding fraction | peak RSS, GiB |\n"
              "|---|---|---|---|---|\n")
    text = header + "\n".join(table) + "\n"
    print(text)
    if args.out:
        new = not args.out.exists()
        with open(args.out, "a") as f:
            if new:
                f.write("# The learn phase on CPU at the quickstart's settings (written by benchmarks/learner_cpu.py)\n")
            f.write(text)


if __name__ == "__main__":
    main()
