"""The loop every offline step shares: the recipe's model answers each training question k times on a rollout fleet
(seeded per question), optionally scored by the recipe's rewards; the pass rate of a question's samples, and the mean of a statistic.
The steps themselves: rl/prepare/dph.py, ikea.py, adaptthink.py, klcf.py (one module each)."""

from __future__ import annotations

import sys
from dataclasses import dataclass, replace
from typing import Callable

import numpy as np


@dataclass
class InitialSamples:
    rows: object  # datasets.Dataset: the training rows (with "prompt" and "answer")
    groups: list  # per row: its k samples (rollout.base.Sample)
    scores: list  # per row: the recipe's rewards on them (rewards.RewardOutput), or None when not scored
    model_path: str
    tokenizer: object


def sample_initial_policy(cfg, k: int, desc: str, score: bool = True, chunk: int = 64,
                          rollout: Callable | None = None) -> InitialSamples:
    """The recipe's model answers every training question k times on a rollout fleet (the recipe's sampling, plain
    generation: no search, no CURE, unless `rollout(generate, tokenizer, prompts, sampling, seeds)` generates),
    seeded per question; with `score`, the recipe's rewards score every answer."""
    from tqdm.auto import tqdm
    from transformers import AutoTokenizer

    from rewards import RewardManager
    from rl.data.prompts import load_prompts, sample_seed
    from rl.models.resolve import resolve_model_path
    from rl.cluster import start_ray
    from rollout.base import group_slices
    from rollout.fleet import RolloutFleet

    model_path = resolve_model_path(cfg.model.path)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    rows, prompts, _ = load_prompts(cfg.data.train, "data.train", cfg.data, tokenizer)
    rewards = RewardManager(cfg.rewards, cfg.reward_policy) if score else None
    start_ray(cfg.ray)
    fleet = RolloutFleet(cfg.rollout, model_path, seed=cfg.seed)
    sampling = replace(cfg.rollout.sampling, n=k)
    groups, scores = [], []
    try:
        for start in tqdm(range(0, len(prompts), chunk), desc=desc, file=sys.stderr):
            idx = list(range(start, min(start + chunk, len(prompts))))
            args = ([prompts[i] for i in idx], sampling, [sample_seed(cfg.seed, 0, i, 0) for i in idx])
            part = rollout(fleet.generate, tokenizer, *args) if rollout is not None else fleet.generate(*args)
            groups += part
            if rewards is None:
                scores += [None] * len(part)
                continue
            flat = [i for i, g in zip(idx, part) for _ in g]
            columns = {c: [rows[i][c] for i in flat] for c in rows.column_names if c != "prompt"}
            out = rewards([rows[i]["prompt"] for i in flat], [x.text for g in part for x in g], columns)
            scores += [out.select(s) for s in group_slices(part)]
    finally:
        fleet.shutdown()
        if rewards is not None:
            rewards.shutdown()
    return InitialSamples(rows, groups, scores, model_path, tokenizer)


def pass_rate(correct) -> float:
    """The fraction of a question's k samples that are correct (bools, or 0/1 rewards); 0 for no samples."""
    return sum(correct) / max(1, len(correct))


def mean_or_zero(values) -> float:
    """The mean of a statistic over questions (numpy's, as a float); 0.0 when there are none."""
    return float(np.mean(values)) if len(values) else 0.0
