"""STEER and 80/20 token weights and the DPH-RL f-divergences: golden values (each computed by hand beside its
test, from the formula in the function's docstring), invariants, and the
learner using them (statistics over the whole step, the two DPH sample kinds kept apart)."""

from __future__ import annotations

import math

import pytest
import torch

from rl.core.divergences import F_DIVERGENCES, f_divergence_loss
from rl.config.algorithm import DivergenceConfig, PolicyLossConfig, TokenWeightConfig
from rl.train.learner import Learner
from rl.config.learner import LearnerConfig, OptimConfig
from rl.core.token_weights import (
    TOKEN_WEIGHTS, TokenStats, entropy_threshold, steer_exponential_weights, steer_linear_weights, steer_magnitude,
    token_weights,
)
from tests.test_learner import make_batch


# -- STEER ---------------------------------------------------------------------------------------------------------
def test_steer_exponential_golden_values():
    # lambda = clamp(exp(-k m), lambda_min, 1), k = -ln(lambda_min) / max(max m, 0.02) (STEER, exponential mode).
    # m = [0, 0.01, 0.04], lambda_min 0.8: k = 0.22314 / 0.04 = 5.5786; exp(-0.055786) = 0.9457; exp(-0.22314) = 0.8.
    # m = [0, 0.01]: max m below the floor, k = 0.22314 / 0.02 = 11.157; exp(-0.11157) = sqrt(0.8) = 0.8944.
    ones = torch.ones(3)
    got = steer_exponential_weights(torch.tensor([0.0, 0.01, 0.04]), ones, 0.8)
    assert torch.allclose(got, torch.tensor([1.0, 0.9457, 0.8]), atol=1e-4)
    got = steer_exponential_weights(torch.tensor([0.0, 0.01]), torch.ones(2), 0.8)  # the 0.02 floor on max m
    assert torch.allclose(got, torch.tensor([1.0, 0.8944]), atol=1e-4)


def test_steer_linear_golden_values():
    # lambda = lambda_max - (m - m_min)(lambda_max - lambda_min) / (m_max - m_min) = 1.2 - 10 m for m in [0, 0.04]:
    # [1.2, 1.1, 0.8]; all m equal: (lambda_min + lambda_max) / 2 = 1.0.
    got = steer_linear_weights(torch.tensor([0.0, 0.01, 0.04]), torch.ones(3), 0.8, 1.2)
    assert torch.allclose(got, torch.tensor([1.2, 1.1, 0.8]), atol=1e-6)
    assert torch.allclose(steer_linear_weights(torch.full((4,), 0.3), torch.ones(4), 0.8, 1.2), torch.full((4,), 1.0))


def test_steer_statistics_ignore_masked_tokens():
    m = torch.tensor([0.0, 0.01, 0.04, 99.0])
    mask = torch.tensor([1.0, 1.0, 1.0, 0.0])
    assert torch.allclose(steer_exponential_weights(m, mask, 0.8)[:3], torch.tensor([1.0, 0.9457, 0.8]), atol=1e-4)
    assert torch.allclose(steer_linear_weights(m, mask, 0.8, 1.2)[:3], torch.tensor([1.2, 1.1, 0.8]), atol=1e-6)


def test_steer_magnitude_formula_and_nonfinite_to_zero():
    p, p_old, h, a = 0.3, 0.25, 1.7, -0.9
    stats = TokenStats(logp=torch.tensor([[math.log(p), 0.0]]), old_logp=torch.tensor([[math.log(p_old), -1e9]]),
                       old_entropy=torch.tensor([[h, float("nan")]]), advantages=torch.tensor([[a, 1.0]]),
                       mask=torch.tensor([[1.0, 1.0]]))
    m = steer_magnitude(stats)
    expected = abs(a / p_old * p * (1 - p) * (math.log(p) + h))
    assert m[0, 0].item() == pytest.approx(expected, rel=1e-5)
    assert m[0, 1].item() == 0.0  # NaN entropy -> Omega non-finite -> 0


def _stats(n: int = 40, seed: int = 0) -> TokenStats:
    g = torch.Generator().manual_seed(seed)
    logp = -torch.rand(2, n, generator=g) * 3
    mask = torch.ones(2, n)
    mask[1, n // 2:] = 0
    return TokenStats(logp=logp, old_logp=logp + 0.01, old_entropy=torch.rand(2, n, generator=g) * 4,
                      advantages=torch.randn(2, 1, generator=g).expand(2, n) * mask, mask=mask)


def test_weights_bounded_and_zero_off_mask():
    s = _stats()
    for name in ("steer_exp", "steer_linear"):
        w = token_weights(s, TokenWeightConfig(methods=[name]))
        valid = s.mask.bool()
        lo, hi = (0.8, 1.0) if name == "steer_exp" else (0.8, 1.2)
        assert (w[valid] >= lo - 1e-6).all() and (w[valid] <= hi + 1e-6).all(), name
        assert (w[~valid] == 0).all()
        assert w.min() < w[valid].max()  # not constant


def test_lambda_min_one_gives_all_ones():
    s = _stats()
    cfg = TokenWeightConfig(methods=["steer_exp"])
    cfg.steer.lambda_min = 1.0
    assert torch.equal(token_weights(s, cfg), s.mask)


# -- 80/20 ---------------------------------------------------------------------------------------------------------
def test_high_entropy_keeps_the_top_rho_of_valid_tokens():
    s = _stats(n=100)
    w = token_weights(s, TokenWeightConfig(methods=["high_entropy"]))
    valid = int(s.mask.sum())
    kept = int(w.sum())
    assert abs(kept - 0.2 * valid) <= 1
    assert s.old_entropy[w.bool()].min() >= s.old_entropy[s.mask.bool() & ~w.bool()].max()
    assert (w[~s.mask.bool()] == 0).all()


def test_high_entropy_rho_one_keeps_every_token():
    s = _stats()
    cfg = TokenWeightConfig(methods=["high_entropy"])
    cfg.high_entropy.rho = 1.0
    assert torch.equal(token_weights(s, cfg), s.mask)
    assert entropy_threshold(s.old_entropy, s.mask, 1.0) == -math.inf


def test_quantile_is_over_valid_tokens_only():
    h = torch.tensor([[1.0, 2.0, 3.0, 4.0, 100.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 1.0, 0.0]])
    assert entropy_threshold(h, mask, 0.5) == pytest.approx(2.5)


def test_methods_multiply_and_bad_names_fail():
    s = _stats()
    both = token_weights(s, TokenWeightConfig(methods=["steer_exp", "high_entropy"]))
    a = token_weights(s, TokenWeightConfig(methods=["steer_exp"]))
    b = token_weights(s, TokenWeightConfig(methods=["high_entropy"]))
    assert torch.allclose(both, a * b)
    assert token_weights(s, TokenWeightConfig()) is None
    with pytest.raises(KeyError, match="steer_exp"):
        TOKEN_WEIGHTS.get("steer")


# -- f-divergences -------------------------------------------------------------------------------------------------
# f at u = 2 and u = 0.5 (alpha = 0.2), by hand:
#   forward KL, f(u) = u - 1 - ln u: 2 - 1 - 0.693147 = 0.306853; 0.5 - 1 + 0.693147 = 0.193147.
#   JS, f(u) = u ln u - (u + 1) ln((u + 1) / 2): 1.386294 - 3 ln 1.5 (1.216395) = 0.169899;
#       -0.346574 - 1.5 ln 0.75 (-0.431523) = 0.084949.
#   alpha, f(u) = (u^(1-a) - (1-a) u - a) / (a (a - 1)), a (a - 1) = -0.16: (1.741101 - 1.6 - 0.2) / -0.16 = 0.368119;
#       (0.574349 - 0.4 - 0.2) / -0.16 = 0.160319.
GOLDEN = {"forward_kl": (0.3069, 0.1931), "js": (0.1699, 0.0849), "alpha": (0.3681, 0.1603)}


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_generator_golden_values(name):
    f = F_DIVERGENCES.get(name)
    got = f(torch.log(torch.tensor([2.0, 0.5], dtype=torch.float64)), DivergenceConfig(name=name, alpha=0.2))
    assert got.tolist() == pytest.approx(list(GOLDEN[name]), abs=1e-4)


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_generator_zero_with_zero_gradient_at_u_one(name):
    log_u = torch.zeros(5, dtype=torch.float64, requires_grad=True)
    value = F_DIVERGENCES.get(name)(log_u, DivergenceConfig(name=name)).sum()
    value.backward()
    assert value.item() == pytest.approx(0.0, abs=1e-12)
    assert log_u.grad.abs().max().item() == pytest.approx(0.0, abs=1e-12)
    # and positive elsewhere, finite at the clamp
    far = F_DIVERGENCES.get(name)(torch.tensor([-50.0, -1.0, 1.0, 50.0], dtype=torch.float64), DivergenceConfig())
    assert (far > 0).all() and torch.isfinite(far).all()


def test_alpha_outside_unit_interval_is_refused():
    with pytest.raises(ValueError, match="alpha"):
        F_DIVERGENCES.get("alpha")(torch.zeros(1), DivergenceConfig(alpha=1.0))


def test_f_divergence_loss_is_a_token_mean_over_masked_tokens():
    logp = torch.log(torch.tensor([[2.0, 0.5, 7.0]]))
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    got = f_divergence_loss(logp, torch.zeros_like(logp), mask, DivergenceConfig(name="forward_kl"), num_tokens=4.0)
    assert got.item() == pytest.approx((0.3069 + 0.1931) / 4, abs=1e-4)


# -- in the learner ------------------------------------------------------------------------------------------------
def _learner(path, micro=6, weights=None, divergence=None, kl=None):
    cfg = LearnerConfig(micro_batch_size=micro, optim=OptimConfig(lr=1e-3, grad_clip=0.0), num_threads=1)
    learner = Learner(path, cfg, PolicyLossConfig(), kl, total_steps=1, max_response_tokens=8,
                      weights=weights, divergence=divergence)
    learner.model.to(torch.float64)
    return learner


def _delta(learner, batch):
    before = {k: v.clone() for k, v in learner.model.state_dict().items()}
    metrics = learner.update(batch)
    return {k: learner.model.state_dict()[k] - before[k] for k in before}, metrics


def _close(a, b, atol=1e-9):
    return all(torch.allclose(a[k], b[k], atol=atol, rtol=1e-6) for k in a)


@pytest.mark.parametrize("method", ["steer_exp", "high_entropy"])
def test_batch_scope_weights_do_not_depend_on_micro_batching(tiny_model_path, method):
    w = TokenWeightConfig(methods=[method])
    w.high_entropy.rho = 0.5
    full, m = _delta(_learner(tiny_model_path, micro=6, weights=w), make_batch())
    split, _ = _delta(_learner(tiny_model_path, micro=2, weights=w), make_batch())
    plain, _ = _delta(_learner(tiny_model_path, micro=6), make_batch())
    assert _close(full, split)
    assert not _close(full, plain, atol=1e-7)  # the weights changed the update
    assert 0 < m["token_weight/mean"] < 1 and m["token_weight/reweighted_frac"] > 0
    assert {"entropy_p10", "entropy_p50", "entropy_p90"} <= m.keys()


def test_all_ones_weights_give_the_plain_update(tiny_model_path):
    w = TokenWeightConfig(methods=["high_entropy"])
    w.high_entropy.rho = 1.0
    weighted, m = _delta(_learner(tiny_model_path, weights=w), make_batch())
    plain, _ = _delta(_learner(tiny_model_path), make_batch())
    assert m["token_weight/mean"] == pytest.approx(1.0)
    assert _close(weighted, plain, atol=1e-8)  # up to the recomputed old log-probs (ratio 1 +- 1e-12)


def test_micro_scope_matches_batch_scope_for_one_micro_batch(tiny_model_path):
    batch_scope = TokenWeightConfig(methods=["steer_linear"])
    micro_scope = TokenWeightConfig(methods=["steer_linear"], scope="micro")
    a, _ = _delta(_learner(tiny_model_path, micro=6, weights=batch_scope), make_batch())
    b, _ = _delta(_learner(tiny_model_path, micro=6, weights=micro_scope), make_batch())
    c, _ = _delta(_learner(tiny_model_path, micro=2, weights=micro_scope), make_batch())
    assert _close(a, b, atol=1e-8)
    assert not _close(a, c, atol=1e-7)  # per-micro-batch min/max give other weights


def _dph_batch(rl_adv: float = 1.0):
    batch = make_batch()
    batch.divergence_mask = torch.tensor([0.0, 0.0, 0.0, 1.0, 1.0, 1.0])
    batch.init_logprobs = batch.rollout_logprobs.clone() - 0.3 * batch.response_mask  # pi0 log-probs of its samples
    batch.advantages = batch.advantages * rl_adv
    return batch


def test_dph_samples_give_no_policy_gradient_and_rl_samples_no_divergence(tiny_model_path):
    div = DivergenceConfig(name="forward_kl", eta=0.0)
    # eta = 0: the update is plain PPO on the RL rows alone, whatever the DPH rows' advantages
    batch = _dph_batch()
    batch.advantages[3:] = 100.0 * batch.response_mask[3:]
    with_dph, _ = _delta(_learner(tiny_model_path, divergence=div), batch)
    rl_only, _ = _delta(_learner(tiny_model_path), make_batch().select([0, 1, 2]))
    assert _close(with_dph, rl_only)
    # zero advantages on the RL rows: the whole update is eta * the divergence on the DPH rows; the RL rows'
    # init_logprobs do not matter
    div = DivergenceConfig(name="js", eta=0.5)
    batch = _dph_batch(rl_adv=0.0)
    a, m = _delta(_learner(tiny_model_path, divergence=div), batch)
    batch = _dph_batch(rl_adv=0.0)
    batch.init_logprobs[:3] = 5.0
    b, _ = _delta(_learner(tiny_model_path, divergence=div), batch)
    assert m["divergence"] > 0 and _close(a, b)
    assert sum(float(d.abs().sum()) for d in a.values()) > 0


def test_dph_divergence_term_is_micro_batch_invariant(tiny_model_path):
    div = DivergenceConfig(name="alpha", eta=0.3)
    a, _ = _delta(_learner(tiny_model_path, micro=6, divergence=div), _dph_batch())
    b, _ = _delta(_learner(tiny_model_path, micro=2, divergence=div), _dph_batch())
    assert _close(a, b)


def test_methods_compose_steer_and_80_20_on_dapo_clip_with_a_forward_kl_term(tiny_model_path):
    """STEER x 80/20 weights, DAPO's clip-higher and DPH's forward KL in one update: micro-batching still does not
    change it, and each part is active (weights below 1, tokens masked, a divergence term)."""
    w = TokenWeightConfig(methods=["steer_exp", "high_entropy"])
    w.high_entropy.rho = 0.5
    div = DivergenceConfig(name="forward_kl", eta=0.2)

    def learner(micro):
        lr = _learner(tiny_model_path, micro=micro, weights=w, divergence=div)
        lr.loss_cfg = PolicyLossConfig(clip_low=0.2, clip_high=0.28)
        return lr

    a, m = _delta(learner(6), _dph_batch())
    b, _ = _delta(learner(2), _dph_batch())
    assert _close(a, b)
    assert m["divergence"] > 0 and m["token_weight/masked_frac"] > 0 and m["token_weight/mean"] < 0.6
