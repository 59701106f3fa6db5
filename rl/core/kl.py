"""KL to a reference policy, estimated per token from sampled tokens (Schulman, "Approximating KL Divergence", 2020).

With x = log pi_ref(y_t) - log pi(y_t), y_t ~ pi, each estimator's expectation under pi relates to KL(pi || pi_ref):
k1 is unbiased but can be negative, k2 is biased with low variance, k3 is unbiased, >= 0 and low variance.
The penalty goes into the loss (coef * KL per token) or is subtracted from the reward (`kl_penalized_rewards`).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from rl.core.registry import KL_ESTIMATORS

LOG_RATIO_CLAMP = 20.0  # |x| bound before any estimator
K3_CLAMP = 10.0  # |k3| bound: one token far from the reference cannot dominate the step


KLEstimator = Callable[[Tensor], Tensor]


@KL_ESTIMATORS.register("k1")
def k1(x: Tensor) -> Tensor:
    """k1 = -x = log pi - log pi_ref."""
    return -x


@KL_ESTIMATORS.register("k2")
def k2(x: Tensor) -> Tensor:
    """k2 = x^2 / 2."""
    return 0.5 * x.square()


@KL_ESTIMATORS.register("k3")
def k3(x: Tensor) -> Tensor:
    """k3 = exp(x) - x - 1, clamped to [-10, 10] (it is >= 0 before the clamp)."""
    return (torch.exp(x) - x - 1).clamp(-K3_CLAMP, K3_CLAMP)


def kl_penalty(logp: Tensor, ref_logp: Tensor, estimator: str = "k3") -> Tensor:
    """Per-token KL(pi || pi_ref) estimate, estimator(x) with x = clamp(ref_logp - logp, -20, 20). Same shape as logp."""
    x = (ref_logp - logp).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    return KL_ESTIMATORS.get(estimator)(x)


def kl_penalized_rewards(rewards: Tensor, kl_tok: Tensor, mask: Tensor, coef: float) -> Tensor:
    """KL in the reward: r_i - coef * sum_t kl_it M_it over the response tokens. [N], [N, T], [N, T] -> [N]."""
    return rewards - coef * (kl_tok * mask.to(kl_tok.dtype)).sum(-1)
