"""The rollout engine interface: token ids in, sampled token ids and their log-probs out."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np
import torch

from rl.config.rollout import SamplingConfig


@dataclass
class Sample:
    """One generated response."""

    prompt_ids: list[int]
    response_ids: list[int]
    logprobs: list[float]  # log-prob of each response token under the engine's (unscaled) distribution
    finish_reason: str  # "stop" (eos or stop string) or "length" (hit max_tokens)
    text: str  # the whole answer (for a CURE continuation: the reused prefix and the new tokens)
    prefix_len: int = 0  # CURE: the last prefix_len prompt tokens are another response's tokens, not the prompt's
    loss_mask: list[int] | None = None  # per response token, 0 where the environment wrote it (retrieved passages):
    # in the sequence the model sees, but no gradient; None: every token is the model's

    @property
    def truncated(self) -> bool:
        return self.finish_reason == "length"


class RolloutEngine(ABC):
    """What every engine (vLLM, HF transformers) offers the fleet."""

    @abstractmethod
    def generate(self, prompts: list[list[int]], sampling: SamplingConfig, seeds: list[int]) -> list[list[Sample]]:
        """`sampling.n` samples for each prompt; `seeds[i]` seeds prompt i, so a rollout repeats given its seed."""

    @abstractmethod
    def update_weights(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Load new policy weights (names as in the HF model's state_dict)."""

    def is_dead(self, error: Exception) -> bool:
        """Whether `error`, raised by one of this engine's calls, means it can serve no more (a process of its own
        that died): its actor then exits, so the fleet replaces it as it replaces a dead actor."""
        return False


def continuation_seed(seed: int, sample: int, turn: int) -> int:
    """The seed of a sample's continuation in a later turn (search results, a forced answer), from its prompt's seed."""
    return int(np.random.SeedSequence([seed, sample, turn]).generate_state(1)[0])


def group_slices(groups: list[list]) -> list[slice]:
    """Where each group's items lie once the groups are flattened in order: scores of the flat samples of
    `generate`'s groups are split back per prompt with `[scores.select(s) for s in group_slices(groups)]`."""
    out, lo = [], 0
    for g in groups:
        out.append(slice(lo, lo + len(g)))
        lo += len(g)
    return out


class TransferBroken(RuntimeError):
    """A weight broadcast itself failed (a peer died or left, the network, a timeout), as opposed to the sender's own
    error between broadcasts: the fleet replaces the engines for the first and raises the second."""
