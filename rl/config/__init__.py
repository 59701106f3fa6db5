"""Typed configuration: one dataclass tree, loaded from a recipe YAML plus `key=value` overrides, validated at start.

A leaf package (the standard library, omegaconf, yaml and rl.core.registry only), so that reading and checking a
config imports no torch, Ray or vLLM. Each section's dataclass sits with its own checks, by area:

    algorithm.py  advantage, loss, KL, token weights, divergence, HICRA, DAPO's knobs (rl/core, rl/methods)
    data.py       data sets and prompts (rl/data)          rollout.py  engines, sampling, CURE, search (rollout/)
    learner.py    optimizer and dtypes (rl/train/learner)  rewards.py  reward specs and their failure policy
    run.py        Config, the small sections, validate     loading.py  recipes and overrides, to_dict / to_yaml
    resume.py     which keys may change on resume (field metadata {"resume": "any"})
"""

from rl.config.errors import ConfigError
from rl.config.loading import INPUT_PATHS, load_config, redact, to_dict, to_yaml
from rl.config.resume import config_changes, harmless_on_resume
from rl.config.run import Config, validate

__all__ = ["INPUT_PATHS", "Config", "ConfigError", "config_changes", "harmless_on_resume", "load_config", "redact",
           "to_dict", "to_yaml", "validate"]
