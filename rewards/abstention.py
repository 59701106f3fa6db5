"""Abstention: pay for a correct answer, less for an honest "I don't know", least for a wrong answer.

    r = correct (1.0) if the answer matches the gold,  abstain (0.0) if it is a refusal,  wrong (-1.0) otherwise

The values are kwargs and must keep correct > abstain > wrong (otherwise guessing beats abstaining or abstaining
beats knowing). A missing answer is wrong. Each sample also reports its verbalized confidence when it states one
("Confidence: 80%"), for the calibration metrics (rl/core/calibration.py).
"""

from __future__ import annotations

from collections.abc import Sequence

from rewards.qa import DEFAULT_REFUSALS, final_answer, grade_short_answer, parse_confidence
from rl.core.registry import REWARDS


@REWARDS.register("abstention")
def abstention_reward(prompts, completions, answer, correct: float = 1.0, abstain: float = 0.0, wrong: float = -1.0,
                      judge: str = "contains", answer_tag: str = "answer",
                      refusal_phrases: Sequence[str] = DEFAULT_REFUSALS, **columns) -> list[dict]:
    if not correct > abstain > wrong:
        raise ValueError(f"abstention reward: need correct > abstain > wrong, got {correct}, {abstain}, {wrong} "
                         "(rewards[i].kwargs)")
    out = []
    for completion, gold in zip(completions, answer):
        ok, refused = grade_short_answer(final_answer(completion, answer_tag), gold, judge, refusal_phrases)
        out.append({"reward": correct if ok else abstain if refused else wrong, "correct": float(ok),
                    "refused": float(refused), "confidence": parse_confidence(completion)})
    return out


@REWARDS.register("short_answer")
def short_answer_reward(prompts, completions, answer, judge: str = "contains", answer_tag: str = "answer",
                        **columns) -> list[dict]:
    """Correctness only (the baseline of the factuality rewards): 1 for a correct short answer, else 0."""
    out = []
    for completion, gold in zip(completions, answer):
        ok, refused = grade_short_answer(final_answer(completion, answer_tag), gold, judge)
        out.append({"reward": float(ok), "refused": float(refused)})
    return out
