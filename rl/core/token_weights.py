"""Entropy-aware token weights: a detached [B, T] factor on each token's policy loss (1 = plain PPO).

Every method has the signature ``fn(stats: TokenStats, cfg: TokenWeightConfig) -> Tensor [B, T]``; the learner
multiplies the per-token policy loss by the product of the configured methods' weights and keeps the loss normaliser
(the count of valid tokens) unchanged. Statistics such as STEER's max |Omega| or the 80/20 entropy quantile are taken
over the valid tokens of the tensors passed in: the learner passes the whole optimizer step (scope "batch", all
micro-batches) or each micro-batch (scope "micro", what the STEER authors' code does).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from rl.config.algorithm import TokenWeightConfig
from rl.core.entropy import quantile
from rl.core.registry import TOKEN_WEIGHTS

STEER_M_FLOOR = 0.02  # exponential mode: k = -ln(lambda_min) / max(max m, 0.02)
P_CLAMP = 1e-8


@dataclass
class TokenStats:
    """What token-weighting methods may read, all [B, T] and aligned with the batch's tokens."""

    logp: Tensor  # current policy log-prob of each token (no gradient)
    old_logp: Tensor  # behaviour (old) policy log-prob
    old_entropy: Tensor  # the old policy's full-distribution entropy at the position that predicts the token
    advantages: Tensor
    mask: Tensor  # 1 on the tokens that count in the loss


TokenWeight = Callable[[TokenStats, TokenWeightConfig], Tensor]


def steer_magnitude(stats: TokenStats) -> Tensor:
    """STEER's per-token |Omega|: with p = clamp(exp(logp), 1e-8, 1 - 1e-8), p_old = max(exp(logp_old), 1e-8) and H the
    old policy's entropy, delta = p (1 - p) (log p + H) (the first-order entropy change of an update on this token),
    Omega = (A / p_old) delta (non-finite -> 0), m = |Omega|; 0 off the mask."""
    p = stats.logp.detach().exp().clamp(P_CLAMP, 1 - P_CLAMP)
    p_old = stats.old_logp.detach().exp().clamp(min=P_CLAMP)
    delta = p * (1 - p) * (p.log() + stats.old_entropy.detach())
    omega = stats.advantages.detach() / p_old * delta
    omega = torch.where(torch.isfinite(omega) & (stats.mask != 0), omega, torch.zeros_like(omega))
    return omega.abs()


def steer_exponential_weights(m: Tensor, mask: Tensor, lambda_min: float) -> Tensor:
    """lambda = clamp(exp(-k m), lambda_min, 1) with k = -ln(lambda_min) / max(max_valid m, 0.02): the token with the
    largest estimated entropy change gets lambda_min, a token with none gets 1."""
    if not 0 < lambda_min <= 1:
        raise ValueError(f"STEER lambda_min must be in (0, 1], got {lambda_min}")
    valid = mask != 0
    m_max = float(m[valid].max()) if valid.any() else 0.0
    k = -math.log(lambda_min) / max(m_max, STEER_M_FLOOR)
    return torch.exp(-k * m).clamp(lambda_min, 1.0)


def steer_linear_weights(m: Tensor, mask: Tensor, lambda_min: float, lambda_max: float) -> Tensor:
    """lambda = clamp(lambda_max - (m - m_min)(lambda_max - lambda_min) / (m_max - m_min), lambda_min, lambda_max),
    min/max over the valid tokens; all m equal -> (lambda_min + lambda_max) / 2."""
    if not lambda_min <= lambda_max:
        raise ValueError(f"STEER linear mode needs lambda_min <= lambda_max, got {lambda_min} > {lambda_max}")
    valid = mask != 0
    if not valid.any():
        return torch.ones_like(m)
    m_min, m_max = float(m[valid].min()), float(m[valid].max())
    if m_max - m_min <= 0:
        return torch.full_like(m, (lambda_min + lambda_max) / 2)
    lam = lambda_max - (m - m_min) * (lambda_max - lambda_min) / (m_max - m_min)
    return lam.clamp(lambda_min, lambda_max)


@TOKEN_WEIGHTS.register("steer_exp")
def steer_exp(stats: TokenStats, cfg: TokenWeightConfig) -> Tensor:
    """STEER (exponential mode, the paper's main one): down-weight tokens whose update would change entropy most."""
    return steer_exponential_weights(steer_magnitude(stats), stats.mask, cfg.steer.lambda_min)


@TOKEN_WEIGHTS.register("steer_linear")
def steer_linear(stats: TokenStats, cfg: TokenWeightConfig) -> Tensor:
    """STEER (linear mode): weights from lambda_max (no entropy change) down to lambda_min (the largest)."""
    return steer_linear_weights(steer_magnitude(stats), stats.mask, cfg.steer.lambda_min, cfg.steer.lambda_max)


def entropy_threshold(entropy: Tensor, mask: Tensor, rho: float) -> float:
    """tau = the (1 - rho) quantile of the entropies of the valid tokens (-inf when rho >= 1 or none is valid)."""
    if not 0 < rho <= 1:
        raise ValueError(f"high_entropy.rho must be in (0, 1], got {rho}")
    values = entropy.detach()[mask != 0].float()
    if rho >= 1 or values.numel() == 0:
        return -math.inf
    return float(quantile(values, 1 - rho))


@TOKEN_WEIGHTS.register("high_entropy")
def high_entropy(stats: TokenStats, cfg: TokenWeightConfig) -> Tensor:
    """High-entropy minority tokens ("80/20", Wang et al., 2025): weight 1[H_t >= tau], tau the (1 - rho) quantile of
    the old policy's entropies over the valid tokens; the loss normaliser still counts every valid token."""
    tau = entropy_threshold(stats.old_entropy, stats.mask, cfg.high_entropy.rho)
    return (stats.old_entropy.detach() >= tau).to(stats.logp.dtype)


def token_weights(stats: TokenStats, cfg: TokenWeightConfig) -> Tensor | None:
    """The product of the configured methods' weights, detached, 0 off the mask; None when no method is configured."""
    if not cfg.methods:
        return None
    w = torch.ones_like(stats.logp)
    for name in cfg.methods:
        w = w * TOKEN_WEIGHTS.get(name)(stats, cfg)
    return (w * (stats.mask != 0)).detach()
