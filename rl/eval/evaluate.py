"""Held-out evaluation through the rollout fleet: accuracy (math-verify or short factual answers), pass@k, response
length, refusal and calibration metrics, per-sample records."""

from __future__ import annotations

from math import comb
from typing import Callable

import datasets

from rewards.answers import math_verify_reward
from rewards.ikea import count_searches
from rewards.qa import final_answer, grade_short_answer, parse_confidence
from rl.config.data import GRADERS
from rl.core.calibration import calibration_metrics
from rollout.adaptive import is_nothinking
from rl.config.rollout import SamplingConfig


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k (Chen et al., 2021) from n samples of which c are correct: 1 - C(n - c, k) / C(n, k)."""
    if not 0 < k <= n or not 0 <= c <= n:
        raise ValueError(f"pass@k needs 0 < k <= n and 0 <= c <= n, got n={n}, c={c}, k={k}")
    return 1.0 - comb(n - c, k) / comb(n, k)


def pass_at_k_values(n: int) -> list[int]:
    """The k reported for n samples per problem: 1, 2, 4, ... up to n, and n itself."""
    ks = [k for k in (2**i for i in range(n.bit_length())) if k <= n]
    return ks + ([n] if ks[-1] != n else [])


def grade(grader: str, completions: list[str], golds: list) -> tuple[list[bool], list[bool]]:
    """(correct, refused) per completion. `math_verify`: the final answer equals the gold as mathematics (refusals are
    not detected); `short_answer`: a factual short answer (its <answer> tag, else "Answer: ...", else the last line)
    matched against the gold aliases, "I don't know"-style answers counted as refusals (rewards/qa.py)."""
    if grader == "math_verify":
        return [bool(c) for c in math_verify_reward(None, completions, answer=golds)], [False] * len(completions)
    if grader == "short_answer":
        graded = [grade_short_answer(final_answer(c), g) for c, g in zip(completions, golds)]
        return [ok for ok, _ in graded], [refused for _, refused in graded]
    raise ValueError(f"grader={grader!r}; choose one of {list(GRADERS)}")


def evaluate(
    generate: Callable,
    rows: datasets.Dataset,
    prompt_ids: list[list[int]],
    sampling: SamplingConfig,
    seed: int = 0,
    grader: str = "math_verify",
    close_tag: str | None = None,
) -> tuple[dict[str, float], list[dict]]:
    """Generate `sampling.n` answers per row with `generate(prompts, sampling, seeds)` (the fleet's, or the search
    rollout's); accuracy is the mean correctness over all of them. Short answers also report the "I don't know" and
    wrong-answer rates, and calibration where answers state a confidence; answers that searched, the searches; with
    `close_tag` (adaptive thinking), the share of answers that close the thinking block first (nothinking_rate)."""
    groups = generate(prompt_ids, sampling, [seed + i for i in range(len(prompt_ids))])
    samples = [(i, s) for i, g in enumerate(groups) for s in g]
    golds = [rows[i]["answer"] for i, _ in samples]
    texts = [s.text for _, s in samples]
    correct, refused = grade(grader, texts, golds)
    n = max(1, len(samples))
    metrics = {
        "accuracy": sum(correct) / n,
        "response_tokens": sum(len(s.response_ids) for _, s in samples) / n,
        "truncated": sum(s.truncated for _, s in samples) / n,
        "num_samples": float(len(samples)),
    }
    if grader == "short_answer":
        metrics["idk_rate"] = sum(refused) / n
        metrics["wrong_rate"] = 1.0 - metrics["accuracy"] - metrics["idk_rate"]
    confidence = [parse_confidence(t) for t in texts]  # verbalized ("Confidence: 80%"), when answers state one
    if any(c is not None for c in confidence):
        cal = calibration_metrics(confidence, correct, refused)
        metrics |= {k: v for k, v in cal.items() if v is not None and k != "idk_rate"}
    if close_tag is not None:
        metrics["nothinking_rate"] = sum(is_nothinking(t, close_tag) for t in texts) / n
    searches = [count_searches(t)[0] for t in texts]
    if any(searches):
        metrics["searches"] = sum(searches) / n
    if sampling.n > 1:  # pass@k per problem, averaged
        per_row = [0] * len(groups)
        for (i, _), c in zip(samples, correct):
            per_row[i] += int(bool(c))
        for k in pass_at_k_values(sampling.n):
            metrics[f"pass@{k}"] = sum(pass_at_k(len(g), c, k) for g, c in zip(groups, per_row)) / max(1, len(groups))
    records = [
        {"index": i, "prompt": rows[i]["prompt"], "answer": gold, "completion": s.text, "correct": c,
         "response_tokens": len(s.response_ids)} | ({"refused": r} if grader == "short_answer" else {})
        for (i, s), gold, c, r in zip(samples, golds, correct, refused)
    ]
    return metrics, records
