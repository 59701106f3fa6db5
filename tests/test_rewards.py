"""Reward API and the built-in math rewards."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from rewards import RewardError, RewardManager, answers_match, extract_answer, load_reward
from rl.config.rewards import RewardActorConfig, RewardPolicyConfig, RewardSpec
from rl.core.registry import REWARDS
from rewards.answers import format_reward, math_verify_reward

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    "text, expected",
    [
        ("so \\boxed{\\frac{1}{2}} it is", "\\frac{1}{2}"),
        ("\\boxed{x^{2}} then \\boxed{\\frac{a}{\\sqrt{b}}}", "\\frac{a}{\\sqrt{b}}"),
        ("work...\n#### 1,234", "1234"),
        ("The answer is 1,234.", "1234"),
        ("the answer is $\\frac{1}{2}$.", "\\frac{1}{2}"),
        ("Answer: 42 apples", "42"),
        ("It drops to -7 degrees", "-7"),
        ("The final answer is \u221212", "-12"),  # Unicode minus
        ("costs 3.50 dollars, then 2.25", "2.25"),
        ("we reach 2.5.", "2.5"),
        ("The answer is: 18 apples. Earlier I said 4", "18"),
        ("read pages 3-7", "7"),  # a range, not -7
        ("the numbers 1,2,3", "3"),  # a list, not 123
        ("no numbers here", None),
        ("", None),
        (None, None),
    ],
)
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


@pytest.mark.parametrize(
    "pred, gold, ok",
    [("0.5", "\\frac{1}{2}", True), ("\\frac{1}{2}", "0.5", True), ("12", "12.0", True), ("7", "8", False),
     ("1234", "1,234", True), ("\\sqrt{4}", "2", True), ("x^2+2x+1", "(x+1)^2", True), ("(1,2)", "(2,1)", False),
     ("3!", "6", True), (None, "3", False), ("3", None, False), ("", "3", False), ("}{garbage\\", "3", False),
     ("\\boxed{", "3", False), ("\\frac{1}{0}", "1", False)],
)
def test_answers_match(pred, gold, ok):
    assert answers_match(pred, gold) is ok


def test_answers_that_would_hang_sympy_are_false_and_fast():
    """Without math-verify's (signal-based) timeout, sympy never returns on these; they must be refused quickly.
    Run in a child process so that a regression fails the test instead of hanging the suite."""
    code = textwrap.dedent("""
        from rewards import answers_match
        cases = ["9^{9^{9^{9}}}", "10^{10^{7}}", "\\\\frac{1}{2}^{99999999}", "e^{e^{e^{e^{e}}}}", "(10^{9})!",
                 "\\\\binom{100000}{50000}", "\\\\sum_{i=1}^{10^{9}} \\\\sin(i)", "x^{9^{9^{9}}}", "1" * 5000]
        print([answers_match(c, "3") for c in cases])
    """)
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == str([False] * 9)


def test_math_verify_and_format_rewards():
    completions = ["3 + 4 = 7. The answer is 7.", "I think 8", "\\boxed{7}", "seven", "#### 7.0", "\\boxed{}"]
    assert math_verify_reward(None, completions, answer=["7"] * 6, other=[0] * 6) == [1.0, 0.0, 1.0, 0.0, 1.0, 0.0]
    assert format_reward(None, completions) == [1.0, 0.0, 1.0, 0.0, 1.0, 0.0]
    assert math_verify_reward(None, ["\\boxed{1/2}"] * 3, answer=["0.5", 0.5, None]) == [1.0, 1.0, 0.0]
    # TRL's conversational form: a completion is a list of messages
    assert math_verify_reward(None, [[{"role": "assistant", "content": "\\boxed{3}"}]], answer=["3"]) == [1.0]
    assert set(REWARDS.names()) >= {"math_verify", "format"}


def test_user_reward_by_dotted_path_with_kwargs():
    label, fn = load_reward(RewardSpec(fn="tests.reward_fixtures:constant", kwargs={"value": 0.25}))
    assert label == "constant" and fn(["p"], ["c", "d"], {}) == [0.25, 0.25]
    label, _ = load_reward(RewardSpec(fn="tests.reward_fixtures.uses_columns", label="exact"))
    assert label == "exact"
    m = RewardManager([RewardSpec(fn="tests.reward_fixtures:constant", kwargs={"value": 0.25}, weight=2.0)])
    assert m(["p"] * 2, ["a", "b"], {"answer": ["1", "2"]}).total.tolist() == [0.5, 0.5]


@pytest.mark.parametrize(
    "spec, words",
    [(RewardSpec(fn="tests.nope:f"), "cannot import"), (RewardSpec(fn="tests.reward_fixtures:nope"), "no attribute"),
     (RewardSpec(fn="tests_reward_fixtures_nodots"), "package.module:function"),
     (RewardSpec(name="nope"), "unknown reward"), (RewardSpec(), "exactly one"),
     (RewardSpec(name="format", fn="a:b"), "exactly one"), (RewardSpec(name="format", weight=float("nan")), "weight"),
     (RewardSpec(name="format", kwargs=[1]), "kwargs")],
)
def test_bad_specs_fail_with_the_key(spec, words):
    with pytest.raises(ValueError) as e:
        load_reward(spec, index=3)
    assert "rewards[3]" in str(e.value) and words in str(e.value)


def test_a_broken_user_module_is_named(tmp_path, monkeypatch):
    (tmp_path / "broken_reward_mod.py").write_text("raise RuntimeError('bad import-time code')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ValueError) as e:
        RewardManager([RewardSpec(name="format"), RewardSpec(fn="broken_reward_mod:f")])
    msg = str(e.value)
    assert "rewards[1]" in msg and "broken_reward_mod" in msg and "bad import-time code" in msg


def test_validate_catches_config_errors_before_any_call():
    with pytest.raises(ValueError, match="share a label"):
        RewardManager.validate([RewardSpec(name="format"), RewardSpec(name="format")])
    with pytest.raises(ValueError, match="at least one"):
        RewardManager.validate([])
    loaded = RewardManager.validate([RewardSpec(name="format"), RewardSpec(name="format", label="f2")])
    assert [label for label, _ in loaded] == ["format", "f2"]


def test_weighted_sum_skips_none_like_trl():
    m = RewardManager([RewardSpec(fn="tests.reward_fixtures:half_none", weight=2.0),
                       RewardSpec(fn="tests.reward_fixtures:constant", weight=0.5, kwargs={"value": 1.0})])
    out = m(["p"] * 4, ["a", "b", "c", "d"], {})
    assert out.total.tolist() == [2.5, 0.5, 2.5, 0.5] and not out.failed.any()
    assert out.total.dtype == out.per_function["half_none"].dtype == torch.float32
    assert math.isnan(out.per_function["half_none"][1]) and out.per_function["constant"].tolist() == [1.0] * 4


def test_a_sample_no_reward_scores_is_an_error_or_skipped_never_zero():
    only_none = [RewardSpec(fn="tests.reward_fixtures:half_none")]
    with pytest.raises(RewardError, match="every reward function returned None") as e:
        RewardManager(only_none)(["p"] * 2, ["a", "b"], {})
    assert "completion: 'b'" in str(e.value) and "reward_policy.on_error=skip" in str(e.value)
    out = RewardManager(only_none, RewardPolicyConfig(on_error="skip"))(["p"] * 2, ["a", "b"], {})
    assert out.total[0] == 1.0 and math.isnan(out.total[1]) and out.failed.tolist() == [False, True]


def test_columns_reach_the_reward():
    m = RewardManager([RewardSpec(fn="tests.reward_fixtures:uses_columns")])
    assert m(["p"] * 2, ["4", "5"], {"answer": ["4", "4"], "other": [1, 2]}).total.tolist() == [1.0, 0.0]


def test_bools_count_as_numbers_like_in_trl():
    m = RewardManager([RewardSpec(fn="tests.reward_fixtures:returns", kwargs={"values": [True, False, 0.5]})])
    assert m(["p"] * 3, ["a", "b", "c"], {}).total.tolist() == [1.0, 0.0, 0.5]


BROKEN = [
    ("wrong_length", {}, "returned 1 values for 3 completions", [True, True, True]),
    ("raises", {}, "ZeroDivisionError: boom", [True, True, True]),
    ("fails_on", {"bad": "b"}, "KeyError: \"cannot score 'b'\"", [False, True, False]),  # found sample by sample
    ("returns", {"values": [1.0, "1.0", 0.0]}, "returned '1.0' (a str) for sample 1", [False, True, False]),
    ("returns", {"values": [1.0, float("inf"), 0.0]}, "returned inf for sample 1", [False, True, False]),
    ("returns", {"values": [float("nan"), 1.0, 0.0]}, "returned nan for sample 0", [True, False, False]),
    ("returns", {"values": None}, "returned NoneType", [True, True, True]),
    ("hangs", {"seconds": 5.0}, "did not return within 0.5 s (reward_policy.timeout_s)", [True, True, True]),
]


@pytest.mark.parametrize("fn, kwargs, words, failed", BROKEN)
def test_broken_rewards_stop_the_run_with_the_sample_and_traceback(fn, kwargs, words, failed):
    m = RewardManager([RewardSpec(name="format"), RewardSpec(fn=f"tests.reward_fixtures:{fn}", kwargs=kwargs)],
                      RewardPolicyConfig(timeout_s=0.5))
    with pytest.raises(RewardError) as e:
        m(["p"] * 3, ["a", "b", "c"], {})
    msg = str(e.value)
    assert f"reward {fn!r} failed" in msg and words in msg and "prompt: 'p'" in msg and "completion: '" in msg
    if fn in ("raises", "fails_on"):
        assert "Traceback" in msg and "reward_fixtures.py" in msg  # where in the user's code it broke


@pytest.mark.parametrize("fn, kwargs, words, failed", BROKEN)
def test_broken_rewards_skip_only_the_samples_they_fail_on(fn, kwargs, words, failed):
    m = RewardManager([RewardSpec(name="format"), RewardSpec(fn=f"tests.reward_fixtures:{fn}", kwargs=kwargs)],
                      RewardPolicyConfig(on_error="skip", timeout_s=0.5))
    t0 = time.perf_counter()
    out = m(["p"] * 3, ["a", "b", "c"], {})
    assert time.perf_counter() - t0 < 3.0  # a hanging reward is abandoned at the timeout
    assert out.failed.tolist() == failed and all(words in f.reason for f in out.failures)
    assert out.total.isnan().tolist() == failed  # never a silent zero
    ok = ~out.failed
    assert (out.total[ok] == out.per_function["format"][ok] + out.per_function[fn][ok].nan_to_num(0.0)).all()


def test_math_verify_is_thread_safe():
    """math-verify's default timeout uses signal.alarm, which fails outside the main thread (math-verify then
    quietly returns "no match"); ours is off, so 4 threads agree with a serial run, and every answer matches."""
    completions = [f"so the answer is \\frac{{{i}}}{{2}}" if i % 3 else f"#### {i / 2}" for i in range(200)]
    golds = [str(i / 2) for i in range(200)]
    serial = math_verify_reward(None, completions, answer=golds)
    with ThreadPoolExecutor(4) as pool:
        chunks = list(pool.map(lambda k: math_verify_reward(None, completions[k::4], answer=golds[k::4]), range(4)))
    threaded = [chunks[i % 4][i // 4] for i in range(200)]
    assert threaded == serial and sum(serial) == 200


def test_per_sample_and_async_rewards_get_their_row():
    prompts, completions, columns = ["p"] * 4, ["1", "2", " 3 ", "x"], {"answer": ["1", "5", "3", "4"]}
    m = RewardManager([RewardSpec(fn="tests.reward_fixtures:exact_one", per_sample=True, max_concurrency=2),
                       RewardSpec(fn="tests.reward_fixtures:exact_one_async", per_sample=True, label="a"),
                       RewardSpec(fn="tests.reward_fixtures:lengths_async", weight=0.0)])
    out = m(prompts, completions, columns)
    assert out.per_function["exact_one"].tolist() == [1.0, 0.0, 1.0, 0.0]
    assert out.per_function["a"].tolist() == [1.0, 0.0, 1.0, 0.0]
    assert out.per_function["lengths_async"].tolist() == [1.0, 1.0, 3.0, 1.0]
    assert out.extras["a/chars"].tolist() == [1.0, 1.0, 3.0, 1.0] and "a/note" not in out.extras  # numbers only
    assert out.info[2] == {"a": {"chars": 3, "note": "async"}}  # everything, for rollouts.jsonl


def test_a_per_sample_reward_fails_only_on_its_sample():
    spec = RewardSpec(fn="tests.reward_fixtures:exact_one", per_sample=True)
    out = RewardManager([spec], RewardPolicyConfig(on_error="skip"))(["p"] * 3, ["1", "boom", "1"], {"answer": [1] * 3})
    assert out.failed.tolist() == [False, True, False] and out.total[0] == 1.0
    assert "cannot score 'boom'" in out.failures[0].reason and "Traceback" in out.failures[0].reason
    with pytest.raises(RewardError, match="failed on sample 1"):
        RewardManager([spec])(["p"] * 3, ["1", "boom", "1"], {"answer": [1] * 3})


def test_extra_info_is_kept_per_sample_and_selected_with_the_samples():
    out = RewardManager([RewardSpec(fn="tests.reward_fixtures:with_extras")])(["p"] * 3, ["a", "b", "c"], {})
    assert out.total.tolist() == [1.0, 0.5, 1.0]
    assert out.extras["with_extras/searches"].tolist()[0::2] == [0.0, 2.0] and out.extras["with_extras/searches"][1].isnan()
    part = out.select(torch.tensor([2]))
    assert part.info == [{"with_extras": {"searches": 2, "facts": ["x", "x"]}}] and part.total.tolist() == [1.0]
    bad = RewardManager([RewardSpec(fn="tests.reward_fixtures:returns", kwargs={"values": [{"score": 1}]})])
    with pytest.raises(RewardError, match="without a 'reward' key"):
        bad(["p"], ["a"], {})


def test_rewards_registered_through_an_entry_point(tmp_path, monkeypatch):
    """An installed package can add rewards by name: `[project.entry-points."rlvr.rewards"] my_reward = "pkg:fn"`."""
    dist = tmp_path / "my_rlvr_rewards-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: my-rlvr-rewards\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[rlvr.rewards]\nlength_even = tests.reward_fixtures:length_parity\n"
                                           "broken_ep = tests.reward_fixtures:nope\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    from rl.config.rewards import known_rewards

    assert "length_even" in known_rewards() and "math_verify" in known_rewards()
    label, fn = load_reward(RewardSpec(name="length_even"))
    assert label == "length_even" and fn(["p"] * 2, ["ab", "abc"], {}) == [1.0, 0.0]
    with pytest.raises(ValueError, match=r"rewards\[0\]: entry point 'broken_ep'"):
        load_reward(RewardSpec(name="broken_ep"))


@pytest.mark.integration
def test_a_reward_class_runs_as_ray_actors(ray_cluster):
    spec = RewardSpec(fn="tests.reward_fixtures:LengthScorer", kwargs={"scale": 2.0},
                      actor=RewardActorConfig(replicas=2, num_cpus=0))
    m = RewardManager([spec], RewardPolicyConfig(on_error="skip"))
    m.start()
    try:
        out = m(["p"] * 4, ["a", "bb", "ccc", "dddd"], {})
        assert out.total.tolist() == [2.0, 4.0, 6.0, 8.0] and not out.failed.any()
        pids = out.extras["LengthScorer/pid"].tolist()
        assert pids[0] == pids[1] != pids[2] == pids[3] and os.getpid() not in pids  # two actors, a shard each
        out = m(["p"] * 4, ["a", "bb", "boom", "dddd"], {})
        assert out.total[[0, 1, 3]].tolist() == [2.0, 4.0, 8.0] and out.failed.tolist() == [False, False, True, False]
        assert "LengthScorer cannot score 'boom'" in out.failures[0].reason  # found sample by sample, user's message
    finally:
        m.shutdown()
    broken = RewardManager([RewardSpec(fn="tests.reward_fixtures:BrokenScorer", actor=RewardActorConfig(num_cpus=0))])
    with pytest.raises(ValueError, match="(?s)actor failed to start.*no weights for the judge"):
        broken.start()


@pytest.mark.integration
def test_the_custom_reward_example_runs(ray_cluster):
    """examples/custom_reward.yaml (the README's example): rewards loaded from a file path, a per-sample function and
    a class whose code reaches its Ray actor by value."""
    from rl.config import load_config

    cfg = load_config(str(ROOT / "examples" / "custom_reward.yaml"), [])
    m = RewardManager(cfg.rewards, cfg.reward_policy)
    m.start()
    try:
        out = m(["p"] * 2, ["3 + 4 = 7. The answer is 7.", "I think 8"], {"answer": ["7", "7"], "trainer_step": [1, 1]})
    finally:
        m.shutdown()
    assert out.per_function["math_verify"].tolist() == [1.0, 0.0] and out.per_function["shows_work"][0] == 1.0
    assert out.per_function["shows_work"][1].isnan() and out.extras["brevity/words"].tolist() == [9.0, 3.0]
    assert out.per_function["LengthJudge"].tolist() == pytest.approx([1 - 16 / 25, 1 - 22 / 25])
    assert out.total[0] == pytest.approx(1.0 + 0.1 * 1.0 + 0.2 * 1.0 + 0.1 * (1 - 16 / 25))


def test_a_reward_file_path_that_is_wrong_is_named(tmp_path):
    with pytest.raises(ValueError, match=r"rewards\[0\]: reward fn 'nope/missing.py:f': 'nope/missing.py' is not a file"):
        load_reward(RewardSpec(fn="nope/missing.py:f"))
    (tmp_path / "r.py").write_text("def f(prompts, completions, **kw):\n    return [2.0] * len(completions)\n")
    label, fn = load_reward(RewardSpec(fn=f"{tmp_path}/r.py:f"))
    assert label == "f" and fn(["p"], ["c"], {}) == [2.0]


def test_reward_state_round_trips_through_the_manager():
    specs = [RewardSpec(fn="tests.reward_fixtures:Counter", actor=RewardActorConfig(replicas=0)), RewardSpec(name="format")]
    m = RewardManager(specs)
    m(["p"] * 3, ["a", "b", "c"], {})
    assert m.state_dict() == {"Counter": {"seen": 3}}  # stateless rewards save nothing
    resumed = RewardManager(specs)
    resumed.load_state_dict(m.state_dict())
    assert resumed(["p"], ["d"], {}).per_function["Counter"].tolist() == m(["p"], ["d"], {}).per_function["Counter"].tolist() == [4.0]
