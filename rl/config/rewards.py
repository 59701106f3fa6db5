"""The `rewards` list and `reward_policy`: which reward functions score a sample, and what a failing one does.

The built-in names are checked against rl.core.registry.REWARDS (filled by rewards/*.py, read without importing
them) and the `rlvr.rewards` entry point group; a dotted-path `fn` is imported only when the trainer loads it.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Mapping
from dataclasses import dataclass, field
from math import isfinite
from typing import Any

from rl.config.errors import ANY_ON_RESUME, ConfigError, check
from rl.core.registry import REWARDS

ENTRY_POINT_GROUP = "rlvr.rewards"


def entry_points() -> dict[str, importlib.metadata.EntryPoint]:
    return {ep.name: ep for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}


def known_rewards() -> list[str]:
    """Built-in names and the names installed packages register under the `rlvr.rewards` entry point group."""
    return sorted(set(REWARDS.names()) | set(entry_points()))


@dataclass
class RewardActorConfig:
    """Resources of a class-based reward, which runs as Ray actors."""

    replicas: int = 1  # actors; a batch is split into contiguous shards, one per actor; 0: one instance, in-process
    num_cpus: float = 1.0
    num_gpus: float = 0.0


@dataclass
class RewardSpec:
    name: str | None = None  # a built-in (math_verify, format, knowrl, ...) or an entry point of group rlvr.rewards
    fn: str | None = None  # or "my_pkg.my_mod:my_reward" or "path/to/file.py:my_reward" (a function or a class)
    weight: float = 1.0
    kwargs: dict[str, Any] = field(default_factory=dict)  # keyword arguments of the function / the class constructor
    label: str | None = None  # name in the metrics; default: name or the function's __name__
    per_sample: bool = False  # fn(prompt, completion, **row) -> value, called concurrently over the samples
    max_concurrency: int = 16  # per_sample: calls in flight at once
    actor: RewardActorConfig = field(default_factory=RewardActorConfig)  # a class: its Ray actors

    def check(self, key: str) -> None:
        """The checks that need no import; a ConfigError (a ValueError) naming `key` (rewards[i])."""
        if (self.name is None) == (self.fn is None):
            raise ConfigError(f"{key}: give exactly one of name (a built-in) or fn (a dotted path)")
        if not isinstance(self.kwargs, Mapping):
            raise ConfigError(f"{key}.kwargs must be a mapping, got {type(self.kwargs).__name__}")
        if isinstance(self.weight, bool) or not isinstance(self.weight, (int, float)) or not isfinite(self.weight):
            raise ConfigError(f"{key}.weight must be a finite number, got {self.weight!r}")
        if not (isinstance(self.max_concurrency, int) and self.max_concurrency >= 1):
            raise ConfigError(f"{key}.max_concurrency must be an integer >= 1, got {self.max_concurrency!r}")
        a = self.actor
        if not (a.replicas >= 0 and a.num_cpus >= 0 and a.num_gpus >= 0):
            raise ConfigError(f"{key}.actor: replicas, num_cpus and num_gpus must be >= 0, got {a}")
        if self.name is not None and self.name not in REWARDS and self.name not in entry_points():
            raise ConfigError(f"{key}.name: unknown reward {self.name!r}; choose one of: "
                              f"{', '.join(known_rewards())}, or use fn: my_pkg.my_mod:my_fn")


@dataclass
class RewardPolicyConfig:
    """What happens when a reward function misbehaves (raises, hangs, returns NaN/inf/a non-number/the wrong count)."""

    on_error: str = "fail"  # fail: stop, showing the reward, prompt, completion, traceback | skip: drop the sample
    timeout_s: float | None = field(default=300.0, metadata=ANY_ON_RESUME)  # per call of one function on one step's
    # samples; null: no limit
    max_skip_frac: float = 0.5  # skip: stop anyway when more than this fraction of a step's samples is dropped

    def check(self, key: str) -> None:
        check(self.on_error in ("fail", "skip"), f"{key}.on_error={self.on_error!r}; choose fail or skip")
        check(self.timeout_s is None or self.timeout_s > 0, f"{key}.timeout_s must be > 0 (or null for no limit)")
        check(0 <= self.max_skip_frac <= 1, f"{key}.max_skip_frac must be in [0, 1]")
