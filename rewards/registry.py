"""The registry of built-in reward functions (name -> callable with TRL's signature)."""

from rl.registry import Registry

REWARDS: Registry = Registry("reward")
