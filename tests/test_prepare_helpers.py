"""The small pure helpers the offline steps and the trainer share: groups of samples split back from flat scores,
a question's pass rate, the pad id fallback."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from rl.models.chat import pad_token_id
from rl.prepare.sampling import mean_or_zero, pass_rate
from rollout.base import group_slices


def test_group_slices_match_the_cumulative_bounds():
    groups = [[1, 2, 3], [], [4], [5, 6]]
    bounds = np.cumsum([0] + [len(g) for g in groups]).tolist()
    assert group_slices(groups) == [slice(lo, hi) for lo, hi in zip(bounds, bounds[1:])]
    flat = [x for g in groups for x in g]
    assert [flat[s] for s in group_slices(groups)] == groups
    assert group_slices([]) == []


def test_pass_rate_and_mean():
    assert pass_rate([True, False, True, True]) == 0.75 and pass_rate([1.0, 0.0]) == 0.5 and pass_rate([]) == 0
    assert mean_or_zero([]) == 0.0 and mean_or_zero([1, 2]) == 1.5 and isinstance(mean_or_zero([1]), float)


def test_pad_token_id_falls_back_to_eos():
    assert pad_token_id(SimpleNamespace(pad_token_id=0, eos_token_id=2)) == 0  # 0 is a pad id, not "none"
    assert pad_token_id(SimpleNamespace(pad_token_id=None, eos_token_id=2)) == 2
