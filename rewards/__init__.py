"""Rewards: TRL-style callables `fn(prompts, completions, **columns) -> list[float | None]`, per-sample and async
functions, and classes that run as Ray actors (rewards/manager.py says how each kind runs).

They are named in the config (a built-in `name`, an entry point of the `rlvr.rewards` group, or a dotted-path `fn`),
weighted, run concurrently, and each one is logged on its own. `None` means "this reward does not apply to this
sample" and is left out of the weighted sum (as in TRL); a dict {"reward": x, **extra} adds per-sample info that is
logged.
"""

from rewards import answers as _builtins  # noqa: F401  (registers math_verify and format)
from rewards import abstention, adaptthink, armed, ikea, klcf, knowrl  # noqa: F401, E401  (they register their rewards)
from rewards.answers import answers_match, extract_answer
from rewards.manager import RewardError, RewardFailure, RewardManager, RewardOutput, load_reward

__all__ = ["RewardError", "RewardFailure", "RewardManager", "RewardOutput", "answers_match", "extract_answer",
           "load_reward"]
