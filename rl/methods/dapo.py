"""DAPO (Yu et al., 2025) in the loop: dynamic sampling (groups whose rewards are all equal carry no signal: drop
them and sample more prompts) and overlong shaping (a soft penalty over the last `buffer` tokens before the limit;
optionally, truncated responses leave the loss). The formulas are in rl/core/dapo.py."""

from __future__ import annotations

import torch

from rl.core.dapo import informative_groups, overlong_penalty
from rl.methods.base import Method


class DynamicSampling(Method):
    name = "dynamic_sampling"
    drop_reason = ("rewards all equal in every group (algorithm.dynamic_sampling): raise "
                   "algorithm.dynamic_sampling.max_tries or check the reward function")

    def __init__(self, cfg):
        self.rounds = cfg.max_tries

    def keep_group(self, rewards: torch.Tensor) -> bool:
        return bool(informative_groups(rewards, torch.zeros(len(rewards), dtype=torch.long)).any())


class Overlong(Method):
    name = "overlong"

    def __init__(self, cfg, max_tokens: int):
        self.cfg, self.max_tokens = cfg, max_tokens

    def shape_rewards(self, batch, rewards, metrics):
        if self.cfg.buffer == 0:
            return rewards
        return rewards + overlong_penalty(batch.answer_lengths, self.max_tokens, self.cfg.buffer, self.cfg.factor)

    def mask_tokens(self, batch) -> None:
        if self.cfg.mask_truncated:
            truncated = batch.answer_lengths >= self.max_tokens
            batch.response_mask = batch.response_mask * (~truncated).float().unsqueeze(-1)


def build_dynamic_sampling(cfg, ctx) -> Method | None:
    ds = cfg.algorithm.dynamic_sampling
    return DynamicSampling(ds) if ds is not None else None


def build_overlong(cfg, ctx) -> Method | None:
    o = cfg.algorithm.overlong
    return Overlong(o, cfg.rollout.sampling.max_tokens) if o is not None else None
