"""DAPO's reward-side pieces (Yu et al., 2025): overlong reward shaping and the dynamic-sampling group filter."""

from __future__ import annotations

import torch

from rl.advantages import group_stats


def overlong_penalty(lengths: torch.Tensor, max_length: int, buffer: int, factor: float = 1.0) -> torch.Tensor:
    """Soft overlong punishment: min(0, -(L - (L_max - L_buf)) / L_buf) * factor; 0 when buffer == 0."""
    if buffer <= 0:
        return torch.zeros_like(lengths, dtype=torch.float32)
    over = lengths.float() - (max_length - buffer)
    return (-over / buffer).clamp(max=0.0) * factor


def informative_groups(rewards: torch.Tensor, group_ids: torch.Tensor, atol: float = 1e-8) -> torch.Tensor:
    """True for samples whose group's rewards are not all equal (a group of equal rewards has zero advantage)."""
    _, _, std = group_stats(rewards, group_ids)
    return std > atol
