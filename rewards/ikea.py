"""IKEA's reward: answer correctly, and search only when you do not know.

    r = -1                               format failure (no non-empty <answer>...</answer>, or an unclosed <search>)
    r = 1 + 0.6 (1 - min(RT, 3) / 3)     correct answer, RT = number of searches: 0/1/2/>=3 -> 1.6/1.4/1.2/1.0
    r = 0.05                             wrong, with at least one search (it tried)
    r = 0                                wrong, without a search

RT counts the model's <search>...</search> calls in the completion (rollout/search.py writes the retrieved
passages between them as <information> blocks, which are not the model's and are not counted).
"""

from __future__ import annotations

import re

from rewards.qa import answer_correct, tag_content
from rl.core.registry import REWARDS

_INFO = re.compile(r"<information>.*?</information>", re.DOTALL)


def count_searches(completion: str) -> tuple[int, bool]:
    """(number of searches, whether every <search> is closed), outside the environment's <information> blocks."""
    own = _INFO.sub(" ", completion or "")
    return own.count("</search>"), own.count("<search>") == own.count("</search>")


def ikea_value(correct: bool, searches: int, format_ok: bool, max_searches: int = 3) -> float:
    if not format_ok:
        return -1.0
    if correct:
        return 1.0 + 0.6 * (1.0 - min(searches, max_searches) / max_searches)
    return 0.05 if searches > 0 else 0.0


@REWARDS.register("ikea")
def ikea_reward(prompts, completions, answer, max_searches: int = 3, judge: str = "contains",
                **columns) -> list[dict]:
    out = []
    for completion, gold in zip(completions, answer):
        searches, closed = count_searches(completion)
        answer = tag_content(_INFO.sub(" ", completion or ""), "answer")
        fmt = bool(answer) and closed
        correct = fmt and answer_correct(answer, gold, judge)
        out.append({"reward": ikea_value(correct, searches, fmt, max_searches), "correct": float(correct),
                    "searches": searches, "format": float(fmt)})
    return out
