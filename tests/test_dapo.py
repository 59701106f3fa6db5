"""DAPO's overlong shaping and dynamic-sampling filter."""

from __future__ import annotations

import pytest
import torch

from rl.core.advantages import compute_advantages
from rl.config.algorithm import AdvantageConfig
from rl.core.dapo import informative_groups, overlong_penalty


def test_overlong_penalty_golden_values():
    lengths = torch.tensor([10, 16, 17, 18, 20])  # L_max = 20, L_buf = 4: the ramp starts after 16
    got = overlong_penalty(lengths, max_length=20, buffer=4)
    assert got.dtype == torch.float32
    assert got.tolist() == [0.0, 0.0, -0.25, -0.5, -1.0]
    assert overlong_penalty(lengths, max_length=20, buffer=4, factor=2.0).tolist() == [0.0, 0.0, -0.5, -1.0, -2.0]
    assert overlong_penalty(lengths, max_length=20, buffer=0).tolist() == [0.0] * 5


def test_overlong_penalty_floor_and_errors():
    # the paper's third case: a length past L_max gets -1 (x factor), not a steeper value
    assert overlong_penalty(torch.tensor([22, 40]), max_length=20, buffer=4, factor=0.5).tolist() == [-0.5, -0.5]
    with pytest.raises(ValueError, match="buffer"):
        overlong_penalty(torch.tensor([1]), max_length=20, buffer=-1)


def test_informative_groups():
    rewards = torch.tensor([1.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.5, 0.3])
    groups = torch.tensor([4, 4, 9, 9, 2, 2, 5, 9])  # non-contiguous; group 5 is a singleton
    assert informative_groups(rewards, groups).tolist() == [False, False, True, True, False, False, False, True]


def test_informative_groups_tolerance_and_empty():
    g = torch.tensor([0, 0, 1, 1])
    r = torch.tensor([1.0, 1.0 + 1e-12, 0.0, 1e-3], dtype=torch.float64)
    assert informative_groups(r, g).tolist() == [False, False, True, True]
    assert informative_groups(r, g, atol=1e-2).tolist() == [False] * 4
    assert informative_groups(torch.zeros(0), torch.zeros(0, dtype=torch.long)).shape == (0,)


def test_uninformative_groups_are_those_with_zero_advantage():
    g = torch.Generator().manual_seed(0)
    rewards = torch.randint(0, 2, (40,), generator=g).float()
    groups = torch.randint(0, 12, (40,), generator=g) * 3
    adv = compute_advantages(rewards, groups, AdvantageConfig(estimator="dr_grpo"))
    keep = informative_groups(rewards, groups)
    assert keep.any() and not keep.all()
    for gid in groups.unique():
        in_g = groups == gid
        assert bool(keep[in_g].all()) == bool(adv[in_g].abs().max() > 0)
        assert bool(keep[in_g].all()) or not keep[in_g].any()


def test_mask_truncated_takes_responses_that_hit_max_tokens_out_of_the_loss():
    """algorithm.overlong.mask_truncated: a response of max_tokens tokens (cut, not finished) leaves the loss; the
    shorter ones keep their mask; without it (buffer only) the mask is left alone."""
    from rl.config.algorithm import OverlongConfig
    from rl.core.batch import Batch
    from rl.methods.dapo import Overlong

    def batch():
        responses = [[5, 6, 7, 8], [5, 6], [5, 6, 7, 8], [5]]  # max_tokens = 4: rows 0 and 2 were cut
        return Batch.from_sequences([[1, 2]] * 4, responses, [[-1.0] * len(r) for r in responses], [0, 0, 1, 1], 0)

    b = batch()
    kept = b.response_mask.clone()
    Overlong(OverlongConfig(mask_truncated=True), max_tokens=4).mask_tokens(b)
    assert b.response_mask.sum(-1).tolist() == [0.0, 2.0, 0.0, 1.0]
    assert torch.equal(b.response_mask[[1, 3]], kept[[1, 3]])
    b = batch()
    Overlong(OverlongConfig(buffer=2), max_tokens=4).mask_tokens(b)
    assert torch.equal(b.response_mask, kept)
    rewards = Overlong(OverlongConfig(buffer=2), max_tokens=4).shape_rewards(b, torch.ones(4), {})
    assert rewards.tolist() == [0.0, 1.0, 0.0, 1.0]  # 1 + (L_max - L_buf - L) / L_buf at L = 4: 1 - 1
