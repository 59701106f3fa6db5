"""Policy losses and aggregation: formulas on hand-made tensors; micro-batching never changes loss or gradient."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rl.config import ConfigError, load_config
from rl.core.losses import LOSS_AGGREGATIONS, POLICY_LOSSES, aggregate_loss, resolve_agg_mode
from rl.config.algorithm import PolicyLossConfig


def _loss(name, logp, old, adv, mask=None, **kw):
    mask = torch.ones_like(logp) if mask is None else mask
    return POLICY_LOSSES.get(name)(logp, old, adv, mask, PolicyLossConfig(name=name, **kw))


RATIOS = torch.tensor([[0.5, 0.75, 1.0, 1.25, 1.5]])
LOGP = torch.log(RATIOS)  # with old = 0, rho = these ratios
OLD = torch.zeros(1, 5)


def test_ppo_clip_positive_advantage():
    out = _loss("ppo_clip", LOGP, OLD, torch.full((1, 5), 2.0), clip_low=0.2, clip_high=0.2)
    # A > 0: L = -A min(rho, clip(rho)): only the upper bound acts
    assert torch.allclose(out.loss, -2 * torch.tensor([[0.5, 0.75, 1.0, 1.2, 1.2]]), atol=1e-6)
    assert out.clipped.tolist() == [[False, False, False, True, True]]
    assert torch.allclose(out.ratio, RATIOS)


def test_ppo_clip_negative_advantage():
    out = _loss("ppo_clip", LOGP, OLD, torch.full((1, 5), -2.0), clip_low=0.2, clip_high=0.2)
    # A < 0: L = -A max(rho, clip(rho)): only the lower bound acts
    assert torch.allclose(out.loss, 2 * torch.tensor([[0.8, 0.8, 1.0, 1.25, 1.5]]), atol=1e-6)
    assert out.clipped.tolist() == [[True, True, False, False, False]]


def test_clip_higher_is_asymmetric():
    pos = _loss("ppo_clip", LOGP, OLD, torch.ones(1, 5), clip_low=0.2, clip_high=0.28)
    neg = _loss("ppo_clip", LOGP, OLD, -torch.ones(1, 5), clip_low=0.2, clip_high=0.28)
    assert torch.allclose(pos.loss, -torch.tensor([[0.5, 0.75, 1.0, 1.25, 1.28]]), atol=1e-6)  # 1.25 now inside
    assert torch.allclose(neg.loss, torch.tensor([[0.8, 0.8, 1.0, 1.25, 1.5]]), atol=1e-6)  # lower bound unchanged


def test_clipped_tokens_get_no_gradient():
    logp = LOGP.clone().requires_grad_(True)
    adv = torch.tensor([[1.0, 1.0, 1.0, 1.0, -1.0]])
    out = _loss("ppo_clip", logp, OLD, adv, clip_low=0.2, clip_high=0.2)
    out.loss.sum().backward()
    # dL/dlogp = -A rho where unclipped; 0 where the clip decided (rho=1.25, 1.5 with A>0); A<0 at rho=1.5 is unclipped
    assert torch.allclose(logp.grad, torch.tensor([[-0.5, -0.75, -1.0, 0.0, 1.5]]), atol=1e-6)


def test_dual_clip_bounds_negative_advantage_loss():
    ratios = torch.tensor([[5.0, 2.0, 5.0]])
    adv = torch.tensor([[-1.0, -1.0, 1.0]])
    out = _loss("ppo_clip", torch.log(ratios), torch.zeros(1, 3), adv, dual_clip=3.0)
    # A < 0: min(max(5, 1.2), 3) = 3 and min(max(2, 1.2), 3) = 2; A > 0 untouched: -min(5, 1.2)
    assert torch.allclose(out.loss, torch.tensor([[3.0, 2.0, -1.2]]), atol=1e-6)
    assert out.clipped.tolist() == [[True, False, True]]
    plain = _loss("ppo_clip", torch.log(ratios), torch.zeros(1, 3), adv)
    assert torch.allclose(plain.loss, torch.tensor([[5.0, 2.0, -1.2]]), atol=1e-6)


@pytest.mark.parametrize("c", [1.0, 0.5])
def test_dual_clip_must_exceed_one(c):
    with pytest.raises(ValueError, match="dual_clip"):
        _loss("ppo_clip", LOGP, OLD, -torch.ones(1, 5), dual_clip=c)


@pytest.mark.parametrize("name", POLICY_LOSSES.names())
def test_ratio_one_and_constant_advantage_gives_minus_advantage(name):
    logp = torch.randn(2, 5, generator=torch.Generator().manual_seed(0))
    if name == "adaptthink_is":  # its behaviour policy gives the first (forced) token probability 1/2
        logp[:, 0] = math.log(0.5)
    adv = torch.full((2, 5), 0.7)
    out = _loss(name, logp, logp.clone(), adv)
    assert torch.allclose(out.loss, -adv)
    assert torch.allclose(out.ratio, torch.ones(2, 5))
    assert not out.clipped.any()


@pytest.mark.parametrize("name", POLICY_LOSSES.names())
def test_masked_tokens_are_exactly_zero(name):
    logp = torch.tensor([[-1.0, -2.0, float("nan")]], requires_grad=True)
    old = torch.tensor([[-1.5, -1.0, 0.0]])
    adv = torch.tensor([[1.0, 1.0, float("inf")]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    out = _loss(name, logp, old, adv, mask)
    assert out.loss[0, 2] == 0 and not out.clipped[0, 2]
    assert torch.isfinite(out.loss).all()
    aggregate_loss(out.loss, mask, "token-mean", num_tokens=2.0, num_seqs=1.0).backward()
    assert torch.isfinite(logp.grad[0, :2]).all() and logp.grad[0, :2].abs().sum() > 0


def test_gspo_uses_the_sequence_ratio_of_valid_tokens():
    old = torch.zeros(2, 4)
    logp = torch.tensor([[0.1, -0.2, 0.4, 5.0], [0.3, 0.0, 0.0, 0.0]], requires_grad=True)
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 0.0, 0.0, 0.0]])  # the 5.0 is padding
    adv = torch.tensor([[1.0] * 4, [-2.0] * 4])
    out = _loss("gspo", logp, old, adv, mask, clip_low=0.5, clip_high=0.5)
    s0, s1 = math.exp((0.1 - 0.2 + 0.4) / 3), math.exp(0.3)
    assert torch.allclose(out.ratio, torch.tensor([[s0] * 4, [s1] * 4]), atol=1e-6)
    assert torch.allclose(out.loss, torch.tensor([[-s0] * 3 + [0.0], [2 * s1, 0.0, 0.0, 0.0]]), atol=1e-6)
    out.loss.sum().backward()
    # the token-level form: d/dlogp_t [-A sg(s_i) exp(logp_t - sg(logp_t))] = -A s_i on valid tokens
    assert torch.allclose(logp.grad, torch.tensor([[-s0] * 3 + [0.0], [2 * s1, 0.0, 0.0, 0.0]]), atol=1e-6)


def test_gspo_clips_whole_sequences():
    old = torch.zeros(1, 3)
    logp = torch.tensor([[0.3, 0.3, 0.3]], requires_grad=True)  # s = e^0.3 = 1.35 > 1 + 0.2
    out = _loss("gspo", logp, old, torch.ones(1, 3))
    assert torch.allclose(out.loss, torch.full((1, 3), -1.2))
    assert out.clipped.all()
    out.loss.sum().backward()
    assert torch.equal(logp.grad, torch.zeros(1, 3))


@pytest.mark.parametrize("name, natural", [("ppo_clip", "token-mean"), ("gspo", "seq-mean-token-mean"),
                                           ("adaptthink_is", "seq-mean-token-mean")])
def test_unset_agg_mode_is_the_losses_own_and_an_explicit_one_is_kept(name, natural):
    assert PolicyLossConfig().agg_mode is None
    assert resolve_agg_mode(PolicyLossConfig(name=name)) == natural
    for mode in LOSS_AGGREGATIONS.names():
        assert resolve_agg_mode(PolicyLossConfig(name=name, agg_mode=mode)) == mode


def test_every_policy_loss_declares_a_registered_aggregation():
    for name in POLICY_LOSSES.names():
        assert POLICY_LOSSES.get(name).agg_mode in LOSS_AGGREGATIONS


def test_a_loss_that_declares_no_aggregation_gets_token_mean(monkeypatch):
    monkeypatch.setitem(POLICY_LOSSES._items, "plain", lambda *args: None)
    assert resolve_agg_mode(PolicyLossConfig(name="plain")) == "token-mean"


def test_gspo_alone_is_the_gspo_objective():
    """loss.name=gspo with nothing else: J = 1/G sum_i min(s_i A_i, clip(s_i, 1 - eps, 1 + eps) A_i), each sequence
    counted once whatever its length, and gradient 1/G sum_i (A_i s_i / |o_i|) sum_t grad logp_t (unclipped)."""
    cfg = PolicyLossConfig(name="gspo")
    old = torch.zeros(3, 4)
    logp = torch.tensor([[0.1, -0.2, 0.4, 0.0], [0.05, 0.0, 0.0, 0.0], [0.3, 0.3, 0.3, 0.3]], requires_grad=True)
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    a = [1.0, -2.0, 0.5]
    adv = torch.tensor(a)[:, None].expand(3, 4)
    out = POLICY_LOSSES.get("gspo")(logp, old, adv, mask, cfg)
    loss = aggregate_loss(out.loss, mask, resolve_agg_mode(cfg), num_tokens=float(mask.sum()), num_seqs=3.0)
    s = [math.exp(0.3 / 3), math.exp(0.05), math.exp(0.3)]  # the third is clipped to 1.2
    want = -(a[0] * s[0] + a[1] * s[1] + a[2] * 1.2) / 3
    assert float(loss.detach()) == pytest.approx(want, rel=1e-6)
    token_mean = aggregate_loss(out.loss, mask, "token-mean", num_tokens=float(mask.sum()), num_seqs=3.0)
    assert float(token_mean.detach()) != pytest.approx(want, rel=1e-3)  # the old default weighted sequences by length
    loss.backward()
    grad = torch.tensor([[-a[0] * s[0] / 3] * 3 + [0.0], [-a[1] * s[1], 0, 0, 0], [0.0] * 4]) / 3
    assert torch.allclose(logp.grad, grad, atol=1e-6)


def test_config_resolves_agg_mode_and_names_the_key():
    assert load_config(None, ["algorithm.loss.name=gspo"]).algorithm.loss.agg_mode is None
    cfg = load_config(None, ["algorithm.loss.name=gspo", "algorithm.loss.agg_mode=token-mean"])
    assert resolve_agg_mode(cfg.algorithm.loss) == "token-mean"
    with pytest.raises(ConfigError, match="algorithm.loss.agg_mode"):
        load_config(None, ["algorithm.loss.agg_mode=mean"])


def _random_case(seed: int, rows: int = 6, cols: int = 7):
    g = torch.Generator().manual_seed(seed)
    logp = torch.randn(rows, cols, generator=g, dtype=torch.float64) * 0.1 - 1
    old = logp + torch.randn(rows, cols, generator=g, dtype=torch.float64) * 0.2
    adv = torch.randn(rows, 1, generator=g, dtype=torch.float64).expand(rows, cols)
    lengths = torch.randint(0, cols + 1, (rows,), generator=g)
    lengths[0] = cols
    mask = (torch.arange(cols)[None] < lengths[:, None]).double()
    return logp, old, adv, mask


def _loss_and_grad(name: str, mode: str, seed: int, cuts: list[slice]) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum over micro-batches of aggregate_loss, backward per micro-batch (gradient accumulation)."""
    logp, old, adv, mask = _random_case(seed)
    x = logp.clone().requires_grad_(True)
    norms = dict(num_tokens=float(mask.sum()), num_seqs=float(len(mask)), norm_length=float(mask.shape[1]))
    cfg = PolicyLossConfig(name=name, clip_low=0.1, clip_high=0.15, dual_clip=2.0)
    total = torch.zeros((), dtype=torch.float64)
    for rows in cuts:
        out = POLICY_LOSSES.get(name)(x[rows], old[rows], adv[rows], mask[rows], cfg)
        part = aggregate_loss(out.loss, mask[rows], mode, **norms)
        part.backward()
        total += part.detach()
    return total, x.grad


@pytest.mark.parametrize("mode", LOSS_AGGREGATIONS.names())
@pytest.mark.parametrize("name", POLICY_LOSSES.names())
def test_three_micro_batches_equal_one_pass(mode, name):
    full_loss, full_grad = _loss_and_grad(name, mode, 0, [slice(0, 6)])
    split_loss, split_grad = _loss_and_grad(name, mode, 0, [slice(0, 2), slice(2, 3), slice(3, 6)])
    assert full_grad.abs().sum() > 0
    assert torch.allclose(full_loss, split_loss, rtol=1e-12, atol=1e-15)
    assert torch.allclose(full_grad, split_grad, rtol=1e-12, atol=1e-15)


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(1, 6), min_size=1, max_size=6), st.integers(0, 1000),
       st.sampled_from(LOSS_AGGREGATIONS.names()), st.sampled_from(POLICY_LOSSES.names()))
def test_any_split_is_invariant(sizes, seed, mode, name):
    cuts, start = [], 0
    for s in sizes:
        if start < 6:
            cuts.append(slice(start, min(6, start + s)))
            start += s
    if start < 6:
        cuts.append(slice(start, 6))
    full_loss, full_grad = _loss_and_grad(name, mode, seed, [slice(0, 6)])
    split_loss, split_grad = _loss_and_grad(name, mode, seed, cuts)
    assert torch.allclose(full_loss, split_loss, rtol=1e-12, atol=1e-15)
    assert torch.allclose(full_grad, split_grad, rtol=1e-12, atol=1e-15)


def test_aggregation_values():
    loss = torch.tensor([[1.0, 2.0, 3.0], [4.0, 9.0, 9.0], [7.0, 7.0, 7.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])  # the last row has no valid token
    n = dict(num_tokens=4.0, num_seqs=3.0, norm_length=10.0)
    assert float(aggregate_loss(loss, mask, "token-mean", **n)) == pytest.approx(10 / 4)
    assert float(aggregate_loss(loss, mask, "seq-mean-token-mean", **n)) == pytest.approx((6 / 3 + 4 / 1 + 0) / 3)
    assert float(aggregate_loss(loss, mask, "seq-mean-token-sum", **n)) == pytest.approx(10 / 3)
    assert float(aggregate_loss(loss, mask, "seq-mean-token-sum-norm", **n)) == pytest.approx(10 / 10 / 3)
    bool_mask = aggregate_loss(loss, mask.bool(), "token-mean", **n)
    assert float(bool_mask) == pytest.approx(10 / 4)


def test_aggregation_errors():
    loss, mask = torch.ones(1, 2), torch.ones(1, 2)
    with pytest.raises(ValueError, match="norm_length"):
        aggregate_loss(loss, mask, "seq-mean-token-sum-norm", num_tokens=2.0, num_seqs=1.0)
    with pytest.raises(KeyError, match="token-mean"):
        aggregate_loss(loss, mask, "mean", num_tokens=2.0, num_seqs=1.0)
