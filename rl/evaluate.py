"""Held-out evaluation through the rollout fleet: accuracy by math-verify, response length, per-sample records."""

from __future__ import annotations

import json
from math import comb
from pathlib import Path

import datasets

from rewards.answers import math_verify_reward
from rollout.base import SamplingConfig
from rollout.fleet import RolloutFleet


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k (Chen et al., 2021) from n samples of which c are correct: 1 - C(n - c, k) / C(n, k)."""
    if not 0 < k <= n or not 0 <= c <= n:
        raise ValueError(f"pass@k needs 0 < k <= n and 0 <= c <= n, got n={n}, c={c}, k={k}")
    return 1.0 - comb(n - c, k) / comb(n, k)


def pass_at_k_values(n: int) -> list[int]:
    """The k reported for n samples per problem: 1, 2, 4, ... up to n, and n itself."""
    ks = [k for k in (2**i for i in range(n.bit_length())) if k <= n]
    return ks + ([n] if ks[-1] != n else [])


def evaluate(
    fleet: RolloutFleet,
    rows: datasets.Dataset,
    prompt_ids: list[list[int]],
    sampling: SamplingConfig,
    seed: int = 0,
) -> tuple[dict[str, float], list[dict]]:
    """Generate `sampling.n` answers per row; accuracy is the mean correctness over all of them."""
    groups = fleet.generate(prompt_ids, sampling, [seed + i for i in range(len(prompt_ids))])
    samples = [(i, s) for i, g in enumerate(groups) for s in g]
    golds = [rows[i]["answer"] for i, _ in samples]
    correct = math_verify_reward([rows[i]["prompt"] for i, _ in samples], [s.text for _, s in samples], answer=golds)
    n = max(1, len(samples))
    metrics = {
        "accuracy": sum(correct) / n,
        "response_tokens": sum(len(s.response_ids) for _, s in samples) / n,
        "truncated": sum(s.truncated for _, s in samples) / n,
        "num_samples": float(len(samples)),
    }
    if sampling.n > 1:  # pass@k per problem, averaged
        per_row = [0] * len(groups)
        for (i, _), c in zip(samples, correct):
            per_row[i] += int(bool(c))
        for k in pass_at_k_values(sampling.n):
            metrics[f"pass@{k}"] = sum(pass_at_k(len(g), c, k) for g, c in zip(groups, per_row)) / max(1, len(groups))
    records = [
        {"index": i, "prompt": rows[i]["prompt"], "answer": gold, "completion": s.text, "correct": c,
         "response_tokens": len(s.response_ids)}
        for (i, s), gold, c in zip(samples, golds, correct)
    ]
    return metrics, records


def write_records(path: Path, records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
