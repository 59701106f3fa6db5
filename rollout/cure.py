"""CURE (critical-token re-generation): a rollout mode that branches each response at a high-entropy position.

Stage 1 of CURE samples n1 responses per prompt, finds the policy's entropy at each response token, picks a "critical"
position idx uniformly among the `top_entropy` highest-entropy positions (never position 0, a special token, or a token
whose stripped text has fewer than `min_token_chars` characters), and samples `branches` (n2) continuations from
prompt + response[:idx]. A group is the n1 responses plus their n1 * n2 continuations. A continuation's prompt holds
the reused prefix, so its loss covers only the tokens it generated itself; its text (what the reward reads) is the whole
answer, prefix included, and prefix + continuation stay within the response length limit.

These functions are pure (token lists, entropies, a numpy Generator); the trainer runs the engines and the learner.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Sequence

import numpy as np

from rl.config.rollout import CureConfig
from rollout.base import Sample


def critical_position(
    entropy: Sequence[float], token_texts: Sequence[str], special: Sequence[bool], cfg: CureConfig,
    rng: np.random.Generator,
) -> int | None:
    """idx ~ Uniform(top-`top_entropy` positions j >= 1 by entropy H_j among tokens that are not special and whose
    stripped text has >= min_token_chars characters); None when no position qualifies (the response is not branched).
    Ties in entropy go to the earlier position, so the choice is deterministic given the rng."""
    candidates = [j for j in range(1, len(entropy)) if not special[j] and len(token_texts[j].strip()) >= cfg.min_token_chars]
    if not candidates:
        return None
    top = sorted(candidates, key=lambda j: (-float(entropy[j]), j))[: cfg.top_entropy]
    return int(top[int(rng.integers(len(top)))])


def branch_prompt(sample: Sample, idx: int) -> list[int]:
    """The prompt of a continuation: the original prompt followed by the response's first idx tokens."""
    return list(sample.prompt_ids) + list(sample.response_ids[:idx])


def continuation(parent: Sample, idx: int, child: Sample, max_tokens: int, decode) -> Sample:
    """A continuation sample: prompt = prompt + prefix (prefix_len = idx tokens), response = the child's own tokens cut
    so that idx + len(response) <= max_tokens (cut: finish_reason "length"), text = the whole answer, decoded at once."""
    keep = max(0, max_tokens - idx)
    ids, logprobs, finish = list(child.response_ids), list(child.logprobs), child.finish_reason
    if len(ids) > keep:
        ids, logprobs, finish = ids[:keep], logprobs[:keep], "length"
    return replace(
        child, prompt_ids=branch_prompt(parent, idx), response_ids=ids, logprobs=logprobs, finish_reason=finish,
        text=decode(list(parent.response_ids[:idx]) + ids), prefix_len=idx,
    )


def assemble_group(
    parents: list[Sample], points: list[int | None], children: list[list[Sample]], max_tokens: int, decode,
) -> list[Sample]:
    """One CURE group: the n1 parents, then for each branched parent (in order) its n2 continuations.
    `children` holds one list per branched parent (points not None), in the parents' order."""
    out = list(parents)
    branched = [(p, idx) for p, idx in zip(parents, points) if idx is not None]
    if len(branched) != len(children):
        raise ValueError(f"{len(children)} continuation lists for {len(branched)} branched responses")
    for (parent, idx), kids in zip(branched, children):
        out.extend(continuation(parent, idx, kid, max_tokens, decode) for kid in kids)
    return out
