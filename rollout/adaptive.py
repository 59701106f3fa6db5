"""Thinking modes. Training: AdaptThink's rollout, where half of each group answers without thinking and half thinks,
decided by a forced first token. Evaluation: free choice (the block opened, the model decides), NoThinking (the
block prefilled as finished) and budget forcing (thinking cut at B tokens, then the answer).

    prompt' = prompt + open_tag                       (skipped when the chat template already opens the block)
    NoThinking sample (the first n/2): response = close_tag + generated answer, at most nothinking_max_tokens
    Thinking sample   (the other n/2): response = thinking_prefix + generated,  at most thinking_max_tokens

The forced tokens belong to the response, so the learner computes their log-probs under the current policy: that is
how the policy learns which mode to choose. Their engine log-prob is log 0.5 (the importance-sampling distribution
of the cold start: either mode with probability 1/2), the `adaptthink_is` loss reads it from the batch. When a forced
text is several tokens (a tag pair taught through the prompt, as on SmolLM2), the mode is decided by its first token:
the others are masked out of the loss (loss_mask 0).

For DeepSeek-R1-distill and Qwen3 chat templates, whose prompt ends with "<think>\\n", set append_open_tag: false
and close_tag: "</think>"; for other models, a tag pair taught through the prompt (recipes/adaptthink_cpu.yaml).
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Callable

import numpy as np

from rl.config.rollout import AdaptiveThinkingConfig, SamplingConfig
from rollout.base import Sample, continuation_seed

FORCED_LOGP = math.log(0.5)  # the cold start's importance-sampling probability of either mode


def mode_seed(seed: int, mode: int) -> int:
    return int(np.random.SeedSequence([seed, 0xADA, mode]).generate_state(1)[0])


def forced_sample(forced: list[int], forced_text: str, generated: Sample, prompt: list[int]) -> Sample:
    """A generated continuation with the forced tokens put back in front of its response."""
    k = len(forced)
    return replace(generated, prompt_ids=list(prompt), response_ids=forced + generated.response_ids,
                   logprobs=[FORCED_LOGP] + [0.0] * (k - 1) + generated.logprobs,
                   loss_mask=[1] + [0] * (k - 1) + [1] * len(generated.response_ids),
                   text=forced_text + generated.text)


def adaptive_rollout(generate: Callable, tokenizer, prompts: list[list[int]], sampling: SamplingConfig,
                     seeds: list[int], cfg: AdaptiveThinkingConfig, nothinking_frac: float = 0.5) -> list[list[Sample]]:
    """`generate(prompts, sampling, seeds)` is the fleet's. Per prompt, round(n * nothinking_frac) NoThinking samples
    first, then Thinking samples (nothinking_frac 0: all think, as the offline R_ref step wants)."""
    n_no = round(sampling.n * nothinking_frac)
    opened = opened_prompts(tokenizer, prompts, cfg)
    groups: list[list[Sample]] = [[] for _ in prompts]
    for mode, n, text, limit in ((0, n_no, cfg.close_tag, cfg.nothinking_max_tokens),
                                 (1, sampling.n - n_no, cfg.thinking_prefix, cfg.thinking_max_tokens)):
        if n == 0:
            continue
        forced = tokenizer.encode(text, add_special_tokens=False)
        if not forced:
            raise ValueError(f"rollout.adaptive_thinking: the forced text {text!r} has no tokens")
        out = generate([p + forced for p in opened], replace(sampling, n=n, max_tokens=limit - len(forced)),
                       [mode_seed(s, mode) for s in seeds])
        for g, p, samples in zip(groups, opened, out):
            g += [forced_sample(forced, text, s, p) for s in samples]
    return groups


NOTHINKING_PREFILL = "Okay, I think I have finished thinking."  # NoThinking (Ma et al., 2025)


def opened_prompts(tokenizer, prompts: list[list[int]], cfg: AdaptiveThinkingConfig) -> list[list[int]]:
    """The prompts with the thinking block opened (open_tag appended unless the chat template already opens it)."""
    return [p + tokenizer.encode(cfg.open_tag, add_special_tokens=False) if cfg.append_open_tag else list(p)
            for p in prompts]


def nothinking_rollout(generate: Callable, tokenizer, prompts: list[list[int]], sampling: SamplingConfig,
                       seeds: list[int], cfg: AdaptiveThinkingConfig,
                       prefill: str = NOTHINKING_PREFILL) -> list[list[Sample]]:
    """NoThinking: the thinking block is prefilled as finished (prefill + close_tag, part of the prompt) and the
    model writes the answer; the text graded is the answer."""
    forced = tokenizer.encode(prefill + cfg.close_tag, add_special_tokens=False)
    return generate([p + forced for p in opened_prompts(tokenizer, prompts, cfg)], sampling, seeds)


def budget_forcing_rollout(generate: Callable, tokenizer, prompts: list[list[int]], sampling: SamplingConfig,
                           seeds: list[int], cfg: AdaptiveThinkingConfig, budget: int) -> list[list[Sample]]:
    """Budget forcing (Muennighoff et al., 2025): think for at most `budget` tokens (generation stops at close_tag);
    a block still open then is closed by force (close_tag appended); every sample then writes its answer with
    `sampling.max_tokens`. The response is thinking + close_tag + answer."""
    think = generate(opened_prompts(tokenizer, prompts, cfg), replace(sampling, max_tokens=budget,
                                                                 stop=[*sampling.stop, cfg.close_tag]), seeds)
    close = tokenizer.encode(cfg.close_tag, add_special_tokens=False)
    heads = []  # (group, sample, response so far, its text)
    for gi, g in enumerate(think):
        for si, s in enumerate(g):
            closed = s.text.rstrip().endswith(cfg.close_tag)
            heads.append((gi, si, s.response_ids + ([] if closed else close),
                          s.logprobs + ([] if closed else [0.0] * len(close)), s.text + ("" if closed else cfg.close_tag)))
    answers = generate([think[gi][si].prompt_ids + ids for gi, si, ids, _, _ in heads], replace(sampling, n=1),
                       [continuation_seed(seeds[gi], si, 1) for gi, si, _, _, _ in heads])
    out = [list(g) for g in think]
    for (gi, si, ids, lps, text), (ans,) in zip(heads, answers):
        out[gi][si] = replace(think[gi][si], response_ids=ids + ans.response_ids, logprobs=lps + ans.logprobs,
                              text=text + ans.text, finish_reason=ans.finish_reason)
    return out


def free_rollout(generate: Callable, tokenizer, prompts: list[list[int]], sampling: SamplingConfig, seeds: list[int],
                 cfg: AdaptiveThinkingConfig) -> list[list[Sample]]:
    """Evaluation: the thinking block opened (append_open_tag), the model chooses whether to think."""
    return generate(opened_prompts(tokenizer, prompts, cfg), sampling, seeds)


def is_nothinking(completion: str, close_tag: str = "</think>") -> bool:
    """A response that closes the thinking block before anything else."""
    return (completion or "").lstrip().startswith(close_tag)
