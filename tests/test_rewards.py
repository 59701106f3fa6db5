"""Reward API and the built-in math rewards."""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor

import pytest

from rewards import RewardManager, RewardSpec, answers_match, extract_answer, load_reward
from rewards.answers import format_reward, math_verify_reward


@pytest.mark.parametrize(
    "text, expected",
    [
        ("so \\boxed{\\frac{1}{2}} it is", "\\frac{1}{2}"),
        ("\\boxed{x^{2}} then \\boxed{3}", "3"),
        ("work...\n#### 1,234", "1234"),
        ("The answer is 1,234.", "1234"),
        ("It drops to -7 degrees", "-7"),
        ("costs 3.50 dollars, then 2.25", "2.25"),
        ("The answer is: 18 apples. Earlier I said 4", "18"),
        ("no numbers here", None),
        ("", None),
    ],
)
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


@pytest.mark.parametrize(
    "pred, gold, ok",
    [("0.5", "\\frac{1}{2}", True), ("\\frac{1}{2}", "0.5", True), ("12", "12.0", True), ("7", "8", False),
     ("1234", "1,234", True), (None, "3", False), ("}{garbage\\", "3", False), ("\\sqrt{4}", "2", True)],
)
def test_answers_match(pred, gold, ok):
    assert answers_match(pred, gold) is ok


def test_math_verify_and_format_rewards():
    completions = ["3 + 4 = 7. The answer is 7.", "I think 8", "\\boxed{7}", "seven"]
    assert math_verify_reward(None, completions, answer=["7"] * 4) == [1.0, 0.0, 1.0, 0.0]
    assert format_reward(None, completions) == [1.0, 0.0, 1.0, 0.0]


def test_user_reward_by_dotted_path_with_kwargs():
    label, fn = load_reward(RewardSpec(fn="tests.reward_fixtures:constant", kwargs={"value": 0.25}))
    assert label == "constant" and fn(["p"], ["c", "d"]) == [0.25, 0.25]
    label, _ = load_reward(RewardSpec(fn="tests.reward_fixtures.uses_columns", label="exact"))
    assert label == "exact"


@pytest.mark.parametrize(
    "spec, words",
    [(RewardSpec(fn="tests.nope:f"), "cannot import"), (RewardSpec(fn="tests.reward_fixtures:nope"), "no attribute"),
     (RewardSpec(name="nope"), "unknown reward"), (RewardSpec(), "exactly one"),
     (RewardSpec(name="format", fn="a:b"), "exactly one")],
)
def test_bad_specs_fail_with_the_key(spec, words):
    with pytest.raises(ValueError) as e:
        load_reward(spec, index=3)
    assert "rewards[3]" in str(e.value) and words in str(e.value)


def test_weighted_sum_skips_none_like_trl():
    m = RewardManager([RewardSpec(fn="tests.reward_fixtures:half_none", weight=2.0),
                       RewardSpec(fn="tests.reward_fixtures:constant", weight=0.5, kwargs={"value": 1.0})])
    out = m(["p"] * 4, ["a", "b", "c", "d"], {})
    assert out.total.tolist() == [2.5, 0.5, 2.5, 0.5]
    assert math.isnan(out.per_function["half_none"][1])
    only_none = RewardManager([RewardSpec(fn="tests.reward_fixtures:half_none")])(["p"] * 2, ["a", "b"], {})
    assert only_none.total[0] == 1.0 and math.isnan(only_none.total[1])


def test_columns_reach_the_reward():
    m = RewardManager([RewardSpec(fn="tests.reward_fixtures:uses_columns")])
    assert m(["p"] * 2, ["4", "5"], {"answer": ["4", "4"], "other": [1, 2]}).total.tolist() == [1.0, 0.0]


@pytest.mark.parametrize("fn, words", [("wrong_length", "returned 1 values for 3 completions"),
                                       ("raises", "ZeroDivisionError")])
def test_broken_rewards_are_named(fn, words):
    m = RewardManager([RewardSpec(fn=f"tests.reward_fixtures:{fn}")])
    with pytest.raises(RuntimeError) as e:
        m(["p"] * 3, ["a", "b", "c"], {})
    assert repr(fn) in str(e.value) and words in str(e.value)


def test_math_verify_is_thread_safe():
    """math-verify's default timeout uses signal.alarm, which raises outside the main thread; ours is off."""
    completions = [f"so the answer is \\frac{{{i}}}{{2}}" if i % 3 else f"#### {i / 2}" for i in range(200)]
    golds = [str(i / 2) for i in range(200)]
    serial = math_verify_reward(None, completions, answer=golds)
    with ThreadPoolExecutor(4) as pool:
        chunks = list(pool.map(lambda k: math_verify_reward(None, completions[k::4], answer=golds[k::4]), range(4)))
    threaded = [chunks[i % 4][i // 4] for i in range(200)]
    assert threaded == serial and sum(serial) == 200
