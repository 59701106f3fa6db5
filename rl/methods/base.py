"""The hooks through which a paper's method enters the training loop.

A method is a class with some of these hooks and a `build(cfg, ctx)` that returns it when its config turns it on
(else None); rl/methods/__init__.py lists the methods, in the order their hooks run. The loop calls each hook at one
place, in the order of the algorithm:

    train_rows        once, before training: the rows to train on (DPH-RL: the questions pi0 has not mastered)
    keep_group        per group after scoring: drop it (DAPO's dynamic sampling); `rounds` generation rounds may refill
    shape_rewards     per step: rewards before the advantage (DAPO's overlong penalty, the KL penalty in the reward)
    mask_tokens       per step, after shaping: tokens leaving the loss (DAPO's truncated responses)
    shape_advantages  per step, after the estimator: token advantages (HICRA's planning tokens)
    extra_rows        per step, before the update: rows that join the batch (DPH-RL's pi0 samples)
    state_dict / load_state_dict   what a checkpoint keeps of the method (HICRA's fitted planning clusters)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Context:
    """What methods may use besides the config."""

    tokenizer: object
    pad_id: int
    learner: object = None  # rl.train.learner.LearnerClient, once the learner runs (set by the trainer)


class Method:
    name = ""
    rounds = 1  # generation rounds a step may take to fill its groups when keep_group drops some
    drop_reason = ""  # why keep_group drops a group, for the error when none is left

    def train_rows(self, rows, prompts: list[list[int]]):
        return rows, prompts

    def keep_group(self, rewards: torch.Tensor) -> bool:
        return True

    def shape_rewards(self, batch, rewards: torch.Tensor, metrics: dict) -> torch.Tensor:
        return rewards

    def mask_tokens(self, batch) -> None:
        pass

    def shape_advantages(self, batch, step: int, metrics: dict) -> None:
        pass

    def extra_rows(self, step: int):
        return None

    def state_dict(self) -> dict | None:
        return None

    def load_state_dict(self, state: dict) -> None:
        pass


class Methods:
    """The methods a config turns on, in hook order; `having(hook)` gives those that define that hook."""

    def __init__(self, methods: list[Method]):
        self.all = methods

    def having(self, hook: str) -> list[Method]:
        return [m for m in self.all if getattr(type(m), hook) is not getattr(Method, hook)]

    @property
    def rounds(self) -> int:
        return max([m.rounds for m in self.all], default=1)
