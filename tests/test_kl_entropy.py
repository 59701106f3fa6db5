"""KL estimators, entropy and log-probs from logits, masked mean."""

from __future__ import annotations

import math

import pytest
import torch

from rl.entropy import entropy_from_logits, logprobs_from_logits, masked_mean
from rl.kl import KL_ESTIMATORS, kl_penalized_rewards, kl_penalty

LN2 = math.log(2)


@pytest.mark.parametrize("x, k1, k2, k3", [
    (LN2, -LN2, LN2**2 / 2, 2 - LN2 - 1),  # pi_ref(y) = 2 pi(y)
    (-LN2, LN2, LN2**2 / 2, 0.5 + LN2 - 1),  # pi_ref(y) = pi(y) / 2
    (0.0, 0.0, 0.0, 0.0),
])
def test_kl_golden_values(x, k1, k2, k3):
    logp = torch.tensor([-1.3])
    ref = logp + x  # x = ref_logp - logp
    for name, want in [("k1", k1), ("k2", k2), ("k3", k3)]:
        assert float(kl_penalty(logp, ref, name)) == pytest.approx(want, abs=1e-6)


def test_k3_nonnegative_zero_at_equality_and_clamped():
    x = torch.linspace(-30, 30, 121)
    k3 = kl_penalty(torch.zeros_like(x), x, "k3")
    assert (k3 >= 0).all() and float(k3.max()) == 10.0
    assert float(kl_penalty(torch.tensor([0.3]), torch.tensor([0.3]), "k3")) == 0.0
    # x is clamped to +-20 before the estimator: k1 = -x saturates at 20
    assert float(kl_penalty(torch.tensor([0.0]), torch.tensor([-100.0]), "k1")) == 20.0
    assert float(kl_penalty(torch.tensor([0.0]), torch.tensor([-100.0]), "k2")) == 200.0


@pytest.mark.parametrize("name", ["k1", "k3"])
def test_unbiased_estimators_average_to_the_kl(name):
    """E_{y~pi}[k(x)] = KL(pi || pi_ref) for k1 and k3: fixes the sign convention x = log pi_ref - log pi."""
    g = torch.Generator().manual_seed(0)
    p = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    q = torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64)
    y = torch.multinomial(p, 200_000, replacement=True, generator=g)
    estimate = kl_penalty(p.log()[y], q.log()[y], name).mean()
    exact = float((p * (p / q).log()).sum())  # 0.2749
    assert float(estimate) == pytest.approx(exact, abs=0.01)


def test_kl_estimators_registry():
    assert KL_ESTIMATORS.names() == ["k1", "k2", "k3"]
    with pytest.raises(KeyError, match="k3"):
        kl_penalty(torch.zeros(1), torch.zeros(1), "k4")


def test_kl_in_reward_subtracts_the_masked_sequence_sum():
    kl = torch.tensor([[0.5, 0.5, 9.0], [1.0, 2.0, 3.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    got = kl_penalized_rewards(torch.tensor([1.0, 2.0]), kl, mask, 0.1)
    assert torch.allclose(got, torch.tensor([1.0 - 0.1 * 1.0, 2.0 - 0.1 * 6.0]))
    assert torch.allclose(kl_penalized_rewards(torch.tensor([1.0, 2.0]), kl, mask.bool(), 0.1), got)


def test_entropy_of_uniform_and_one_hot():
    v = 50
    h = entropy_from_logits(torch.zeros(2, 3, v))
    assert h.shape == (2, 3)
    assert torch.allclose(h, torch.full((2, 3), math.log(v)), atol=1e-5)
    peaked = torch.full((1, v), -1e4)
    peaked[0, 3] = 0
    assert float(entropy_from_logits(peaked)) == pytest.approx(0.0, abs=1e-5)


def _logits(dtype=torch.float32, requires_grad=False):
    g = torch.Generator().manual_seed(0)
    logits = (3 * torch.randn(3, 11, 97, generator=g)).to(dtype).requires_grad_(requires_grad)
    labels = torch.randint(0, 97, (3, 11), generator=g)
    return logits, labels


def test_values_match_torch_references():
    logits, labels = _logits(torch.bfloat16)
    z = logits.float()
    ref_logp = torch.log_softmax(z, -1).gather(-1, labels[..., None]).squeeze(-1)
    ref_h = torch.distributions.Categorical(logits=z).entropy()
    logp, h = logprobs_from_logits(logits, labels), entropy_from_logits(logits)
    assert logp.dtype == h.dtype == torch.float32
    assert logp.shape == h.shape == (3, 11)
    assert torch.allclose(logp, ref_logp, atol=1e-5)
    assert torch.allclose(h, ref_h, atol=1e-5)
    # the learner's flat form: [M, V] logits with [M] labels
    assert torch.allclose(logprobs_from_logits(logits.reshape(-1, 97), labels.reshape(-1)), ref_logp.reshape(-1))


@pytest.mark.parametrize("chunk_size", [1, 4, 10_000])
def test_chunking_changes_neither_values_nor_gradients(chunk_size):
    def run(chunk):
        logits, labels = _logits(requires_grad=True)
        logp = logprobs_from_logits(logits, labels, chunk_size=chunk)
        h = entropy_from_logits(logits, chunk_size=chunk)
        (logp.sum() + 0.5 * h.sum()).backward()
        return logp.detach(), h.detach(), logits.grad

    for a, b in zip(run(chunk_size), run(33)):
        assert torch.allclose(a, b, rtol=1e-6, atol=1e-6)


def test_gradients_match_autograd_of_the_reference():
    logits, labels = _logits(requires_grad=True)
    (logprobs_from_logits(logits, labels, chunk_size=5).sum() + entropy_from_logits(logits, chunk_size=5).sum()).backward()
    ours = logits.grad.clone()
    logits.grad = None
    ref = torch.log_softmax(logits, -1).gather(-1, labels[..., None]).sum()
    ref = ref + torch.distributions.Categorical(logits=logits).entropy().sum()
    ref.backward()
    assert ours.abs().sum() > 0
    assert torch.allclose(ours, logits.grad, atol=1e-5)


def test_autograd_keeps_no_float32_copy_of_the_logits():
    """Chunks are recomputed in backward: what autograd saves is the bf16 logits and labels, no float32 [rows, V]."""
    logits = torch.randn(64, 97, dtype=torch.bfloat16, requires_grad=True)
    saved: list[torch.dtype] = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.dtype) or t, lambda t: t):
        h = entropy_from_logits(logits, chunk_size=8)
        logp = logprobs_from_logits(logits, torch.zeros(64, dtype=torch.long), chunk_size=8)
    assert saved and torch.float32 not in saved
    (h.sum() + logp.sum()).backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0


def test_no_grad_and_empty_inputs():
    logits, labels = _logits(requires_grad=True)
    with torch.no_grad():
        assert not logprobs_from_logits(logits, labels, chunk_size=4).requires_grad
    assert entropy_from_logits(torch.zeros(0, 7)).shape == (0,)
    assert logprobs_from_logits(torch.zeros(0, 7), torch.zeros(0, dtype=torch.long)).shape == (0,)
    with pytest.raises(ValueError, match="chunk_size"):
        entropy_from_logits(logits, chunk_size=0)


def test_masked_mean():
    x = torch.tensor([[1.0, 3.0], [5.0, 7.0]])
    m = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    assert float(masked_mean(x, m)) == pytest.approx(13 / 3)
    assert masked_mean(x, m, dim=-1).tolist() == [1.0, 6.0]
    assert masked_mean(x, m.bool(), dim=0).tolist() == [3.0, 7.0]
    assert float(masked_mean(x, torch.zeros_like(m))) == 0.0
