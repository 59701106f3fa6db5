"""Policy losses (per token) and loss aggregation.

A policy loss maps (logp, old_logp, advantages, mask), all [B, T], to a per-token loss that is 0 outside the mask,
and declares with @aggregates the aggregation its objective is defined with (ppo_clip: token-mean; gspo and
adaptthink_is: seq-mean-token-mean), which loss.agg_mode=None (the default) selects.
`aggregate_loss` reduces it to a scalar with normalisers that belong to the whole optimizer step (all micro-batches,
all learners): the sum of `aggregate_loss` over the micro-batches of a step equals the one-pass value, and so does
the accumulated gradient.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from rl.config.algorithm import PolicyLossConfig
from rl.core.registry import LOSS_AGGREGATIONS, POLICY_LOSSES

LOG_RATIO_CLAMP = 20.0  # |log rho| bound before exp, so a stale token cannot overflow the ratio


@dataclass
class PolicyLossOutput:
    loss: Tensor  # [B, T] per-token loss, 0 outside the mask
    ratio: Tensor  # [B, T] importance ratio used (detached)
    clipped: Tensor  # [B, T] bool: the clip was active at this token (clip-fraction metric)


PolicyLoss = Callable[[Tensor, Tensor, Tensor, Tensor, PolicyLossConfig], PolicyLossOutput]
DEFAULT_AGG_MODE = "token-mean"  # for a registered loss that declares none


def aggregates(mode: str) -> Callable[[PolicyLoss], PolicyLoss]:
    """Declare the aggregation a policy loss's objective is defined with; loss.agg_mode=None then selects it."""
    def deco(fn: PolicyLoss) -> PolicyLoss:
        fn.agg_mode = mode  # type: ignore[attr-defined]
        return fn

    return deco


def resolve_agg_mode(cfg: PolicyLossConfig) -> str:
    """cfg.agg_mode when set, else the aggregation the policy loss cfg.name declares (token-mean if none)."""
    return cfg.agg_mode or getattr(POLICY_LOSSES.get(cfg.name), "agg_mode", DEFAULT_AGG_MODE)


def clipped_surrogate(ratio: Tensor, adv: Tensor, mask: Tensor, cfg: PolicyLossConfig) -> PolicyLossOutput:
    """L = max(-A rho, -A clip(rho, 1 - eps_low, 1 + eps_high)); with dual clip c > 1, for A < 0: L = min(L, -A c).

    `clipped` marks tokens where a clip bound decided L (its gradient is 0 there).
    """
    if cfg.dual_clip is not None and not cfg.dual_clip > 1:
        raise ValueError(f"dual_clip must be > 1 (3.0 is usual) or None, got {cfg.dual_clip}")
    unclipped = -adv * ratio
    clipped = -adv * ratio.clamp(1 - cfg.clip_low, 1 + cfg.clip_high)
    loss = torch.maximum(unclipped, clipped)
    is_clipped = clipped > unclipped
    if cfg.dual_clip is not None:
        bound = -adv * cfg.dual_clip
        dual = (adv < 0) & (loss > bound)
        loss = torch.where(dual, bound, loss)
        is_clipped = is_clipped | dual
    valid = mask != 0
    return PolicyLossOutput(
        loss=torch.where(valid, loss, torch.zeros_like(loss)),
        ratio=ratio.detach(),
        clipped=is_clipped & valid,
    )


@POLICY_LOSSES.register("ppo_clip")
@aggregates("token-mean")
def ppo_clip(logp: Tensor, old_logp: Tensor, advantages: Tensor, mask: Tensor, cfg: PolicyLossConfig) -> PolicyLossOutput:
    """PPO clip per token (Schulman et al., 2017), with DAPO's decoupled clip_low / clip_high and optional dual clip
    (Ye et al., 2020): rho_t = exp(clamp(logp_t - logp_old_t, -20, 20)),
    L_t = max(-A_t rho_t, -A_t clip(rho_t, 1 - eps_low, 1 + eps_high))."""
    ratio = torch.exp((logp - old_logp).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP))
    return clipped_surrogate(ratio, advantages, mask, cfg)


@POLICY_LOSSES.register("gspo")
@aggregates("seq-mean-token-mean")
def gspo(logp: Tensor, old_logp: Tensor, advantages: Tensor, mask: Tensor, cfg: PolicyLossConfig) -> PolicyLossOutput:
    """GSPO (Zheng et al., 2025): sequence ratio s_i = exp(mean_{t in o_i} (logp_t - logp_old_t)) in its token-level
    gradient form s_it = sg(s_i) exp(logp_t - sg(logp_t)), clipped to [1 - eps_low, 1 + eps_high] in the PPO max form.

    d s_it / d logp_t = s_i, so with its aggregation seq-mean-token-mean (the default when agg_mode is unset) the
    objective is the paper's 1/G sum_i min(s_i A_i, clip(s_i) A_i), with gradient
    1/G sum_i (A_i s_i / |o_i|) sum_t grad logp_t where unclipped.
    """
    valid = mask != 0
    log_ratio = torch.where(valid, logp - old_logp, torch.zeros_like(logp))
    seq_log_ratio = log_ratio.sum(-1) / valid.sum(-1).clamp(min=1)
    seq_ratio = torch.exp(seq_log_ratio.clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)).detach().unsqueeze(-1)
    ratio = seq_ratio * torch.exp(logp - logp.detach())
    return clipped_surrogate(ratio, advantages, mask, cfg)


@POLICY_LOSSES.register("adaptthink_is")
@aggregates("seq-mean-token-mean")
def adaptthink_is(logp: Tensor, old_logp: Tensor, advantages: Tensor, mask: Tensor,
                  cfg: PolicyLossConfig) -> PolicyLossOutput:
    """AdaptThink's importance-sampled loss for the cold start (Zhang et al., 2025): the old log-prob of each
    response's first token (the forced mode token) is log 0.5, the rest the behaviour policy's;
    rho = exp(mean_t logp_theta - mean_t logp_IS), L = max(-A rho, -A clip(rho, 1 - eps_low, 1 + eps_high)), in
    GSPO's token form (the gradient of rho through every token). Aggregated seq-mean-token-mean (the mean over
    sequences, the default when agg_mode is unset); use clip 0.2 / 0.2 (0.8, 1.2)."""
    first = (mask != 0).int().cumsum(-1).eq(1) & (mask != 0)  # the first token of each response in the loss
    old = torch.where(first, torch.full_like(old_logp, math.log(0.5)), old_logp)
    return gspo(logp, old, advantages, mask, cfg)


LossAggregation = Callable[[Tensor, Tensor, float, float, float | None], Tensor]


def _masked(loss: Tensor, mask: Tensor) -> Tensor:
    """L * M, and exactly 0 where M = 0 even if L is not finite there."""
    return torch.where(mask != 0, loss * mask, torch.zeros_like(loss))


@LOSS_AGGREGATIONS.register("token-mean")
def token_mean(loss: Tensor, mask: Tensor, num_tokens: float, num_seqs: float, norm_length: float | None) -> Tensor:
    """sum_{i,t} L_it M_it / (valid tokens of the whole step)."""
    return _masked(loss, mask).sum() / num_tokens


@LOSS_AGGREGATIONS.register("seq-mean-token-mean")
def seq_mean_token_mean(loss: Tensor, mask: Tensor, num_tokens: float, num_seqs: float,
                        norm_length: float | None) -> Tensor:
    """sum_i (sum_t L_it M_it / max(|o_i|, 1)) / (sequences of the whole step); |o_i| = sum_t M_it."""
    return (_masked(loss, mask).sum(-1) / mask.sum(-1).clamp(min=1)).sum() / num_seqs


@LOSS_AGGREGATIONS.register("seq-mean-token-sum")
def seq_mean_token_sum(loss: Tensor, mask: Tensor, num_tokens: float, num_seqs: float,
                       norm_length: float | None) -> Tensor:
    """sum_{i,t} L_it M_it / (sequences of the whole step)."""
    return _masked(loss, mask).sum() / num_seqs


@LOSS_AGGREGATIONS.register("seq-mean-token-sum-norm")
def seq_mean_token_sum_norm(loss: Tensor, mask: Tensor, num_tokens: float, num_seqs: float,
                            norm_length: float | None) -> Tensor:
    """Dr. GRPO (Liu et al., 2025): sum_{i,t} L_it M_it / norm_length / (sequences of the whole step),
    a constant normaliser that does not favour long or short responses."""
    if not norm_length:
        raise ValueError("seq-mean-token-sum-norm needs norm_length (loss.norm_length or the max response length)")
    return _masked(loss, mask).sum() / norm_length / num_seqs


def aggregate_loss(loss: Tensor, mask: Tensor, mode: str, *, num_tokens: float, num_seqs: float,
                   norm_length: float | None = None) -> Tensor:
    """Reduce a [B, T] per-token loss to a scalar with the aggregation named `mode`.

    num_tokens (sum of the mask) and num_seqs (the rows with at least one loss token: a fully masked or rejected
    row is not in a sequence mean) count the whole optimizer step, across micro-batches and learners,
    so that gradient accumulation leaves loss and gradient unchanged; both must be > 0.
    """
    return LOSS_AGGREGATIONS.get(mode)(loss, mask.to(loss.dtype), num_tokens, num_seqs, norm_length)
