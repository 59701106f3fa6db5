"""KL estimators to a reference policy, per token (Schulman's k1/k2/k3), in the loss or subtracted from the reward."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rl.registry import Registry


@dataclass
class KLConfig:
    coef: float = 0.0  # 0 disables; the reference model is only loaded when coef > 0
    estimator: str = "k3"  # k1 | k2 | k3
    in_reward: bool = False  # False: coef * KL in the loss; True: subtracted from the reward


KL_ESTIMATORS: Registry = Registry("KL estimator")


@KL_ESTIMATORS.register("k1")
def k1(x: torch.Tensor) -> torch.Tensor:
    """k1 = -x, with x = log pi_ref - log pi (unbiased, can be negative)."""
    return -x


@KL_ESTIMATORS.register("k2")
def k2(x: torch.Tensor) -> torch.Tensor:
    """k2 = x^2 / 2."""
    return 0.5 * x.square()


@KL_ESTIMATORS.register("k3")
def k3(x: torch.Tensor) -> torch.Tensor:
    """k3 = exp(x) - x - 1 >= 0 (unbiased, low variance), value clamped to [-10, 10]."""
    return (torch.exp(x) - x - 1).clamp(-10, 10)


def kl_penalty(logp: torch.Tensor, ref_logp: torch.Tensor, estimator: str = "k3") -> torch.Tensor:
    """Per-token KL(pi || pi_ref) estimate with x = clamp(ref_logp - logp, -20, 20)."""
    return KL_ESTIMATORS.get(estimator)((ref_logp - logp).clamp(-20, 20))


def kl_penalized_rewards(rewards: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor, coef: float) -> torch.Tensor:
    """r_i - coef * sum_t kl_{i,t} over the response tokens."""
    return rewards - coef * (kl * mask).sum(-1)
