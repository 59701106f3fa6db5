"""Rollout correction: the sampler is not the learner's behaviour policy.

The rollout engine (vLLM: its own kernels, often bf16, and stale weights when asynchronous) reports log mu(y_t) for
the token it sampled; the learner computes log pi_old(y_t) for the same token with the weights that sampled it. The
policy gradient assumes y ~ pi_old, so each token carries the importance ratio

    rho_t = pi_old(y_t) / mu(y_t),       log rho_t = log pi_old(y_t) - log mu(y_t)      (no gradient)

A correction turns rho into per-token weights w (multiplying the policy loss) and a keep mask (tokens, or whole
sequences, rejected from the loss and from its normalisers). rho_i = prod_t rho_t is the sequence ratio (the sum of
log rho over the row's loss tokens):

    tis       token truncated IS (Yao et al., 2025):            w_t = min(rho_t, C)                    keep all
    seq_tis   sequence truncated IS:                            w_t = min(rho_i, C)                    keep all
    mis       sequence masked IS (Liu et al., 2025, Seq-MIS):   w_t = rho_i      keep rows with low <= rho_i <= C
    icepop    token masked IS (IcePop, Ring-1T, 2025):          w_t = rho_t      keep tokens with low <= rho_t <= C
              (the paper's band is low = 0.5, C = 5)

Only mis and icepop reject (REJECTING): they need pi_old before the update; tis and seq_tis can weight each token with
the update's own forward pass when that pass is pi_old (one epoch, one mini-batch).

Both log-probs are of the model's untempered distribution (vLLM's default raw log-probs; the learner applies no
temperature), so rho measures the numerical and staleness mismatch between two evaluations of one distribution.
A new correction is one function plus its decorator line (and its name in REJECTING if it rejects).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from rl.core.registry import ROLLOUT_CORRECTIONS

LOG_RATIO_CLAMP = 20.0  # |log rho| bound (per token and per sequence) before exp
REJECTING = ("mis", "icepop")  # corrections whose keep mask can be 0: it is applied before the update


@dataclass
class Correction:
    weights: Tensor  # [B, T] w_t on loss tokens, 0 elsewhere (and on rejected tokens)
    keep: Tensor  # [B, T] 1 on loss tokens kept, 0 on rejected ones; 1 outside the mask (nothing to reject there)
    truncated: Tensor  # [B, T] 1 on loss tokens whose weight was cut to C, 0 elsewhere


RolloutCorrection = Callable[[Tensor, Tensor, float, float], Correction]


def log_ratio(old_logp: Tensor, rollout_logp: Tensor, mask: Tensor) -> Tensor:
    """log rho_t = log pi_old - log mu on the loss tokens (0 elsewhere), clamped to +-20. [B, T] -> [B, T]."""
    return ((old_logp - rollout_logp).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP) * mask).float()


def _sequence(x: Tensor, mask: Tensor) -> Tensor:
    """log rho_i = sum_t log rho_t over the row's loss tokens, clamped to +-20, broadcast to [B, T]."""
    return x.sum(-1, keepdim=True).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP).expand_as(mask)


def _band(x: Tensor, cap: float, low: float) -> Tensor:
    """1 where low <= exp(x) <= cap."""
    inside = x <= math.log(cap)
    return inside & (x >= math.log(low)) if low > 0 else inside


def _keep(band: Tensor, mask: Tensor) -> Tensor:
    return torch.where(mask != 0, band.to(mask.dtype), torch.ones_like(mask))


def _truncate(x: Tensor, mask: Tensor, cap: float) -> Correction:
    """w = min(exp(x), C) on the loss tokens, nothing rejected."""
    limit = math.log(cap)
    return Correction(torch.exp(x.clamp(max=limit)) * mask, torch.ones_like(mask), (x > limit).to(mask.dtype) * mask)


@ROLLOUT_CORRECTIONS.register("none")
def none(x: Tensor, mask: Tensor, cap: float, low: float) -> Correction:
    """w_t = 1: no correction (the mismatch is still logged); how an asynchronous run turns TIS off."""
    return Correction(mask.clone(), torch.ones_like(mask), torch.zeros_like(mask))


@ROLLOUT_CORRECTIONS.register("tis")
def tis(x: Tensor, mask: Tensor, cap: float, low: float) -> Correction:
    """w_t = min(rho_t, C); nothing rejected (`low` is not used)."""
    return _truncate(x, mask, cap)


@ROLLOUT_CORRECTIONS.register("seq_tis")
def seq_tis(x: Tensor, mask: Tensor, cap: float, low: float) -> Correction:
    """w_t = min(rho_i, C) for every token of row i; nothing rejected (`low` is not used)."""
    return _truncate(_sequence(x, mask), mask, cap)


@ROLLOUT_CORRECTIONS.register("mis")
def mis(x: Tensor, mask: Tensor, cap: float, low: float) -> Correction:
    """w_t = rho_i on the rows with low <= rho_i <= C; the other rows are rejected (keep 0, w 0)."""
    seq = _sequence(x, mask)
    keep = _keep(_band(seq, cap, low), mask)
    return Correction(torch.exp(seq) * mask * keep, keep, torch.zeros_like(mask))


@ROLLOUT_CORRECTIONS.register("icepop")
def icepop(x: Tensor, mask: Tensor, cap: float, low: float) -> Correction:
    """w_t = rho_t on the tokens with low <= rho_t <= C; the other tokens are rejected (keep 0, w 0)."""
    keep = _keep(_band(x, cap, low), mask)
    return Correction(torch.exp(x) * mask * keep, keep, torch.zeros_like(mask))


def rollout_correction(old_logp: Tensor, rollout_logp: Tensor, mask: Tensor, name: str, cap: float,
                       low: float = 0.0) -> Correction:
    """The registered correction `name` of log rho = log pi_old - log mu over `mask`'s tokens."""
    mask = mask.float()
    return ROLLOUT_CORRECTIONS.get(name)(log_ratio(old_logp, rollout_logp, mask), mask, cap, low)


def mismatch_sums(old_logp: Tensor, rollout_logp: Tensor, mask: Tensor) -> dict[str, float]:
    """Token sums (divide by the token count) of the sampler/learner mismatch over `mask`'s tokens, y ~ mu:

        abs_log_ratio = sum_t |log rho_t|
        kl            = sum_t (rho_t - 1 - log rho_t)      k3 estimate of KL(mu || pi_old) (>= 0, unbiased)
    """
    mask = mask.float()
    x = log_ratio(old_logp, rollout_logp, mask)
    return {"abs_log_ratio": float((x.abs() * mask).sum()), "kl": float(((torch.exp(x) - 1 - x) * mask).sum())}
