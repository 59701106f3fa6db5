"""AdaptThink's reward: accuracy measured against the starting model's, plus a bonus for not thinking.

    r = acc - R_ref(x) + delta * 1[NoThinking],   acc = 0 when the response opens a second thinking block

R_ref(x) is the starting model's mean accuracy on problem x over k thinking samples, written by
`rlvr adaptthink-prepare` (a JSONL of {prompt, r_ref}: the reward's `r_ref_file`; or a data column `r_ref`). The
advantage is r itself (`algorithm.advantage.estimator: none`), no group normalisation. Golden (R_ref 0.75, delta 0.05): NoThinking right 0.30, wrong -0.70; Thinking right 0.25,
wrong -0.75. Accuracy is math-verify's on the final answer.
"""

from __future__ import annotations

import json
from pathlib import Path

from rewards.answers import math_verify_reward
from rl.core.registry import REWARDS
from rollout.adaptive import is_nothinking


def thinking_blocks(completion: str, open_tag: str = "<think>", close_tag: str = "</think>") -> int:
    """How many thinking blocks a response holds: the one the prompt opened (closed at its first close_tag) plus
    every open_tag written after it."""
    text = completion or ""
    first_close = text.find(close_tag)
    rest = text[first_close + len(close_tag):] if first_close >= 0 else ""
    return 1 + rest.count(open_tag)


def adaptthink_value(accuracy: float, r_ref: float, nothinking: bool, delta: float = 0.05) -> float:
    """acc - R_ref + delta 1[NoThinking]."""
    return accuracy - r_ref + delta * float(nothinking)


@REWARDS.register("adaptthink")
class AdaptThink:
    """Columns: `answer`; `r_ref` when the data has it, else `r_ref_file` (the JSONL of {"prompt", "r_ref"} that
    `rlvr adaptthink-prepare` writes) gives R_ref by prompt. Per sample: {"reward", "accuracy", "nothinking",
    and "accuracy_nothinking" or "accuracy_thinking"}."""

    def __init__(self, r_ref_file: str | None = None, delta: float = 0.05, open_tag: str = "<think>",
                 close_tag: str = "</think>"):
        self.delta, self.open_tag, self.close_tag, self.file = delta, open_tag, close_tag, r_ref_file
        self.table: dict[str, float] = {}
        if r_ref_file:
            path = Path(r_ref_file)
            if not path.is_file():
                raise ValueError(f"adaptthink reward: r_ref_file {r_ref_file!r} does not exist; build it with "
                                 "`rlvr adaptthink-prepare RECIPE` (it writes the file the reward's r_ref_file names)")
            for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                if line.strip():
                    row = json.loads(line)
                    if not isinstance(row, dict) or "prompt" not in row or "r_ref" not in row:
                        raise ValueError(f"{r_ref_file}, line {n}: expected {{\"prompt\", \"r_ref\"}}")
                    self.table[row["prompt"]] = float(row["r_ref"])

    def reference(self, prompts, r_ref) -> list[float]:
        if r_ref is not None:
            return [float(x) for x in r_ref]
        if not self.table:
            raise ValueError("the adaptthink reward needs R_ref: a data column r_ref, or kwargs.r_ref_file from "
                             "`rlvr adaptthink-prepare RECIPE`")
        missing = [p for p in prompts if p not in self.table]
        if missing:
            raise ValueError(f"adaptthink reward: no R_ref in {self.file} for the prompt {str(missing[0])[:80]!r}; "
                             "rerun `rlvr adaptthink-prepare` with this recipe's data")
        return [self.table[p] for p in prompts]

    def __call__(self, prompts, completions, answer, r_ref=None, **columns) -> list[dict]:
        refs = self.reference(prompts, r_ref)
        acc = math_verify_reward(prompts, completions, answer)
        out = []
        for c, a, ref in zip(completions, acc, refs):
            no_think = is_nothinking(c, self.close_tag)
            a = 0.0 if thinking_blocks(c, self.open_tag, self.close_tag) > 1 else a
            out.append({"reward": adaptthink_value(a, ref, no_think, self.delta), "accuracy": a,
                        "nothinking": float(no_think),
                        # each mode's accuracy (the trainer averages an extra over the samples that have it): the
                        # gap between them, against delta, is what moves the choice
                        "accuracy_nothinking" if no_think else "accuracy_thinking": a})
        return out
