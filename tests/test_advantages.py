"""Advantage estimators against hand-computed values."""

from __future__ import annotations

import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rl.advantages import ADVANTAGE_ESTIMATORS, AdvantageConfig, compute_advantages

R = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0])
G = torch.tensor([7, 7, 7, 7, 3, 3])  # non-contiguous ids, unequal sizes


def test_grpo_unbiased_std():
    adv = compute_advantages(R, G, AdvantageConfig())
    std = math.sqrt(1 / 3)  # group 7: mean 0.5, sum sq dev 1.0, / (4 - 1)
    expected = torch.tensor([0.5 / (std + 1e-6), -0.5 / (std + 1e-6), -0.5 / (std + 1e-6), 0.5 / (std + 1e-6), 0, 0])
    assert torch.allclose(adv, expected, atol=1e-5)


def test_grpo_biased_std_and_eps():
    adv = compute_advantages(R, G, AdvantageConfig(unbiased_std=False, eps=0.1))
    assert torch.allclose(adv[:4], torch.tensor([0.5, -0.5, -0.5, 0.5]) / (0.5 + 0.1), atol=1e-6)


def test_dr_grpo_and_grpo_without_std_agree():
    a = compute_advantages(R, G, AdvantageConfig(estimator="dr_grpo"))
    b = compute_advantages(R, G, AdvantageConfig(norm_by_std=False))
    assert torch.allclose(a, b)
    assert torch.allclose(a[:4], torch.tensor([0.5, -0.5, -0.5, 0.5]))


def test_rloo_is_leave_one_out():
    adv = compute_advantages(R, G, AdvantageConfig(estimator="rloo"))
    # sample 0: 1 - mean(0, 0, 1) = 2/3 = 4/3 * (1 - 0.5)
    assert torch.allclose(adv[:4], torch.tensor([2 / 3, -2 / 3, -2 / 3, 2 / 3]), atol=1e-6)


def test_reinforce_pp_is_batch_whitened():
    adv = compute_advantages(torch.tensor([1.0, 0.0, 2.0, 0.0]), torch.tensor([0, 0, 1, 1]),
                             AdvantageConfig(estimator="reinforce_pp"))
    assert abs(float(adv.mean())) < 1e-6
    assert abs(float(adv.std()) - 1) < 1e-4
    assert adv[2] > adv[0] > 0 > adv[1] > adv[3]


def test_singleton_group_policies():
    r, g = torch.tensor([2.0, 1.0, 0.0]), torch.tensor([0, 1, 1])
    for name in ADVANTAGE_ESTIMATORS.names():
        if name == "reinforce_pp":
            continue
        assert compute_advantages(r, g, AdvantageConfig(estimator=name, singleton_group="zero"))[0] == 0
        got = compute_advantages(r, g, AdvantageConfig(estimator=name, singleton_group="reward"))[0]
        assert abs(float(got) - 2 / (1 + 1e-6)) < 1e-6


@settings(max_examples=30, deadline=None)
@given(st.lists(st.floats(-5, 5), min_size=2, max_size=8), st.sampled_from(["grpo", "dr_grpo", "rloo"]))
def test_constant_reward_group_has_zero_advantage_and_groups_center(values, name):
    r = torch.tensor(values + [3.0, 3.0, 3.0])
    g = torch.tensor([0] * len(values) + [1, 1, 1])
    adv = compute_advantages(r, g, AdvantageConfig(estimator=name))
    assert torch.allclose(adv[-3:], torch.zeros(3))
    assert abs(float(adv[: len(values)].sum())) < 1e-3
