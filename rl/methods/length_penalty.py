"""Kimi k1.5's length penalty (Kimi Team, 2025, "Kimi k1.5: Scaling Reinforcement Learning with LLMs",
arXiv:2501.12599, "Length Penalty"):
among the responses to one question, shorter correct ones earn more and longer wrong ones are penalised, which curbs
the overthinking that RL on verifiable rewards tends to grow.

    lambda_i = 0.5 - (len_i - min_len) / (max_len - min_len)        (0 when every response has the same length)
    len_reward_i = lambda_i            if response i is correct
                   min(0, lambda_i)    otherwise
    r_i <- r_i + coef * len_reward_i

min_len and max_len are taken over the group (the question's responses); a response is correct when its reward is at
least `correct_reward`. This file is the whole method: the formula, its hook (shape_rewards) and its build; its config
is `algorithm.length_penalty` (rl/config), its recipe recipes/length_penalty_cpu.yaml.
"""

from __future__ import annotations

import torch
from torch import Tensor

from rl.methods.base import Method


def kimi_length_reward(lengths: Tensor, correct: Tensor, group_ids: Tensor) -> Tensor:
    """len_reward per response [B] from its length [B], correctness [B] (bool) and group [B] (formula above)."""
    lengths = lengths.to(torch.float32)
    out = torch.zeros_like(lengths)
    for g in torch.unique(group_ids):
        idx = group_ids == g
        lo, hi = lengths[idx].min(), lengths[idx].max()
        lam = 0.5 - (lengths[idx] - lo) / (hi - lo) if hi > lo else torch.zeros_like(lengths[idx])
        out[idx] = torch.where(correct[idx], lam, lam.clamp(max=0.0))
    return out


class LengthPenalty(Method):
    name = "length_penalty"

    def __init__(self, cfg):
        self.cfg = cfg

    def shape_rewards(self, batch, rewards, metrics):
        bonus = kimi_length_reward(batch.answer_lengths, batch.rewards >= self.cfg.correct_reward, batch.group_ids)
        metrics["length_penalty/mean"] = float(bonus.mean())
        return rewards + self.cfg.coef * bonus


def build(cfg, ctx) -> Method | None:
    lp = cfg.algorithm.length_penalty
    return LengthPenalty(lp) if lp is not None else None
