"""Held-out evaluation through the rollout fleet: accuracy by math-verify, response length, per-sample records."""

from __future__ import annotations

import json
from pathlib import Path

import datasets

from rewards.answers import math_verify_reward
from rollout.base import SamplingConfig
from rollout.fleet import RolloutFleet


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
