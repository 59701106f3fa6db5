"""KL estimators, entropy and log-probs from logits."""

from __future__ import annotations

import math

import pytest
import torch

from rl.entropy import entropy_from_logits, logprobs_from_logits, masked_mean
from rl.kl import kl_penalized_rewards, kl_penalty


def test_kl_golden_values():
    logp = torch.tensor([0.0])
    ref = torch.tensor([math.log(2)])  # x = ln 2
    assert float(kl_penalty(logp, ref, "k1")) == pytest.approx(-math.log(2))
    assert float(kl_penalty(logp, ref, "k2")) == pytest.approx(math.log(2) ** 2 / 2)
    assert float(kl_penalty(logp, ref, "k3")) == pytest.approx(2 - math.log(2) - 1)


def test_k3_nonnegative_zero_at_equality_and_clamped():
    x = torch.linspace(-30, 30, 101)
    k3 = kl_penalty(torch.zeros_like(x), x, "k3")
    assert (k3 >= 0).all() and k3.max() <= 10
    assert float(kl_penalty(torch.tensor([0.3]), torch.tensor([0.3]), "k3")) == 0.0


def test_kl_in_reward_subtracts_the_sequence_sum():
    kl = torch.tensor([[0.5, 0.5, 9.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    assert torch.allclose(kl_penalized_rewards(torch.tensor([1.0]), kl, mask, 0.1), torch.tensor([0.9]))


def test_entropy_of_uniform_and_one_hot():
    v = 50
    h = entropy_from_logits(torch.zeros(2, 3, v))
    assert torch.allclose(h, torch.full((2, 3), math.log(v)), atol=1e-5)
    peaked = torch.full((1, v), -1e4)
    peaked[0, 3] = 0
    assert float(entropy_from_logits(peaked)) == pytest.approx(0.0, abs=1e-5)


def test_chunking_changes_nothing_and_matches_log_softmax():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 11, 97, generator=g, dtype=torch.bfloat16)
    labels = torch.randint(0, 97, (3, 11), generator=g)
    ref = torch.log_softmax(logits.float(), -1).gather(-1, labels[..., None]).squeeze(-1)
    assert torch.allclose(logprobs_from_logits(logits, labels, chunk_size=4), ref, atol=1e-5)
    assert logprobs_from_logits(logits, labels).dtype == torch.float32
    assert torch.allclose(entropy_from_logits(logits, chunk_size=5), entropy_from_logits(logits, chunk_size=1000))


def test_gradients_flow():
    logits = torch.randn(4, 9, requires_grad=True)
    (logprobs_from_logits(logits, torch.arange(4)).sum() + entropy_from_logits(logits).sum()).backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0


def test_masked_mean():
    x = torch.tensor([[1.0, 3.0], [5.0, 7.0]])
    m = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    assert float(masked_mean(x, m)) == pytest.approx(13 / 3)
    assert masked_mean(x, m, dim=-1).tolist() == [1.0, 6.0]
