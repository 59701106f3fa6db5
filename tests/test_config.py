"""Config loading: recipes resolve, overrides apply, bad values fail early with the key named."""

from __future__ import annotations

from pathlib import Path

import pytest

from rl.config import ConfigError, load_config

RECIPES = sorted((Path(__file__).resolve().parents[1] / "recipes").glob("*.yaml"))


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_every_recipe_loads_and_validates(recipe):
    cfg = load_config(recipe)
    assert cfg.trainer.total_steps >= 1


def test_overrides_apply_with_types():
    cfg = load_config(None, ["trainer.total_steps=7", "learner.optim.lr=3e-6", "algorithm.loss.clip_high=0.28",
                             "rewards=[{name: math_verify}, {fn: 'tests.reward_fixtures:constant', weight: 0.5}]"])
    assert cfg.trainer.total_steps == 7
    assert cfg.learner.optim.lr == pytest.approx(3e-6)
    assert cfg.algorithm.loss.clip_high == pytest.approx(0.28)
    assert cfg.rewards[1].weight == 0.5
    assert cfg.output_dir == "runs/run"  # interpolation of ${name}


@pytest.mark.parametrize(
    "override, words",
    [
        ("trainer.total_stepz=3", "total_stepz"),
        ("trainer.total_steps=many", "total_steps"),
        ("algorithm.loss.name=ppo_typo", "algorithm.loss.name"),
        ("algorithm.advantage.estimator=nope", "algorithm.advantage.estimator"),
        ("algorithm.loss.dual_clip=0.5", "dual_clip"),
        ("rollout.sampling.n=1", "rollout.sampling.n"),
        ("rollout.sampling.max_tokens=4000", "rollout.max_model_len"),
        ("rewards=[{name: nope}]", "rewards[0].name"),
        ("rewards=[{}]", "rewards[0]"),
        ("trainer.total_steps", "key=value"),
    ],
)
def test_bad_values_name_the_key(override, words):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    assert words in str(e.value)


def test_missing_recipe_file():
    with pytest.raises(ConfigError, match="does not exist"):
        load_config("recipes/nope.yaml")
