"""The registry of built-in reward functions (name -> callable with TRL's signature)."""

from rl.core.registry import Registry

REWARDS: Registry = Registry("reward")
