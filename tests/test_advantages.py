"""Advantage estimators against hand-computed values, on non-contiguous, unequal groups with a singleton."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rl.core.advantages import ADVANTAGE_ESTIMATORS, compute_advantages, group_stats
from rl.config.algorithm import AdvantageConfig
from rl.config import ConfigError, load_config

# group 7: samples 0, 2, 3, 5 (rewards 1, .5, 0, 1; mean .625); group 2: samples 1, 4 (rewards 0, 2; mean 1);
# group 5: sample 6 alone (reward 3). Ids are interleaved, not contiguous, not 0..K-1.
R = torch.tensor([1.0, 0.0, 0.5, 0.0, 2.0, 1.0, 3.0])
G = torch.tensor([7, 2, 7, 7, 2, 7, 5])
DEV = torch.tensor([0.375, -1.0, -0.125, -0.625, 1.0, 0.375, 0.0])  # r - mean_G (singleton: 0)
SQ7, SQ2 = 0.375**2 * 2 + 0.125**2 + 0.625**2, 2.0  # sums of squared deviations: 0.6875 and 2
IN7 = [0, 2, 3, 5]
IN2 = [1, 4]
EPS = 1e-6
L = torch.tensor([3, 1, 5, 2, 4, 1, 7])  # response tokens in the loss per sample (ragged)


def _adv(**kw) -> torch.Tensor:
    return compute_advantages(R, G, AdvantageConfig(**kw), lengths=L)


def test_group_stats():
    g = group_stats(R, G, unbiased=True)
    assert g.size.tolist() == [4, 2, 4, 4, 2, 4, 1]
    assert torch.allclose(g.mean, torch.tensor([0.625, 1, 0.625, 0.625, 1, 0.625, 3], dtype=torch.float64))
    assert g.std[6] == 0
    assert g.std[0] == pytest.approx(math.sqrt(SQ7 / 3))


def test_grpo_unbiased_std():
    adv = _adv()
    s7, s2 = math.sqrt(SQ7 / 3), math.sqrt(SQ2 / 1)
    assert torch.allclose(adv[IN7], DEV[IN7] / (s7 + EPS), atol=1e-6)
    assert torch.allclose(adv[IN2], DEV[IN2] / (s2 + EPS), atol=1e-6)
    assert adv[6] == 0
    assert adv[0] == pytest.approx(0.375 / 0.47871355387816905, rel=1e-5)  # written out once


def test_grpo_biased_std_and_eps():
    adv = _adv(unbiased_std=False, eps=0.1)
    s7, s2 = math.sqrt(SQ7 / 4), math.sqrt(SQ2 / 2)  # 0.41458, 1.0
    assert torch.allclose(adv[IN7], DEV[IN7] / (s7 + 0.1), atol=1e-6)
    assert torch.allclose(adv[IN2], torch.tensor([-1 / 1.1, 1 / 1.1]), atol=1e-6)


def test_dr_grpo_is_grpo_without_std():
    a = _adv(estimator="dr_grpo")
    assert torch.allclose(a, DEV)
    assert torch.equal(a, _adv(norm_by_std=False))


def test_rloo_is_leave_one_out():
    adv = _adv(estimator="rloo")
    # sample 0: 1 - mean(.5, 0, 1) = 0.5 = 4/3 * 0.375;  sample 1: 0 - 2 = -2 = 2/1 * (-1)
    assert torch.allclose(adv, torch.tensor([0.5, -2.0, -1 / 6, -5 / 6, 2.0, 0.5, 0.0]), atol=1e-6)
    for i in range(6):
        others = [j for j in range(6) if G[j] == G[i] and j != i]
        assert float(adv[i]) == pytest.approx(float(R[i] - R[others].mean()), abs=1e-6)


@pytest.mark.parametrize("unbiased", [True, False])
def test_reinforce_pp_sequence_whitening(unbiased):
    adv = _adv(estimator="reinforce_pp", whiten="sequence", unbiased_std=unbiased)
    a = DEV[:6]  # the singleton is left out of the batch statistics; mean of a is 0
    std = math.sqrt(float((a**2).sum()) / (5 if unbiased else 6))
    assert torch.allclose(adv[:6], a / (std + EPS), atol=1e-6)
    assert adv[6] == 0
    assert float(adv[:6].std(correction=int(unbiased))) == pytest.approx(1.0, abs=1e-5)
    assert torch.equal(adv, compute_advantages(R, G, AdvantageConfig(estimator="reinforce_pp", whiten="sequence",
                                                                      unbiased_std=unbiased)))  # no lengths needed


# Token whitening by hand: a = r - mean_G = [.375, -1, -.125, -.625, 1, .375] over 3+1+5+2+4+1 = 16 tokens (the
# singleton's 7 tokens are left out): mean = 2.625 / 16 = 0.1640625, sum n (a - mean)^2 = 5.9912109375,
# std = sqrt(5.9912109375 / 15) = 0.63199214 (N-1) or sqrt(5.9912109375 / 16) = 0.61192376 (N).
TOKEN_GOLDEN = {
    True: [0.33376549, -1.84189104, -0.45738234, -1.24853017, 1.32270028, 0.33376549],
    False: [0.3447115, -1.90229679, -0.47238242, -1.28947635, 1.3660789, 0.3447115],
}


@pytest.mark.parametrize("unbiased", [True, False])
def test_reinforce_pp_whitens_over_all_valid_tokens_by_default(unbiased):
    """REINFORCE++ Eq. 10 (and verl, OpenRLHF): the batch statistics are over tokens, so long responses weigh more."""
    adv = _adv(estimator="reinforce_pp", unbiased_std=unbiased)
    assert AdvantageConfig().whiten == "token"
    assert np.allclose(adv[:6].numpy(), TOKEN_GOLDEN[unbiased], atol=1e-6)
    assert adv[6] == 0
    # the same numbers from the per-token values themselves, in float64 numpy
    tokens = np.repeat(DEV[:6].double().numpy(), L[:6].numpy())
    want = (DEV[:6].double().numpy() - tokens.mean()) / (tokens.std(ddof=int(unbiased)) + EPS)
    assert np.allclose(adv[:6].numpy(), want, atol=1e-6)
    # ragged lengths move the advantages a lot against sequence whitening (-1.84 vs -1.36 for sample 1)
    seq = _adv(estimator="reinforce_pp", whiten="sequence", unbiased_std=unbiased)
    assert float((adv - seq).abs().max()) > 0.4


def test_reinforce_pp_token_whitening_reads_the_loss_mask_lengths():
    """A sequence with no tokens in the loss (a masked truncated response) leaves the token statistics; equal lengths
    give sequence whitening."""
    cfg = AdvantageConfig(estimator="reinforce_pp")
    zeroed = L.clone()
    zeroed[4] = 0
    adv = compute_advantages(R, G, cfg, lengths=zeroed)
    a = DEV[[0, 1, 2, 3, 5]].double().numpy()
    tokens = np.repeat(a, [3, 1, 5, 2, 1])
    want = (DEV[:6].double().numpy() - tokens.mean()) / (tokens.std(ddof=1) + EPS)
    assert np.allclose(adv[:6].numpy(), want, atol=1e-6)
    biased = dict(estimator="reinforce_pp", unbiased_std=False)  # with N-1, 6 sequences and 30 tokens differ
    seq = compute_advantages(R, G, AdvantageConfig(whiten="sequence", **biased))
    assert torch.allclose(compute_advantages(R, G, AdvantageConfig(**biased), lengths=torch.full((7,), 5)), seq,
                          atol=1e-6)


def test_reinforce_pp_whiten_errors_name_the_key():
    with pytest.raises(ValueError, match="algorithm.advantage.whiten"):
        _adv(estimator="reinforce_pp", whiten="batch")
    with pytest.raises(ConfigError, match="algorithm.advantage.whiten"):
        load_config(None, ["algorithm.advantage.whiten=batch"])
    assert load_config(None, ["algorithm.advantage.whiten=sequence"]).algorithm.advantage.whiten == "sequence"
    with pytest.raises(ValueError, match="lengths"):
        compute_advantages(R, G, AdvantageConfig(estimator="reinforce_pp"))


@pytest.mark.parametrize("name", ADVANTAGE_ESTIMATORS.names())
def test_singleton_group_policy_holds_for_every_estimator(name):
    zero = _adv(estimator=name, singleton_group="zero")
    reward = _adv(estimator=name, singleton_group="reward")
    assert zero[6] == 0
    assert float(reward[6]) == pytest.approx(3 / (1 + EPS), rel=1e-7)
    assert torch.equal(zero[:6], reward[:6])  # the policy touches groups of one only
    with pytest.raises(ValueError, match="singleton_group"):
        _adv(estimator=name, singleton_group="mean")


def test_dtypes_and_errors():
    assert compute_advantages(R.double(), G, AdvantageConfig()).dtype == torch.float64
    assert compute_advantages(R, G, AdvantageConfig()).dtype == torch.float32
    assert compute_advantages(torch.tensor([1, 0, 1]), torch.tensor([0, 0, 0]), AdvantageConfig()).dtype == torch.float32
    assert compute_advantages(torch.zeros(0), torch.zeros(0, dtype=torch.long), AdvantageConfig()).shape == (0,)
    with pytest.raises(KeyError, match="grpo"):
        _adv(estimator="ppo")


@settings(max_examples=30, deadline=None)
@given(
    st.lists(st.tuples(st.floats(-5, 5), st.integers(0, 4)), min_size=1, max_size=12),
    st.sampled_from(ADVANTAGE_ESTIMATORS.names()),
    st.randoms(use_true_random=False),
)
def test_permuting_samples_and_renaming_groups_commute(samples, name, rnd):
    """No estimator depends on sample order or on the group ids' values: groups are sets."""
    r = torch.tensor([s[0] for s in samples], dtype=torch.float64)
    g = torch.tensor([s[1] for s in samples])
    perm = list(range(len(samples)))
    rnd.shuffle(perm)
    perm = torch.tensor(perm)
    lengths = torch.tensor([rnd.randint(0, 9) for _ in samples])
    cfg = AdvantageConfig(estimator=name, singleton_group=rnd.choice(["zero", "reward"]),
                          whiten=rnd.choice(["token", "sequence"]))
    adv = compute_advantages(r, g, cfg, lengths=lengths)
    renamed = (g * 37 + 1000)[perm]  # an injective relabelling
    assert torch.allclose(compute_advantages(r[perm], renamed, cfg, lengths=lengths[perm]), adv[perm], atol=1e-9)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.floats(-5, 5), min_size=2, max_size=8), st.floats(-5, 5),
       st.sampled_from(["grpo", "dr_grpo", "rloo"]))
def test_constant_reward_group_has_zero_advantage_and_groups_center(values, const, name):
    r = torch.tensor(values + [const] * 3, dtype=torch.float64)
    g = torch.tensor([1] * len(values) + [0, 0, 0])
    adv = compute_advantages(r, g, AdvantageConfig(estimator=name))
    assert torch.allclose(adv[-3:], torch.zeros(3, dtype=torch.float64), atol=1e-6)
    assert abs(float(adv[: len(values)].sum())) < 1e-6 * len(values) * (1 + float(adv.abs().max()))
