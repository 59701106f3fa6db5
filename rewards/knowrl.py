"""KnowRL: a reward for short factual answers that also scores how factual the thinking is.

    r = r_format + r_correct + [fact_score]
    r_format  = +1 if the output is <think>...</think><answer>...</answer> (and nothing else), else -1
    r_correct = +2 correct, +1 a refusal ("I don't know"-style), -1 wrong, -1 no answer
    fact_score = mean_i(supported_i) * (1 if n > 10 else exp(1 - 10 / n)),   0 when the thinking has no facts (n = 0)

Facts are the thinking's sentences and clauses (`atomic_facts`). Fact i is supported when, for any of the top-k
passages retrieved from the question's pages (query: page title + fact; the whole store when a question names no
page), a verifier's P(passage entails fact) >= the support threshold. Verifiers (`verifier=`):
- `lexical` (default, no model): the share of the fact's content words that occur in the passage (threshold 0.75);
- `embedding`: cosine similarity of all-MiniLM-L6-v2 embeddings (threshold 0.6);
- `nli`: an NLI cross-encoder (a transformers sequence-classification folder with an "entailment" label;
  `verifier_model=`), P(entailment) with the passage as premise (threshold 0.3, the paper's).
- `llm`: a language model asked whether the passage supports the fact (rewards/judge.py; `llm: {model: ...}`).
Facts come from sentence/clause splitting (`fact_extraction=sentences`, default) or from the LLM (`llm`), and
correctness from normalised exact / alias matching (`judge=exact|contains`) or the LLM (`judge=llm`); one LLM
(`kwargs.llm`) serves all three, run the reward in a Ray actor (`actor: {replicas: 1, num_gpus: ...}`) then.
When the fact score counts (`fact_score_when=`): `wrong` (the authors' code: wrong answers that are not refusals),
`always` (the paper), or `never`.

Golden: 5 facts, 4 supported -> 0.8 e^-1 = 0.2943, so a well-formatted wrong answer scores 1 - 1 + 0.2943.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import numpy as np

from rewards.qa import DEFAULT_REFUSALS, gold_aliases, grade_short_answer, tag_content
from rl.core.registry import REWARDS

_FORMAT = re.compile(r"\s*<think>(?:(?!</?think>|</?answer>).)*</think>\s*<answer>(?:(?!</?think>|</?answer>).)*"
                     r"</answer>\s*", re.DOTALL)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")
_CLAUSE = re.compile(r";\s*|,\s+(?:and|but|while|whereas)\s+")
_WORD = re.compile(r"[a-z0-9]+")


def knowrl_format_ok(text: str | None) -> bool:
    """<think>...</think><answer>...</answer>, each once, nothing outside them but whitespace."""
    return bool(text) and _FORMAT.fullmatch(text) is not None


def atomic_facts(text: str | None, min_words: int = 3, max_facts: int = 32) -> list[str]:
    """The declarative sentences and clauses of a text (split at . ! ? and newlines, then at ';' and ', and'/', but'),
    without questions and fragments shorter than min_words words; at most max_facts."""
    facts = []
    for sentence in _SENTENCE_END.split(text or ""):
        for clause in _CLAUSE.split(sentence):
            c = clause.strip(" \t-*•").rstrip(".!")
            if c and not c.endswith("?") and len(_WORD.findall(c.lower())) >= min_words:
                facts.append(c)
    return facts[:max_facts]


def fact_score(supported: Sequence[bool]) -> float:
    """mean(supported) * (1 if n > 10 else exp(1 - 10/n)); 0 for no facts."""
    n = len(supported)
    if n == 0:
        return 0.0
    return float(np.mean(supported)) * (1.0 if n > 10 else math.exp(1 - 10 / n))


_FUNCTION_WORDS = frozenset(
    "a an the and or but if then so of in on at to for from by with about as into over after before between under "
    "is are was were be been being am has have had do does did will would shall should can could may might must "
    "it its this that these those there here he she they we you i me him her them us my his their our your who whom "
    "which what when where why how not no also than very just only".split())  # numbers and names stay: they carry facts


def content_words(text: str) -> set[str]:
    return {w for w in _WORD.findall((text or "").lower()) if w not in _FUNCTION_WORDS}


# -- verifiers: pairs of (fact, passage) -> P(passage supports fact) ---------------------------------------------


class LexicalVerifier:
    threshold = 0.75

    def __call__(self, facts: Sequence[str], passages: Sequence[str]) -> np.ndarray:
        out = []
        for f, p in zip(facts, passages):
            words = content_words(f)
            out.append(len(words & content_words(p)) / len(words) if words else 0.0)
        return np.asarray(out, dtype=np.float32)


class EmbeddingVerifier:
    threshold = 0.6

    def __init__(self, model: str | None = None):
        from rl.models.embeddings import MiniLMEmbedder

        self.embed = MiniLMEmbedder(model or "all-MiniLM-L6-v2", max_length=256)

    def __call__(self, facts: Sequence[str], passages: Sequence[str]) -> np.ndarray:
        if not facts:
            return np.zeros(0, dtype=np.float32)
        return (self.embed(list(facts)) * self.embed(list(passages))).sum(-1)


class NLIVerifier:
    threshold = 0.3

    def __init__(self, model: str | None = None, batch_size: int = 32):
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        if not model:
            raise ValueError("verifier=nli needs verifier_model: a folder of a transformers NLI model")
        self.tokenizer = AutoTokenizer.from_pretrained(model)
        self.model = AutoModelForSequenceClassification.from_pretrained(model).eval()
        labels = {str(v).lower(): int(k) for k, v in self.model.config.id2label.items()}
        if "entailment" not in labels:
            raise ValueError(f"verifier_model {model!r} has no 'entailment' label (labels: {sorted(labels)})")
        self.labels, self.batch_size, self.torch = labels, batch_size, torch

    def probabilities(self, facts: Sequence[str], passages: Sequence[str]) -> np.ndarray:
        """[N, num_labels] softmax over the model's labels, the passage as premise and the fact as hypothesis."""
        out = []
        with self.torch.no_grad():
            for i in range(0, len(facts), self.batch_size):
                enc = self.tokenizer(list(passages[i : i + self.batch_size]), list(facts[i : i + self.batch_size]),
                                     truncation=True, padding=True, max_length=512, return_tensors="pt")
                out.append(self.model(**enc).logits.float().softmax(-1).numpy())
        return np.concatenate(out) if out else np.zeros((0, len(self.labels)), dtype=np.float32)

    def __call__(self, facts: Sequence[str], passages: Sequence[str]) -> np.ndarray:
        return self.probabilities(facts, passages)[:, self.labels["entailment"]]

    def contradiction(self, facts: Sequence[str], passages: Sequence[str]) -> np.ndarray | None:
        if "contradiction" not in self.labels:
            return None
        return self.probabilities(facts, passages)[:, self.labels["contradiction"]]


VERIFIERS = {"lexical": LexicalVerifier, "embedding": EmbeddingVerifier, "nli": NLIVerifier}


def make_verifier(name: str, model: str | None = None, llm=None):
    if name == "llm":
        if llm is None:
            raise ValueError("verifier=llm needs kwargs.llm: {model: the judge model}")
        from rewards.judge import LLMVerifier

        return LLMVerifier(llm)
    if name not in VERIFIERS:
        raise ValueError(f"verifier={name!r}; choose one of {sorted(VERIFIERS) + ['llm']}")
    return VERIFIERS[name]() if name == "lexical" else VERIFIERS[name](model)


class FactChecker:
    """Which facts the knowledge source supports: retrieve top-k passages per fact from the question's pages (query
    "title fact", k per page), verify every (fact, passage) pair, supported = max P >= threshold."""

    def __init__(self, knowledge: dict | None, verifier: str = "lexical", verifier_model: str | None = None,
                 support_threshold: float | None = None, top_k: int = 5, llm=None):
        from rewards.knowledge import PassageStore
        from rl.config.rollout import KnowledgeConfig

        if not knowledge:
            raise ValueError("the fact score needs kwargs.knowledge: {passages: a JSONL of {title, text}} or "
                             "{qa_data: a question-answer file}")
        self.store = PassageStore.from_config(KnowledgeConfig(**knowledge))
        self.verify = make_verifier(verifier, verifier_model, llm)
        self.threshold = self.verify.threshold if support_threshold is None else support_threshold
        self.top_k = top_k

    def probabilities_many(self, facts: Sequence[Sequence[str]], titles: Sequence[Sequence[str]]) -> list[np.ndarray]:
        """Per answer, per fact: the highest P(passage entails fact) over its retrieved passages (0 when none is
        found). One verifier call for all answers (a model verifier batches them)."""
        pairs = []  # (answer, fact index, passage text)
        for a, (answer_facts, answer_titles) in enumerate(zip(facts, titles)):
            for i, fact in enumerate(answer_facts):
                seen = set()
                for t in answer_titles or [None]:
                    query = f"{t} {fact}" if t else fact
                    for p in self.store.search(query, self.top_k, titles=[t] if t else None):
                        if p.index not in seen:
                            seen.add(p.index)
                            pairs.append((a, i, p.text))
        best = [np.zeros(len(f), dtype=np.float32) for f in facts]
        if pairs:
            probs = self.verify([facts[a][i] for a, i, _ in pairs], [text for _, _, text in pairs])
            for (a, i, _), p in zip(pairs, probs):
                best[a][i] = max(best[a][i], p)
        return best

    def probabilities(self, facts: Sequence[str], titles: Sequence[str]) -> np.ndarray:
        return self.probabilities_many([facts], [titles])[0]

    def supported(self, facts: Sequence[str], titles: Sequence[str]) -> list[bool]:
        return (self.probabilities(facts, titles) >= self.threshold).tolist()


def page_titles(title) -> list[str]:
    """A row's pages: a ';'-separated string (the knowrl data) or a list; [] when missing."""
    if not title:
        return []
    items = title if isinstance(title, (list, tuple)) else str(title).split(";")
    return [t.strip() for t in items if t and t.strip()]


@REWARDS.register("knowrl")
class KnowRL:
    """The KnowRL reward (module docstring). Columns: `answer` (the gold; aliases split at ";" or "|"), `title` (pages,
    optional), `question` (for `judge=llm`; else the prompt). Returns per sample {"reward", "format", "correct",
    "refused", "fact_score", "facts", "supported"}."""

    def __init__(self, knowledge: dict | None = None, judge: str = "contains",
                 refusal_phrases: Sequence[str] = DEFAULT_REFUSALS, fact_score_when: str = "wrong",
                 verifier: str = "lexical", verifier_model: str | None = None, support_threshold: float | None = None,
                 top_k: int = 5, max_facts: int = 32, fact_extraction: str = "sentences", llm: dict | None = None):
        if fact_score_when not in ("wrong", "always", "never"):
            raise ValueError(f"fact_score_when={fact_score_when!r}; choose wrong (the code), always (the paper), never")
        if judge not in ("exact", "contains", "llm"):
            raise ValueError(f"judge={judge!r}; choose exact, contains or llm")
        if fact_extraction not in ("sentences", "llm"):
            raise ValueError(f"fact_extraction={fact_extraction!r}; choose sentences or llm")
        wants_llm = "llm" in (judge, verifier, fact_extraction)
        if wants_llm and not llm:
            raise ValueError("judge/verifier/fact_extraction=llm needs kwargs.llm: {model: the judge model's folder}")
        from rewards.judge import LLM, LLMFactExtractor, LLMJudge

        self.llm = LLM(llm) if wants_llm else None
        self.llm_judge = LLMJudge(self.llm) if judge == "llm" else None
        self.extract = LLMFactExtractor(self.llm) if fact_extraction == "llm" else None
        self.judge, self.refusals, self.when, self.max_facts = judge, tuple(refusal_phrases), fact_score_when, max_facts
        self.checker = (FactChecker(knowledge, verifier, verifier_model, support_threshold, top_k, self.llm)
                        if fact_score_when != "never" else None)

    def __call__(self, prompts, completions, answer, title=None, question=None, **columns) -> list[dict]:
        n = len(completions)
        titles = [page_titles(t) for t in (title if title is not None else [None] * n)]
        answers = [tag_content(c, "answer") for c in completions]
        graded = [grade_short_answer(a, g, "exact" if self.llm_judge else self.judge, self.refusals)
                  for a, g in zip(answers, answer)]
        if self.llm_judge is not None:  # the LLM decides what string matching did not accept
            todo = [i for i, (ok, refused) in enumerate(graded) if not ok and not refused and answers[i]]
            questions = question if question is not None else prompts
            verdicts = self.llm_judge([str(questions[i]) for i in todo], [answers[i] for i in todo],
                                      [gold_aliases(answer[i]) for i in todo])
            for i, ok in zip(todo, verdicts):
                graded[i] = (ok, False)
        out = []
        for c, (correct, refused) in zip(completions, graded):
            fmt = 1.0 if knowrl_format_ok(c) else -1.0
            out.append({"format": fmt, "correct": float(correct), "refused": float(refused), "fact_score": None,
                        "facts": 0, "supported": None, "reward": fmt + (2.0 if correct else 1.0 if refused else -1.0)})
        scored = [i for i, o in enumerate(out) if self.checker is not None and
                  (self.when == "always" or not (o["correct"] or o["refused"]))]
        thinking = [tag_content(completions[i], "think") or "" for i in scored]
        facts = (self.extract(thinking, self.max_facts) if self.extract is not None
                 else [atomic_facts(t, max_facts=self.max_facts) for t in thinking])
        if scored:
            probs = self.checker.probabilities_many(facts, [titles[i] for i in scored])
            for i, f, p in zip(scored, facts, probs):
                supported = (p >= self.checker.threshold).tolist()
                out[i].update(fact_score=fact_score(supported), facts=len(f),
                              supported=float(np.mean(supported)) if f else None)
                out[i]["reward"] += out[i]["fact_score"]
        return out
