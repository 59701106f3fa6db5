"""ARMed [derived]: an adaptive semantic reward against reward collapse.

    r = correct + weight * sigmoid(k (s - tau))
    s   = cos(e(answer), e(gold)): all-MiniLM-L6-v2 embeddings of the final answer and the gold
    tau = the `quantile` of the semantic scores of the last `window` samples of earlier training steps (0.5 before any)

r' = sigmoid(k (s - tau)) is monotone in s, 0.5 at tau, and spreads the scores around the moving threshold more than
the raw cosine does. tau only moves between steps (the trainer passes `trainer_step`), so the order in which a step's
samples are scored does not matter, and it is saved in checkpoints (`state_dict`), so a resumed run repeats.
"""

from __future__ import annotations

import math
import threading

import numpy as np

from rewards.qa import final_answer, grade_short_answer
from rl.core.registry import REWARDS


def reshape(s: float, tau: float, k: float) -> float:
    """sigmoid(k (s - tau))."""
    return 1.0 / (1.0 + math.exp(-k * (s - tau)))


@REWARDS.register("armed")
class ARMed:
    def __init__(self, k: float = 10.0, quantile: float = 0.5, window: int = 2048, weight: float = 1.0,
                 judge: str = "contains", answer_tag: str = "answer", embedding_model: str = "all-MiniLM-L6-v2",
                 embed=None):
        if not 0.0 <= quantile <= 1.0 or window < 1 or k <= 0:
            raise ValueError(f"armed: need 0 <= quantile <= 1, window >= 1, k > 0; got {quantile}, {window}, {k}")
        self.k, self.q, self.window, self.weight, self.judge, self.tag = k, quantile, window, weight, judge, answer_tag
        if embed is None:
            from rl.models.embeddings import MiniLMEmbedder

            embed = MiniLMEmbedder(embedding_model, max_length=64)
        self.embed = embed
        self.history: list[float] = []  # semantic scores of earlier steps, oldest first
        self.pending: list[float] = []  # this step's
        self.step = None
        self.lock = threading.Lock()

    def tau(self) -> float:
        return float(np.quantile(self.history, self.q)) if self.history else 0.5

    def _advance(self, step) -> None:
        """A new step: this step's scores join the history (sorted: their order of arrival must not matter)."""
        if step != self.step or step is None:
            self.history = (self.history + sorted(self.pending))[-self.window :]
            self.pending, self.step = [], step

    def __call__(self, prompts, completions, answer, trainer_step=None, **columns) -> list[dict]:
        answers = [final_answer(c, self.tag) or "" for c in completions]
        golds = [str(g) for g in answer]
        e = self.embed(answers + golds)
        sims = (e[: len(answers)] * e[len(answers) :]).sum(-1).tolist()
        with self.lock:
            self._advance(trainer_step[0] if trainer_step else None)
            tau = self.tau()
            self.pending.extend(sims)
        out = []
        for a, g, s in zip(answers, golds, sims):
            correct = float(grade_short_answer(a, g, self.judge)[0])
            shaped = reshape(s, tau, self.k)
            out.append({"reward": correct + self.weight * shaped, "correct": correct, "semantic": s,
                        "shaped": shaped, "tau": tau})
        return out

    def state_dict(self) -> dict:
        with self.lock:
            return {"history": list(self.history), "pending": list(self.pending), "step": self.step}

    def load_state_dict(self, state: dict) -> None:
        with self.lock:
            self.history, self.pending, self.step = list(state["history"]), list(state["pending"]), state["step"]
