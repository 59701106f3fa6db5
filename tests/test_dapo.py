"""DAPO's overlong shaping and dynamic-sampling filter."""

from __future__ import annotations

import torch

from rl.dapo import informative_groups, overlong_penalty


def test_overlong_penalty_golden_values():
    lengths = torch.tensor([10, 16, 18, 20])
    assert overlong_penalty(lengths, max_length=20, buffer=4).tolist() == [0.0, 0.0, -0.5, -1.0]
    assert overlong_penalty(lengths, max_length=20, buffer=4, factor=2.0).tolist() == [0.0, 0.0, -1.0, -2.0]
    assert overlong_penalty(lengths, max_length=20, buffer=0).tolist() == [0.0] * 4


def test_informative_groups():
    rewards = torch.tensor([1.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.5])
    groups = torch.tensor([4, 4, 9, 9, 2, 2, 5])
    assert informative_groups(rewards, groups).tolist() == [False, False, True, True, False, False, False]
