"""The methods that enter the training loop through hooks (rl/methods/base.py), in the order their hooks run.

A new method: one file here with a Method subclass and `build(cfg, ctx)` (None when its config leaves it off), and
one line in METHODS. Methods that are only a formula are registry entries in rl/core instead (advantage estimators,
policy losses, token weights, f-divergences), and rollout strategies live in rollout/strategies.py.
"""

from __future__ import annotations

from rl.methods import dapo, dph, hicra, kl_reward, length_penalty
from rl.methods.base import Context, Method, Methods

METHODS = {  # name -> build(cfg, ctx) -> Method | None
    "dynamic_sampling": dapo.build_dynamic_sampling,
    "overlong": dapo.build_overlong,
    "length_penalty": length_penalty.build,
    "kl_in_reward": kl_reward.build,
    "hicra": hicra.build,
    "dph": dph.build,
}


def build_methods(cfg, ctx: Context) -> Methods:
    """The methods `cfg` turns on."""
    return Methods([m for build in METHODS.values() if (m := build(cfg, ctx)) is not None])


__all__ = ["METHODS", "Context", "Method", "Methods", "build_methods"]
