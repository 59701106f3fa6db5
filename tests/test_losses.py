"""Policy losses and aggregation: formulas on hand-made tensors; micro-batching never changes loss or gradient."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rl.losses import LOSS_AGGREGATIONS, POLICY_LOSSES, PolicyLossConfig, aggregate_loss


def _loss(name, logp, old, adv, **kw):
    mask = torch.ones_like(logp)
    return POLICY_LOSSES.get(name)(logp, old, adv, mask, PolicyLossConfig(name=name, **kw))


def test_ppo_clip_formula_and_clip_higher():
    old = torch.zeros(1, 4)
    logp = torch.log(torch.tensor([[0.5, 1.0, 1.25, 1.5]]))  # ratios
    out = _loss("ppo_clip", logp, old, torch.ones(1, 4), clip_low=0.2, clip_high=0.28)
    # A > 0: L = max(-r, -clip(r)) -> -min(r, clip(r)); r = 1.5 is clipped at 1.28, r = 0.5 is not (clip bound is above)
    assert torch.allclose(out.loss, torch.tensor([[-0.5, -1.0, -1.25, -1.28]]), atol=1e-6)
    assert out.clipped.tolist() == [[False, False, False, True]]
    neg = _loss("ppo_clip", logp, old, -torch.ones(1, 4), clip_low=0.2, clip_high=0.28)
    # A < 0: L = max(r, clip(r)); r = 0.5 -> 0.8 (clipped), r = 1.5 -> 1.5
    assert torch.allclose(neg.loss, torch.tensor([[0.8, 1.0, 1.25, 1.5]]), atol=1e-6)


def test_dual_clip_bounds_negative_advantage_loss():
    logp = torch.log(torch.tensor([[5.0, 2.0]]))
    out = _loss("ppo_clip", logp, torch.zeros(1, 2), -torch.ones(1, 2), dual_clip=3.0)
    assert torch.allclose(out.loss, torch.tensor([[3.0, 2.0]]))
    assert out.clipped.tolist() == [[True, False]]


def test_ratio_one_gives_minus_advantage():
    logp = torch.randn(2, 5)
    adv = torch.full((2, 5), 0.7)
    out = _loss("ppo_clip", logp, logp.clone(), adv)
    assert torch.allclose(out.loss, -adv)


def test_gspo_uses_the_sequence_ratio():
    old = torch.zeros(1, 3)
    logp = torch.tensor([[0.1, -0.2, 0.4]], requires_grad=True)
    out = _loss("gspo", logp, old, torch.ones(1, 3), clip_low=0.5, clip_high=0.5)
    s = math.exp((0.1 - 0.2 + 0.4) / 3)
    assert torch.allclose(out.ratio, torch.full((1, 3), s), atol=1e-6)
    out.loss.sum().backward()
    assert torch.allclose(logp.grad, torch.full((1, 3), -s), atol=1e-6)  # d/dlogp_t of -s_i * exp(logp_t - sg)


def _random_case(seed):
    g = torch.Generator().manual_seed(seed)
    logp = torch.randn(6, 7, generator=g, dtype=torch.float64) * 0.1 - 1
    old = logp + torch.randn(6, 7, generator=g, dtype=torch.float64) * 0.1
    adv = torch.randn(6, 1, generator=g, dtype=torch.float64).expand(6, 7)
    lengths = torch.tensor([7, 3, 5, 1, 6, 2])
    mask = (torch.arange(7)[None] < lengths[:, None]).double()
    return logp, old, adv, mask


@pytest.mark.parametrize("mode", LOSS_AGGREGATIONS.names())
@pytest.mark.parametrize("name", POLICY_LOSSES.names())
def test_micro_batches_sum_to_the_full_batch(mode, name):
    logp, old, adv, mask = _random_case(0)
    cfg = PolicyLossConfig(name=name)
    norms = dict(num_tokens=float(mask.sum()), num_seqs=6.0, norm_length=7.0)

    def loss_and_grad(rows_list):
        x = logp.clone().requires_grad_(True)
        total = 0.0
        for rows in rows_list:
            out = POLICY_LOSSES.get(name)(x[rows], old[rows], adv[rows], mask[rows], cfg)
            part = aggregate_loss(out.loss, mask[rows], mode, **norms)
            part.backward()
            total += float(part.detach())
        return total, x.grad

    full = loss_and_grad([slice(0, 6)])
    split = loss_and_grad([slice(0, 2), slice(2, 3), slice(3, 6)])
    assert full[0] == pytest.approx(split[0], rel=1e-12)
    assert torch.allclose(full[1], split[1], atol=1e-14)


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(1, 5), min_size=1, max_size=6), st.sampled_from(["token-mean", "seq-mean-token-mean"]))
def test_any_split_is_invariant(sizes, mode):
    logp, old, adv, mask = _random_case(1)
    norms = dict(num_tokens=float(mask.sum()), num_seqs=6.0, norm_length=7.0)
    cuts, start = [], 0
    for s in sizes:
        if start >= 6:
            break
        cuts.append(slice(start, min(6, start + s)))
        start += s
    if start < 6:
        cuts.append(slice(start, 6))
    out = POLICY_LOSSES.get("ppo_clip")(logp, old, adv, mask, PolicyLossConfig())
    full = aggregate_loss(out.loss, mask, mode, **norms)
    parts = sum(aggregate_loss(out.loss[c], mask[c], mode, **norms) for c in cuts)
    assert float(full) == pytest.approx(float(parts), rel=1e-12)


def test_aggregation_values():
    loss = torch.tensor([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    n = dict(num_tokens=4.0, num_seqs=2.0, norm_length=10.0)
    assert float(aggregate_loss(loss, mask, "token-mean", **n)) == pytest.approx(10 / 4)
    assert float(aggregate_loss(loss, mask, "seq-mean-token-mean", **n)) == pytest.approx((2 + 4) / 2)
    assert float(aggregate_loss(loss, mask, "seq-mean-token-sum", **n)) == pytest.approx(10 / 2)
    assert float(aggregate_loss(loss, mask, "seq-mean-token-sum-norm", **n)) == pytest.approx(10 / 20)
