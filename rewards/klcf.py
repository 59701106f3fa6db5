"""KLCF (dual-fact alignment) [derived]: reward recall of the facts the base model knows and precision of what is said.

Offline (`rlvr klcf-prepare`, rl/prepare/klcf.py): the base model answers each question k times; the atomic claims of its
answers that the knowledge source supports become the question's checklist, written to the JSONL file `checklists`
({"prompt", "checklist"} per training question) that the reward reads. A prompt without a checklist scores recall 0.

    recall    = (consistent - contradicted) / |checklist|        0 for an empty checklist
                consistent: checklist claims the response supports (verifier P(response entails claim) >= threshold);
                contradicted: ones it contradicts (only an NLI verifier with a "contradiction" label can tell; the
                lexical and embedding verifiers count none)
    precision = mean over the response's own claims of P(true)   P(true): the verifier's highest P(entailment) over
                the passages retrieved for the claim (FactChecker.probabilities); 0 when the response states no claim
    r = recall_weight * recall + precision_weight * precision + quality_weight * quality
                quality: the general-quality term; here the short answer's correctness (1/0), weight 0.1

Columns: `answer`, `title` (pages; optional); a `checklist` column, when the data has one, takes precedence over the file.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from rewards.knowrl import FactChecker, atomic_facts, page_titles
from rewards.qa import DEFAULT_REFUSALS, final_answer, grade_short_answer
from rl.core.registry import REWARDS


_TAG = re.compile(r"</?[a-z_]+>")


def load_checklists(path: str) -> dict[str, list[str]]:
    """prompt -> checklist from klcf-prepare's JSONL; a clear error naming the file and line when it is wrong."""
    import json
    from pathlib import Path

    file = Path(path)
    if not file.is_file():
        raise ValueError(f"klcf checklists {path!r} is not a file; run `rlvr klcf-prepare RECIPE` first")
    out = {}
    for n, line in enumerate(file.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            out[row["prompt"]] = [str(c) for c in row["checklist"]]
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"klcf checklists {path!r} line {n}: {type(e).__name__}: {e}; each line must be "
                             '{"prompt": ..., "checklist": [...]} (rerun rlvr klcf-prepare)') from None
    return out


def klcf_recall(consistent: int, contradicted: int, checklist_size: int) -> float:
    return (consistent - contradicted) / checklist_size if checklist_size else 0.0


@REWARDS.register("klcf")
class KLCF:
    def __init__(self, knowledge: dict | None = None, checklists: str | None = None, verifier: str = "lexical",
                 verifier_model: str | None = None,
                 support_threshold: float | None = None, top_k: int = 5, recall_weight: float = 1.0,
                 precision_weight: float = 1.0, quality_weight: float = 0.1, judge: str = "contains",
                 refusal_phrases: Sequence[str] = DEFAULT_REFUSALS):
        self.checker = FactChecker(knowledge, verifier, verifier_model, support_threshold, top_k)
        self.weights = (recall_weight, precision_weight, quality_weight)
        self.judge, self.refusals = judge, tuple(refusal_phrases)
        self.checklists = load_checklists(checklists) if checklists else {}

    def __call__(self, prompts, completions, answer, checklist=None, title=None, **columns) -> list[dict]:
        n = len(completions)
        checklists = checklist if checklist is not None else [self.checklists.get(p, []) for p in prompts]
        titles = title if title is not None else [None] * n
        return [self.score(c, a, cl or [], t) for c, a, cl, t in zip(completions, answer, checklists, titles)]

    def score(self, completion: str, gold, checklist: list[str], title) -> dict:
        text = completion or ""
        verify = self.checker.verify
        consistent = contradicted = 0
        if checklist:
            entail = verify(checklist, [text] * len(checklist))
            consistent = int((entail >= self.checker.threshold).sum())
            contra = getattr(verify, "contradiction", lambda *_: None)(checklist, [text] * len(checklist))
            if contra is not None:
                contradicted = int(((contra >= self.checker.threshold) & (entail < self.checker.threshold)).sum())
        claims = atomic_facts(_TAG.sub(". ", text))
        precision = float(np.mean(self.checker.probabilities(claims, page_titles(title)))) if claims else 0.0
        recall = klcf_recall(consistent, contradicted, len(checklist))
        correct, _ = grade_short_answer(final_answer(text), gold, self.judge, self.refusals)
        wr, wp, wq = self.weights
        return {"reward": wr * recall + wp * precision + wq * float(correct), "recall": recall,
                "precision": precision, "correct": float(correct), "claims": len(claims),
                "checklist": len(checklist)}
