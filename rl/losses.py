"""Policy losses (per token) and loss aggregation.

A policy loss maps (logp, old_logp, advantages, mask) to a per-token loss; `aggregate_loss` reduces it to a scalar
with normalisers that belong to the whole optimizer step (all micro-batches, all learners), so that splitting a batch
into micro-batches and summing their gradients gives exactly the one-pass gradient.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rl.registry import Registry


@dataclass
class PolicyLossConfig:
    name: str = "ppo_clip"  # ppo_clip | gspo
    clip_low: float = 0.2
    clip_high: float = 0.2  # DAPO clip-higher: 0.28
    dual_clip: float | None = None  # c > 1 enables dual clip for A < 0 (3.0 is usual)
    agg_mode: str = "token-mean"  # token-mean | seq-mean-token-mean | seq-mean-token-sum | seq-mean-token-sum-norm
    norm_length: int | None = None  # seq-mean-token-sum-norm's fixed length; None: rollout max_tokens


@dataclass
class PolicyLossOutput:
    loss: torch.Tensor  # [B, T] per-token loss, 0 outside the mask
    ratio: torch.Tensor  # [B, T] importance ratio used (detached)
    clipped: torch.Tensor  # [B, T] bool: the clip was active at this token


POLICY_LOSSES: Registry = Registry("policy loss")


def _clipped_objective(ratio, adv, mask, cfg: PolicyLossConfig) -> PolicyLossOutput:
    """L = max(-A rho, -A clip(rho, 1 - eps_low, 1 + eps_high)); dual clip for A < 0: L = min(L, -A c)."""
    unclipped = -adv * ratio
    clipped = -adv * ratio.clamp(1 - cfg.clip_low, 1 + cfg.clip_high)
    loss = torch.maximum(unclipped, clipped)
    is_clipped = clipped > unclipped
    if cfg.dual_clip is not None:
        lower = -adv * cfg.dual_clip
        dual = (adv < 0) & (loss > lower)
        loss = torch.where(dual, lower, loss)
        is_clipped = is_clipped | dual
    mask = mask.to(loss.dtype)
    return PolicyLossOutput(loss=loss * mask, ratio=ratio.detach(), clipped=is_clipped & mask.bool())


@POLICY_LOSSES.register("ppo_clip")
def ppo_clip(logp, old_logp, advantages, mask, cfg: PolicyLossConfig) -> PolicyLossOutput:
    """PPO clip per token (Schulman et al., 2017) with DAPO's separate low/high clip and optional dual clip:
    rho_t = exp(clamp(logp_t - logp_old_t, -20, 20)), L_t = max(-A_t rho_t, -A_t clip(rho_t, 1-eps_low, 1+eps_high))."""
    ratio = torch.exp((logp - old_logp).clamp(-20, 20))
    return _clipped_objective(ratio, advantages, mask, cfg)


@POLICY_LOSSES.register("gspo")
def gspo(logp, old_logp, advantages, mask, cfg: PolicyLossConfig) -> PolicyLossOutput:
    """GSPO (Zheng et al., 2025): sequence ratio s_i = exp(mean_t (logp - logp_old)) in its token-level gradient form
    s_it = sg(s_i) exp(logp_t - sg(logp_t)), clipped to [1 - eps_low, 1 + eps_high]; use agg_mode seq-mean-token-mean."""
    m = mask.to(logp.dtype)
    seq_log_ratio = ((logp - old_logp) * m).sum(-1) / m.sum(-1).clamp(min=1)
    seq_ratio = torch.exp(seq_log_ratio.clamp(-20, 20)).detach().unsqueeze(-1)
    ratio = seq_ratio * torch.exp(logp - logp.detach())
    return _clipped_objective(ratio, advantages, mask, cfg)


LOSS_AGGREGATIONS: Registry = Registry("loss aggregation")


@LOSS_AGGREGATIONS.register("token-mean")
def token_mean(loss, mask, num_tokens, num_seqs, norm_length):
    """sum_{i,t} L_it / (valid tokens of the whole step)."""
    return (loss * mask).sum() / num_tokens


@LOSS_AGGREGATIONS.register("seq-mean-token-mean")
def seq_mean_token_mean(loss, mask, num_tokens, num_seqs, norm_length):
    """sum_i (sum_t L_it / |o_i|) / (sequences of the whole step)."""
    return ((loss * mask).sum(-1) / mask.sum(-1).clamp(min=1)).sum() / num_seqs


@LOSS_AGGREGATIONS.register("seq-mean-token-sum")
def seq_mean_token_sum(loss, mask, num_tokens, num_seqs, norm_length):
    """sum_{i,t} L_it / (sequences of the whole step)."""
    return (loss * mask).sum() / num_seqs


@LOSS_AGGREGATIONS.register("seq-mean-token-sum-norm")
def seq_mean_token_sum_norm(loss, mask, num_tokens, num_seqs, norm_length):
    """Dr. GRPO: sum_{i,t} L_it / (norm_length * sequences of the whole step), a constant normaliser."""
    if not norm_length:
        raise ValueError("seq-mean-token-sum-norm needs algorithm.loss.norm_length (or the rollout max_tokens)")
    return (loss * mask).sum() / (norm_length * num_seqs)


def aggregate_loss(loss, mask, mode: str, *, num_tokens: float, num_seqs: float, norm_length: float | None = None):
    """Reduce a [B, T] per-token loss to a scalar; num_tokens / num_seqs count the whole optimizer step."""
    return LOSS_AGGREGATIONS.get(mode)(loss, mask.to(loss.dtype), num_tokens, num_seqs, norm_length)
