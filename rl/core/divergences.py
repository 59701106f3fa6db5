"""f-divergence generators for DPH-RL (mass-covering regularizers on the initial policy's own samples).

On a sample y ~ pi0 with stored per-token log-probs, u_t = pi_theta(y_t) / pi0(y_t) = exp(logp_t - logp0_t), and
E_{pi0}[f(u)] = D_f(pi_theta || pi0) for a generator f with f(1) = 0. Each generator here also has its minimum at
u = 1 (f'(1) = 0), so the loss and its gradient vanish while the policy agrees with pi0 on those samples.
Every generator has the signature ``fn(log_u: Tensor, cfg: DivergenceConfig) -> Tensor`` (elementwise); working
from log u keeps u = exp(log u) finite after the clamp.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from rl.config.algorithm import DivergenceConfig
from rl.core.registry import F_DIVERGENCES

LOG_U_CLAMP = 20.0
FORWARD_KL_CLAMP = 10.0


Generator = Callable[[Tensor, DivergenceConfig], Tensor]


@F_DIVERGENCES.register("forward_kl")
def forward_kl(log_u: Tensor, cfg: DivergenceConfig) -> Tensor:
    """Forward KL(pi0 || pi_theta) in its k3 form: f(u) = u - 1 - log u, log u clamped to +-20, value to <= 10."""
    log_u = log_u.clamp(-LOG_U_CLAMP, LOG_U_CLAMP)
    return (log_u.exp() - 1 - log_u).clamp(max=FORWARD_KL_CLAMP)


@F_DIVERGENCES.register("js")
def jensen_shannon(log_u: Tensor, cfg: DivergenceConfig) -> Tensor:
    """Jensen-Shannon: f(u) = u log u - (u + 1) log((u + 1) / 2), with log(u + 1) = softplus(log u) for stability."""
    log_u = log_u.clamp(-LOG_U_CLAMP, LOG_U_CLAMP)
    u = log_u.exp()
    return u * log_u - (u + 1) * (F.softplus(log_u) - torch.log(torch.tensor(2.0, dtype=log_u.dtype)))


@F_DIVERGENCES.register("alpha")
def alpha_divergence(log_u: Tensor, cfg: DivergenceConfig) -> Tensor:
    """alpha-divergence: f(u) = (u^(1 - a) - (1 - a) u - a) / (a (a - 1)), a in (0, 1); a -> 1 gives forward KL's
    u - 1 - log u, a -> 0 gives u log u - u + 1 (reverse KL(pi_theta || pi0) under pi0's samples)."""
    a = cfg.alpha
    if not 0 < a < 1:
        raise ValueError(f"algorithm.divergence.alpha must be in (0, 1), got {a}")
    log_u = log_u.clamp(-LOG_U_CLAMP, LOG_U_CLAMP)
    return (torch.exp((1 - a) * log_u) - (1 - a) * log_u.exp() - a) / (a * (a - 1))


def f_divergence_loss(logp: Tensor, init_logp: Tensor, mask: Tensor, cfg: DivergenceConfig, num_tokens: float) -> Tensor:
    """DPH-RL's L_pef: sum_t f(u_t) M_t / num_tokens, u_t = exp(logp_t - logp0_t), M = the tokens of pi0's samples;
    num_tokens counts those tokens over the whole optimizer step (token-mean across micro-batches)."""
    f = F_DIVERGENCES.get(cfg.name)(logp - init_logp, cfg)
    return torch.where(mask != 0, f * mask, torch.zeros_like(f)).sum() / max(num_tokens, 1.0)
