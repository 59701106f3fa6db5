"""A multi-turn rollout with a search tool (IKEA): the model may write <search>query</search>; the retriever's top
passages are appended as <information>...</information> and the model goes on, for at most `max_searches` searches.

    turn 0: n samples per prompt, generation stops after "</search>" (or at the end of the answer)
    turn t: for every sample that stopped at "</search>": query = the last <search>...</search>;
            passages = retrieve(query)[:top_k]; the sample's tokens += information tokens + one continuation
            (seeded per prompt seed, sample and turn), with what is left of max_tokens
A search past `max_searches` gets no passages: "<information>No more searches: answer now.</information>". All
continuations of a turn share one token budget: the least any of them has left of max_tokens. The
information tokens are in the sequence the model sees (and in the text the reward reads), and `loss_mask` keeps
them out of the loss (0), as they are not the model's. Their log-probs are 0 (the engine did not sample them).
"""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Callable

from rl.config.rollout import SamplingConfig, SearchConfig
from rollout.base import Sample, continuation_seed

SEARCH_OPEN, SEARCH_CLOSE = "<search>", "</search>"
_QUERY = re.compile(r"<search>(.*?)</search>\s*", re.DOTALL)
LIMIT_REACHED = "\n<information>No more searches: answer now.</information>\n"


def information_block(passages: list[str], max_words: int) -> str:
    """The text the environment appends after a search: the passages, numbered, each cut to max_words words."""
    if not passages:
        return "\n<information>No results.</information>\n"
    lines = [f"({i + 1}) {' '.join(p.split()[:max_words])}" for i, p in enumerate(passages)]
    return "\n<information>\n" + "\n".join(lines) + "\n</information>\n"


def searched_query(text: str) -> str | None:
    """The query of a response that ended at a search tag, else None."""
    m = _QUERY.fullmatch(text[max(text.rfind(SEARCH_OPEN), 0):])
    return m.group(1).strip() if m else None


def search_rollout(generate: Callable, tokenizer, prompts: list[list[int]], sampling: SamplingConfig,
                   seeds: list[int], retrieve: Callable[[str], list[str]], cfg: SearchConfig) -> list[list[Sample]]:
    """`generate(prompts, sampling, seeds)` is the fleet's; `retrieve(query)` gives passage texts, best first.
    Returns one group of `sampling.n` samples per prompt; a sample's response holds every turn."""
    first = replace(sampling, stop=[*sampling.stop, SEARCH_CLOSE])
    groups = generate(prompts, first, seeds)
    samples = [[replace(s, loss_mask=[1] * len(s.response_ids)) for s in g] for g in groups]
    searches = [[0] * len(g) for g in groups]  # per sample, so far
    for turn in range(1, cfg.max_searches + 2):  # the last turn only answers a search past the limit
        todo = []  # (group, sample, information text, its tokens)
        for gi, g in enumerate(samples):
            for si, s in enumerate(g):
                query = searched_query(s.text) if s.finish_reason == "stop" else None
                if query is None:
                    continue
                searches[gi][si] += 1
                info = (information_block(retrieve(query)[: cfg.top_k], cfg.max_passage_words)
                        if searches[gi][si] <= cfg.max_searches else LIMIT_REACHED)
                ids = tokenizer.encode(info, add_special_tokens=False)
                if len(s.response_ids) + len(ids) < sampling.max_tokens:
                    todo.append((gi, si, info, ids))
                else:  # no room left to answer
                    g[si] = replace(s, finish_reason="length")
        if not todo:
            break
        budget = min(sampling.max_tokens - len(samples[gi][si].response_ids) - len(ids) for gi, si, _, ids in todo)
        conts = generate([samples[gi][si].prompt_ids + samples[gi][si].response_ids + ids for gi, si, _, ids in todo],
                         replace(first if turn <= cfg.max_searches else sampling, n=1, max_tokens=budget),
                         [continuation_seed(seeds[gi], si, turn) for gi, si, _, _ in todo])
        for (gi, si, info, ids), (cont,) in zip(todo, conts):
            s = samples[gi][si]
            samples[gi][si] = replace(
                s, response_ids=s.response_ids + ids + cont.response_ids,
                logprobs=s.logprobs + [0.0] * len(ids) + cont.logprobs,
                loss_mask=s.loss_mask + [0] * len(ids) + [1] * len(cont.response_ids),
                text=s.text + info + cont.text, finish_reason=cont.finish_reason)
    return samples
