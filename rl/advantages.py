"""Advantage estimators: one advantage per sequence from its reward and its group (the samples of one prompt).

Groups are arbitrary ids (not necessarily contiguous or equal-sized: dynamic sampling drops groups).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rl.registry import Registry


@dataclass
class AdvantageConfig:
    estimator: str = "grpo"  # grpo | dr_grpo | rloo | reinforce_pp
    norm_by_std: bool = True  # grpo only; False is Dr.GRPO
    unbiased_std: bool = True  # N-1 (torch's default) or N
    eps: float = 1e-6
    singleton_group: str = "zero"  # a group of one sample: "zero" -> A = 0, "reward" -> A = r / (1 + eps)


ADVANTAGE_ESTIMATORS: Registry = Registry("advantage estimator")


def group_stats(rewards: torch.Tensor, group_ids: torch.Tensor, unbiased: bool = True):
    """Per-sample group size, group mean and group std (0 for a group of one)."""
    _, inverse = torch.unique(group_ids, return_inverse=True)
    k = int(inverse.max()) + 1 if len(inverse) else 0
    r = rewards.to(torch.float64)
    count = torch.zeros(k, dtype=torch.float64).index_add_(0, inverse, torch.ones_like(r))
    mean = torch.zeros(k, dtype=torch.float64).index_add_(0, inverse, r) / count
    sq = torch.zeros(k, dtype=torch.float64).index_add_(0, inverse, (r - mean[inverse]) ** 2)
    denom = (count - 1).clamp(min=1) if unbiased else count
    std = torch.where(count > 1, (sq / denom).sqrt(), torch.zeros_like(sq))
    return count[inverse], mean[inverse], std[inverse]


def _singletons(adv: torch.Tensor, rewards: torch.Tensor, n: torch.Tensor, cfg: AdvantageConfig) -> torch.Tensor:
    if cfg.singleton_group == "zero":
        single = torch.zeros_like(adv)
    elif cfg.singleton_group == "reward":
        single = rewards.to(adv.dtype) / (1 + cfg.eps)
    else:
        raise ValueError(f"algorithm.advantage.singleton_group={cfg.singleton_group!r}; choose zero or reward")
    return torch.where(n > 1, adv, single).to(rewards.dtype if rewards.is_floating_point() else torch.float32)


@ADVANTAGE_ESTIMATORS.register("grpo")
def grpo(rewards: torch.Tensor, group_ids: torch.Tensor, cfg: AdvantageConfig) -> torch.Tensor:
    """GRPO (Shao et al., 2024): A_i = (r_i - mean_G r) / (std_G r + eps); with norm_by_std=False, A_i = r_i - mean_G r."""
    n, mean, std = group_stats(rewards, group_ids, cfg.unbiased_std)
    adv = rewards.to(torch.float64) - mean
    if cfg.norm_by_std:
        adv = adv / (std + cfg.eps)
    return _singletons(adv, rewards, n, cfg)


@ADVANTAGE_ESTIMATORS.register("dr_grpo")
def dr_grpo(rewards: torch.Tensor, group_ids: torch.Tensor, cfg: AdvantageConfig) -> torch.Tensor:
    """Dr. GRPO (Liu et al., 2025): A_i = r_i - mean_G r (no std division, which biases towards easy/hard groups)."""
    n, mean, _ = group_stats(rewards, group_ids)
    return _singletons(rewards.to(torch.float64) - mean, rewards, n, cfg)


@ADVANTAGE_ESTIMATORS.register("rloo")
def rloo(rewards: torch.Tensor, group_ids: torch.Tensor, cfg: AdvantageConfig) -> torch.Tensor:
    """RLOO (Ahmadian et al., 2024): A_i = r_i - mean_{j != i} r_j = n/(n-1) (r_i - mean_G r)."""
    n, mean, _ = group_stats(rewards, group_ids)
    adv = n / (n - 1).clamp(min=1) * (rewards.to(torch.float64) - mean)
    return _singletons(adv, rewards, n, cfg)


@ADVANTAGE_ESTIMATORS.register("reinforce_pp")
def reinforce_pp(rewards: torch.Tensor, group_ids: torch.Tensor, cfg: AdvantageConfig) -> torch.Tensor:
    """REINFORCE++ with baseline (Hu, 2025): a_i = r_i - mean_G r, then whitened over the batch:
    A_i = (a_i - mean_B a) / (std_B a + eps)."""
    n, mean, _ = group_stats(rewards, group_ids)
    a = _singletons(rewards.to(torch.float64) - mean, rewards, n, cfg).to(torch.float64)
    std = a.std() if len(a) > 1 else torch.zeros((), dtype=torch.float64)
    return ((a - a.mean()) / (std + cfg.eps)).to(torch.float32)


def compute_advantages(rewards: torch.Tensor, group_ids: torch.Tensor, cfg: AdvantageConfig) -> torch.Tensor:
    """The configured estimator: one advantage per sequence, shape [N]."""
    return ADVANTAGE_ESTIMATORS.get(cfg.estimator)(rewards, group_ids, cfg)
