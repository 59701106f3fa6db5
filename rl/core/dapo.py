"""DAPO's reward-side pieces (Yu et al., 2025): soft overlong punishment and the dynamic-sampling group filter."""

from __future__ import annotations

import torch
from torch import Tensor


def overlong_penalty(lengths: Tensor, max_length: int, buffer: int, factor: float = 1.0) -> Tensor:
    """Soft overlong punishment added to the reward, float32 [N]:

        R_length(L) = factor * min(0, -(L - (L_max - L_buf)) / L_buf), floored at -factor (the paper's L > L_max case).

    0 up to L_max - L_buf, then linear down to -factor at L_max; all zeros when buffer == 0 (disabled).
    """
    if buffer < 0:
        raise ValueError(f"overlong buffer must be >= 0, got {buffer}")
    if buffer == 0:
        return torch.zeros(lengths.shape, dtype=torch.float32, device=lengths.device)
    excess = lengths.to(torch.float32) - (max_length - buffer)
    return (-excess / buffer).clamp(-1.0, 0.0) * factor


def informative_groups(rewards: Tensor, group_ids: Tensor, atol: float = 1e-8) -> Tensor:
    """Dynamic sampling's keep-mask, bool [N]: True for samples whose group's rewards are not all equal,
    i.e. max_G r - min_G r > atol. A group of equal rewards (all right, all wrong, or a group of one) has zero
    advantage and gives no gradient."""
    ids, group = torch.unique(group_ids, return_inverse=True)
    r, k = rewards.to(torch.float64), ids.numel()
    hi = r.new_full((k,), -torch.inf).scatter_reduce(0, group, r, reduce="amax")
    lo = r.new_full((k,), torch.inf).scatter_reduce(0, group, r, reduce="amin")
    return (hi - lo)[group] > atol
