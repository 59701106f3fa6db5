"""Rollout strategies: how a step's groups of samples are produced from the fleet's `generate`.

The trainer calls one strategy, chosen by the rollout config, and knows none of them:

    groups = strategy.train(prompts, sampling, seeds, on_groups=..., subseed=...)
    groups = strategy.evaluate(prompts, sampling, seeds)

- plain: the fleet's samples (groups reach `on_groups` as each engine finishes, so scoring overlaps generation);
- cure: plain samples, then CURE's continuations from each response's critical token (rollout/cure.py), which needs
  the current policy's entropy (the learner's);
- search: the multi-turn search rollout over a knowledge source (rollout/search.py, IKEA);
- adaptive_thinking: AdaptThink's forced modes in training, the model's own choice in evaluation (rollout/adaptive.py).

A new strategy is one class here plus one registry line; `strategy_name` says which the config selects.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import replace
from typing import Callable

import numpy as np

from rl.core.registry import Registry
from rollout.adaptive import adaptive_rollout, free_rollout
from rollout.base import Sample
from rl.config.rollout import SamplingConfig
from rollout.cure import assemble_group, branch_prompt, critical_position
from rollout.search import search_rollout

CURE_KEY = 0xC0E  # seeds CURE's choice of critical tokens and its continuations apart from the first samples

ROLLOUT_STRATEGIES: Registry = Registry("rollout strategy")


def strategy_name(cfg) -> str:
    """The strategy a RolloutConfig selects (the config's validation keeps at most one of them on)."""
    return (cfg.modes() or ["plain"])[0]


class Strategy:
    """`generate(prompts, sampling, seeds, on_groups=None)` is the fleet's. `stats` collects what the strategy
    measures during a step (name -> values; the trainer logs their means and clears them)."""

    close_tag: str | None = None  # evaluation: a thinking block's closing tag, to grade only the answer

    def __init__(self, cfg, generate: Callable, tokenizer, entropy: Callable | None = None):
        self.cfg, self.generate, self.tokenizer, self.entropy = cfg, generate, tokenizer, entropy
        self.stats: dict[str, list[float]] = defaultdict(list)

    def train(self, prompts: list[list[int]], sampling: SamplingConfig, seeds: list[int],
              on_groups: Callable | None = None, subseed: Callable | None = None) -> list[list[Sample]]:
        return self.generate(prompts, sampling, seeds, on_groups=on_groups)

    def evaluate(self, prompts: list[list[int]], sampling: SamplingConfig, seeds: list[int]) -> list[list[Sample]]:
        return self.train(prompts, sampling, seeds)


ROLLOUT_STRATEGIES.register("plain")(Strategy)


@ROLLOUT_STRATEGIES.register("cure")
class CureStrategy(Strategy):
    """CURE stage 1: the current policy's entropy at every response token (`entropy(samples)` -> [N, T], aligned
    with prompt + response), one critical position per response, `rollout.cure.branches` continuations from each
    prompt + prefix; group i becomes its n1 responses and their n1 * n2 continuations. `subseed(i, *keys)` seeds
    prompt i's choices (per step, row and try: reruns repeat). Evaluation samples plainly."""

    def train(self, prompts, sampling, seeds, on_groups=None, subseed=None):
        generated = self.generate(prompts, sampling, seeds)  # scored once the groups are complete
        cure, tok = self.cfg.cure, self.tokenizer
        flat = [s for g in generated for s in g]
        entropy = self.entropy(flat)
        special, k = set(tok.all_special_ids), 0
        for key in ("branched", "prefix_len", "critical_entropy"):
            self.stats.setdefault(f"cure/{key}", [])
        points, branches = [], []  # per group: critical positions; flat: (group, sample, idx, seed)
        for gi, group in enumerate(generated):
            rng = np.random.default_rng(subseed(gi, CURE_KEY))
            points.append([])
            for si, s in enumerate(group):
                n = len(s.prompt_ids)
                h = entropy[k, n : n + len(s.response_ids)].tolist()
                idx = critical_position(h, [tok.decode([t]) for t in s.response_ids],
                                        [t in special for t in s.response_ids], cure, rng)
                points[-1].append(idx)
                self.stats["cure/branched"].append(float(idx is not None))
                if idx is not None:
                    branches.append((gi, s, idx, subseed(gi, CURE_KEY, si)))
                    self.stats["cure/prefix_len"].append(float(idx))
                    self.stats["cure/critical_entropy"].append(h[idx])
                k += 1
        if not branches:
            return generated
        max_tokens = sampling.max_tokens
        more = replace(sampling, n=cure.branches, max_tokens=max_tokens - min(b[2] for b in branches))
        kids = self.generate([branch_prompt(s, idx) for _, s, idx, _ in branches], more,
                             [seed for *_, seed in branches])
        decode = lambda ids: tok.decode(ids, skip_special_tokens=True)  # noqa: E731 (as the engines decode)
        out = []
        for gi, group in enumerate(generated):
            mine = [kid for (g, *_), kid in zip(branches, kids) if g == gi]
            out.append(assemble_group(group, points[gi], mine, max_tokens, decode))
        return out

    def evaluate(self, prompts, sampling, seeds):
        return self.generate(prompts, sampling, seeds)


@ROLLOUT_STRATEGIES.register("search")
class SearchStrategy(Strategy):
    """The search rollout over rollout.search.knowledge (indexed once, cached), in training and evaluation."""

    def __init__(self, cfg, generate, tokenizer, entropy=None):
        super().__init__(cfg, generate, tokenizer, entropy)
        from rewards.knowledge import PassageStore

        self.knowledge = PassageStore.from_config(cfg.search.knowledge)

    def retrieve(self, query: str) -> list[str]:
        return [f"{p.title}: {p.text}" for p in self.knowledge.search(query, self.cfg.search.top_k)]

    def train(self, prompts, sampling, seeds, on_groups=None, subseed=None):
        return search_rollout(self.generate, self.tokenizer, prompts, sampling, seeds, self.retrieve, self.cfg.search)


@ROLLOUT_STRATEGIES.register("adaptive_thinking")
class AdaptiveThinkingStrategy(Strategy):
    """AdaptThink: training forces half of each group into NoThinking and half into Thinking (or, with
    forced_modes off, lets the model choose); evaluation lets the model choose and grades the answer after the
    closing tag."""

    def __init__(self, cfg, generate, tokenizer, entropy=None):
        super().__init__(cfg, generate, tokenizer, entropy)
        self.close_tag = cfg.adaptive_thinking.close_tag

    def train(self, prompts, sampling, seeds, on_groups=None, subseed=None):
        at = self.cfg.adaptive_thinking
        rollout = adaptive_rollout if at.forced_modes else free_rollout
        return rollout(self.generate, self.tokenizer, prompts, sampling, seeds, at)

    def evaluate(self, prompts, sampling, seeds):
        return free_rollout(self.generate, self.tokenizer, prompts, sampling, seeds, self.cfg.adaptive_thinking)


def make_strategy(cfg, generate: Callable, tokenizer, entropy: Callable | None = None) -> Strategy:
    """The strategy the RolloutConfig `cfg` selects, over the fleet's `generate`."""
    return ROLLOUT_STRATEGIES.get(strategy_name(cfg))(cfg, generate, tokenizer, entropy)
