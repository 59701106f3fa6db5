"""The method plug-ins (rl/methods) and rollout strategies (rollout/strategies.py): their hooks, by hand-computed
values, and the registries that select them."""

from __future__ import annotations

import pytest
import torch

from rl.core.batch import Batch
from rl.methods.base import Method, Methods
from rl.methods.dapo import DynamicSampling, Overlong
from rl.methods.length_penalty import LengthPenalty, kimi_length_reward


def test_kimi_length_reward_by_hand():
    lengths = torch.tensor([10, 20, 30, 7, 7])
    correct = torch.tensor([True, True, False, True, False])
    groups = torch.tensor([0, 0, 0, 1, 1])
    # group 0: min 10, max 30: lambda = 0.5, 0.0, -0.5; the wrong answer keeps min(0, lambda)
    # group 1: equal lengths: lambda = 0 for both
    assert kimi_length_reward(lengths, correct, groups).tolist() == [0.5, 0.0, -0.5, 0.0, 0.0]
    wrong_short = kimi_length_reward(torch.tensor([10, 30]), torch.tensor([False, True]), torch.tensor([3, 3]))
    assert wrong_short.tolist() == [0.0, -0.5]  # a short wrong answer earns nothing, a long right one loses


def _batch(lengths, rewards, groups, width=12):
    b = Batch.from_sequences([[1, 2]] * len(lengths), [[5] * n for n in lengths], [[-0.5] * n for n in lengths],
                             groups, 0)
    b.rewards = torch.tensor(rewards, dtype=torch.float32)
    return b


def test_length_penalty_shapes_rewards_with_its_coefficient():
    class Cfg:
        coef, correct_reward = 0.2, 1.0

    b = _batch([2, 4, 6], [1.0, 1.0, 0.0], [0, 0, 0])
    metrics = {}
    out = LengthPenalty(Cfg).shape_rewards(b, b.rewards.clone(), metrics)
    assert torch.allclose(out, torch.tensor([1.0 + 0.2 * 0.5, 1.0, 0.0 - 0.2 * 0.5]))
    assert metrics["length_penalty/mean"] == pytest.approx(0.0)


def test_dynamic_sampling_keeps_groups_whose_rewards_differ():
    class Cfg:
        max_tries = 4

    ds = DynamicSampling(Cfg)
    assert ds.rounds == 4
    assert ds.keep_group(torch.tensor([0.0, 1.0])) and not ds.keep_group(torch.tensor([1.0, 1.0]))


def test_overlong_penalty_and_truncation_mask():
    class Cfg:
        buffer, factor, mask_truncated = 2, 1.0, True

    b = _batch([2, 3, 4], [1.0, 1.0, 1.0], [0, 0, 0])
    ov = Overlong(Cfg, max_tokens=4)
    shaped = ov.shape_rewards(b, b.rewards.clone(), {})
    # lengths 2, 3, 4 with max 4, buffer 2: penalty 0, -0.5, -1 (linear over the last `buffer` tokens)
    assert torch.allclose(shaped, torch.tensor([1.0, 0.5, 0.0]))
    ov.mask_tokens(b)
    assert b.response_mask.sum(-1).tolist() == [2.0, 3.0, 0.0]  # the truncated response leaves the loss


def test_methods_run_only_the_hooks_a_method_defines():
    class Shaper(Method):
        name = "shaper"

        def shape_rewards(self, batch, rewards, metrics):
            return rewards + 1

    class Keeper(Method):
        name = "keeper"
        rounds = 3

        def keep_group(self, rewards):
            return True

    ms = Methods([Shaper(), Keeper()])
    assert [m.name for m in ms.having("shape_rewards")] == ["shaper"]
    assert [m.name for m in ms.having("keep_group")] == ["keeper"]
    assert ms.having("extra_rows") == [] and ms.rounds == 3 and Methods([]).rounds == 1


def test_every_registered_method_builds_off_by_default():
    from rl.config import Config
    from rl.methods import METHODS, Context, build_methods

    assert {"dynamic_sampling", "overlong", "kl_in_reward", "hicra", "dph", "length_penalty"} <= set(METHODS)
    assert build_methods(Config(), Context(tokenizer=None, pad_id=0)).all == []


def test_the_rollout_config_selects_one_strategy():
    from rl.config import Config
    from rollout.strategies import ROLLOUT_STRATEGIES, strategy_name

    from rl.config.rollout import AdaptiveThinkingConfig, CureConfig, SearchConfig

    r = Config().rollout
    assert strategy_name(r) == "plain"
    for name, section in (("cure", CureConfig()), ("search", SearchConfig()),
                          ("adaptive_thinking", AdaptiveThinkingConfig())):
        setattr(r, name, section)
        assert strategy_name(r) == name and name in ROLLOUT_STRATEGIES
        setattr(r, name, None)


@pytest.mark.integration
def test_length_penalty_recipe_trains_end_to_end(ray_cluster, tiny_model_path, tmp_path):
    """The README's "add a method" example, run: its recipe's section turns the plug-in on, the loop calls its hook,
    and the shaped reward is the scored reward plus coef x the group's length rewards."""
    import json

    from rl.config import load_config
    from rl.train.trainer import train
    from tests.resume_harness import tiny_overrides

    cfg = load_config("recipes/length_penalty_cpu.yaml", tiny_overrides(tiny_model_path, tmp_path / "run", steps=2) +
                      ["trainer.eval_at_start=false", "rollout.sampling.max_tokens=16"])
    assert cfg.algorithm.length_penalty.coef == 0.2
    train(cfg)
    steps = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    logged = [s for s in steps if "length_penalty/mean" in s]
    assert len(logged) == 2
    for s in logged:  # mean shaped reward = mean reward + coef * mean length reward (nothing else shapes here)
        assert s["reward/shaped_mean"] == pytest.approx(s["reward/mean"] + 0.2 * s["length_penalty/mean"], abs=1e-5)
