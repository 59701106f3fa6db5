"""Custom rewards for rlvr: a complete, runnable example (README, "Your own reward").

Run it:   rlvr train examples/custom_reward.yaml

Each reward gets the prompts, the completions and the data set's columns of one step's samples (lists of equal length:
here `answer`, the gold; also `trainer_step`), and returns one value per completion: a number, None ("does not apply",
left out of the weighted sum), or a dict with a "reward" key and extra numbers that are logged as reward/<label>/<key>.
"""

from __future__ import annotations

import re

from rewards.answers import answers_match, extract_answer


def brevity(prompts, completions, max_words: int = 40, **columns):
    """A plain function (TRL's signature): 1 for an answer of at most max_words words, falling linearly to 0 at twice
    that; logs the word count."""
    out = []
    for text in completions:
        words = len(text.split())
        out.append({"reward": max(0.0, min(1.0, 2.0 - words / max_words)), "words": words})
    return out


def shows_work(prompt, completion, answer=None, **row):
    """Per sample (`per_sample: true` in the recipe): a correct answer that writes out an equation earns 1, a correct
    one without 0.5; a wrong one does not apply (None), so only the accuracy reward scores it."""
    if not answers_match(extract_answer(completion), str(answer)):
        return None
    return 1.0 if re.search(r"\d+\s*[-+*/x]\s*\d+\s*=", completion) else 0.5


class LengthJudge:
    """A heavy scorer as a class: built once with the recipe's kwargs, it runs as a Ray actor (`actor: {replicas: 1,
    num_cpus: 0}`), beside generation. Here a toy 'judge' that prefers answers near a target length; a real one would
    load an NLI model or an LLM in __init__."""

    def __init__(self, target_words: int = 25):
        self.target = target_words

    def __call__(self, prompts, completions, **columns):
        return [max(0.0, 1.0 - abs(len(c.split()) - self.target) / self.target) for c in completions]
