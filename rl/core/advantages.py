"""Advantage estimators: one advantage per sequence from its reward and its group (the samples of one prompt).

Every estimator has the signature ``fn(rewards [N], group_ids [N], cfg, lengths=None) -> advantages [N]``; the trainer
copies the sequence's advantage to each of its response tokens. ``lengths`` [N] counts each sequence's tokens in the
loss (the response mask's row sums); only statistics over tokens read it (reinforce_pp's token whitening). Group ids
are arbitrary integers: groups need not be contiguous or of equal size (dynamic sampling drops groups). Statistics
are computed in float64 and returned in the rewards' floating dtype (float32 for integer or bool rewards).

A group of one sample has no baseline; ``cfg.singleton_group`` decides its advantage for every estimator:
"zero" -> A = 0, "reward" -> A = r / (1 + eps) (what GRPO gives with mean 0 and std 1, as some frameworks do).
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import torch
from torch import Tensor

from rl.config.algorithm import SINGLETON_POLICIES, WHITEN_LEVELS, AdvantageConfig
from rl.core.registry import ADVANTAGE_ESTIMATORS


AdvantageEstimator = Callable[..., Tensor]  # (rewards, group_ids, cfg, lengths=None) -> advantages


class GroupStats(NamedTuple):
    """Per-sample statistics of the sample's group, float64, each of shape [N]."""

    size: Tensor  # n_G
    mean: Tensor  # mean_G r
    std: Tensor  # std_G r (N-1 or N denominator); 0 for a group of one


def group_stats(rewards: Tensor, group_ids: Tensor, unbiased: bool = True) -> GroupStats:
    """n_G, mean_G r = sum_G r / n_G and std_G r = sqrt(sum_G (r - mean_G)^2 / (n_G - 1 or n_G)), broadcast to samples."""
    r = rewards.to(torch.float64)
    _, group, size = torch.unique(group_ids, return_inverse=True, return_counts=True)
    size = size.to(torch.float64)
    mean = torch.zeros_like(size).index_add_(0, group, r) / size
    sq_dev = torch.zeros_like(size).index_add_(0, group, (r - mean[group]) ** 2)
    denom = (size - 1).clamp(min=1) if unbiased else size
    std = torch.where(size > 1, (sq_dev / denom).sqrt(), torch.zeros_like(sq_dev))
    return GroupStats(size[group], mean[group], std[group])


def _out_dtype(rewards: Tensor) -> torch.dtype:
    return rewards.dtype if rewards.is_floating_point() else torch.get_default_dtype()


def _with_singletons(adv: Tensor, rewards: Tensor, size: Tensor, cfg: AdvantageConfig) -> Tensor:
    """Replace the advantage of each group of one by cfg.singleton_group's value; cast to the output dtype."""
    if cfg.singleton_group not in SINGLETON_POLICIES:
        raise ValueError(f"singleton_group={cfg.singleton_group!r}; choose one of {SINGLETON_POLICIES}")
    r = rewards.to(torch.float64)
    single = torch.zeros_like(adv) if cfg.singleton_group == "zero" else r / (1 + cfg.eps)
    return torch.where(size > 1, adv, single).to(_out_dtype(rewards))


@ADVANTAGE_ESTIMATORS.register("grpo")
def grpo(rewards: Tensor, group_ids: Tensor, cfg: AdvantageConfig, lengths: Tensor | None = None) -> Tensor:
    """GRPO (Shao et al., 2024): A_i = (r_i - mean_G r) / (std_G r + eps); norm_by_std=False gives A_i = r_i - mean_G r."""
    g = group_stats(rewards, group_ids, cfg.unbiased_std)
    adv = rewards.to(torch.float64) - g.mean
    if cfg.norm_by_std:
        adv = adv / (g.std + cfg.eps)
    return _with_singletons(adv, rewards, g.size, cfg)


@ADVANTAGE_ESTIMATORS.register("dr_grpo")
def dr_grpo(rewards: Tensor, group_ids: Tensor, cfg: AdvantageConfig, lengths: Tensor | None = None) -> Tensor:
    """Dr. GRPO (Liu et al., 2025): A_i = r_i - mean_G r (no division by std_G, which up-weights near-uniform groups)."""
    g = group_stats(rewards, group_ids)
    return _with_singletons(rewards.to(torch.float64) - g.mean, rewards, g.size, cfg)


@ADVANTAGE_ESTIMATORS.register("rloo")
def rloo(rewards: Tensor, group_ids: Tensor, cfg: AdvantageConfig, lengths: Tensor | None = None) -> Tensor:
    """RLOO (Ahmadian et al., 2024): A_i = r_i - mean_{j in G, j != i} r_j = n/(n-1) (r_i - mean_G r)."""
    g = group_stats(rewards, group_ids)
    adv = g.size / (g.size - 1).clamp(min=1) * (rewards.to(torch.float64) - g.mean)
    return _with_singletons(adv, rewards, g.size, cfg)


def weighted_whiten(x: Tensor, w: Tensor, unbiased: bool, eps: float) -> Tensor:
    """(x - m) / (s + eps) with m = sum w x / W, s^2 = sum w (x - m)^2 / (W - 1 or W), W = sum w.

    With w_i = the token count of sequence i this whitens the per-token values over all tokens; w_i = 1 whitens over
    sequences. m = 0 when W = 0, and s = 0 when the denominator is not > 0.
    """
    w = w.to(x.dtype)
    total = w.sum()
    mean = (w * x).sum() / total if total > 0 else x.new_zeros(())
    dof = total - 1 if unbiased else total
    std = ((w * (x - mean) ** 2).sum() / dof).sqrt() if dof > 0 else x.new_zeros(())
    return (x - mean) / (std + eps)


@ADVANTAGE_ESTIMATORS.register("reinforce_pp")
def reinforce_pp(rewards: Tensor, group_ids: Tensor, cfg: AdvantageConfig, lengths: Tensor | None = None) -> Tensor:
    """REINFORCE++ with baseline (Hu et al., 2025, Eq. 10): a_i = r_i - mean_G r, then whitened over the batch,
    A_i = (a_i - mean_B a) / (std_B a + eps).

    cfg.whiten="token" (the default, as the paper, verl and OpenRLHF): B is every valid token of the batch, i.e. a_i
    weighted by its token count lengths_i; "sequence": B is the sequences, one weight each. Groups of one take the
    cfg.singleton_group value and are left out of B.
    """
    if cfg.whiten not in WHITEN_LEVELS:
        raise ValueError(f"algorithm.advantage.whiten={cfg.whiten!r}; choose one of {WHITEN_LEVELS}")
    if cfg.whiten == "token" and lengths is None:
        raise ValueError("reinforce_pp with whiten=token needs lengths (tokens per sequence in the loss)")
    g = group_stats(rewards, group_ids)
    a = rewards.to(torch.float64) - g.mean
    per_seq = lengths if cfg.whiten == "token" else torch.ones_like(a)
    w = torch.where(g.size > 1, per_seq.to(torch.float64), torch.zeros_like(a))
    return _with_singletons(weighted_whiten(a, w, cfg.unbiased_std, cfg.eps), rewards, g.size, cfg)


@ADVANTAGE_ESTIMATORS.register("none")
def no_normalisation(rewards: Tensor, group_ids: Tensor, cfg: AdvantageConfig,
                     lengths: Tensor | None = None) -> Tensor:
    """The reward itself, A_i = r_i (AdaptThink, whose reward is already centred on the starting model's accuracy);
    groups of one follow cfg.singleton_group like every estimator."""
    return _with_singletons(rewards.to(torch.float64), rewards, group_stats(rewards, group_ids).size, cfg)


def compute_advantages(rewards: Tensor, group_ids: Tensor, cfg: AdvantageConfig,
                       lengths: Tensor | None = None) -> Tensor:
    """The estimator named by cfg.estimator: one advantage per sequence, shape [N]; lengths [N] = tokens in the loss."""
    return ADVANTAGE_ESTIMATORS.get(cfg.estimator)(rewards, group_ids, cfg, lengths=lengths)
