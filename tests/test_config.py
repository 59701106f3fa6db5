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


def test_recipe_base_layers_and_errors(tmp_path):
    (tmp_path / "a.yaml").write_text("name: a\ntrainer: {total_steps: 5, prompts_per_step: 3}\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\nname: b\ntrainer: {total_steps: 9}\n")
    cfg = load_config(tmp_path / "b.yaml", ["trainer.prompts_per_step=4"])
    assert (cfg.name, cfg.trainer.total_steps, cfg.trainer.prompts_per_step) == ("b", 9, 4)  # b over a, overrides last
    assert cfg.output_dir == "runs/b"
    (tmp_path / "c.yaml").write_text("base: d.yaml\n")
    (tmp_path / "d.yaml").write_text("base: c.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(tmp_path / "c.yaml")
    (tmp_path / "e.yaml").write_text("base: missing.yaml\n")
    with pytest.raises(ConfigError, match="missing.yaml"):
        load_config(tmp_path / "e.yaml")
    (tmp_path / "f.yaml").write_text("base: 3\n")
    with pytest.raises(ConfigError, match="base must be the path"):
        load_config(tmp_path / "f.yaml")


def test_variant_recipes_extend_their_bases():
    steer, base = load_config("recipes/steer.yaml"), load_config("recipes/dapo_math.yaml")
    assert steer.algorithm.token_weights.methods == ["steer_exp"] and steer.name == "steer"
    assert steer.algorithm.loss == base.algorithm.loss and steer.rollout.max_model_len == base.rollout.max_model_len
    js = load_config("recipes/dph_js.yaml")
    assert (js.algorithm.divergence.name, js.algorithm.divergence.data) == ("js", "runs/dph_math_pi0")
    cure = load_config("recipes/cure_stage1_cpu.yaml")
    assert cure.rollout.cure.enabled and cure.rollout.sampling.n * (1 + cure.rollout.cure.branches) == 8
