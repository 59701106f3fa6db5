"""Short-answer questions: reading tagged output, matching an answer to its gold aliases, spotting a refusal.

Shared by the factuality rewards (KnowRL, IKEA, abstention) and their evaluation. All pure string functions.

- `tag_content(text, tag)`: the content of the last <tag>...</tag>, or None.
- `normalize_answer(s)`: lower-case, number words 0-20 as digits, punctuation, articles (a, an, the) and extra
  whitespace removed (the SQuAD / SimpleQA normalisation, plus the number words).
- `answer_correct(pred, golds, judge)`: `exact`: normalised equality with any alias; `contains` (default): also when an
  alias's normalised words occur contiguously in a prediction at most `max_extra_words` longer ("three seasons" for
  gold "3 seasons", "It was Clive Anderson" for "Clive Anderson"), which is how a lenient grader reads short answers.
- `is_refusal(text, phrases)`: an "I don't know"-style answer (case- and apostrophe-insensitive phrase match), or an
  answer that is only "unknown" / "not sure" / "idk".
"""

from __future__ import annotations

import re
import string
from collections.abc import Sequence

DEFAULT_REFUSALS = (
    "i don't know", "i do not know", "i'm not sure", "i am not sure", "i cannot answer", "i can't answer",
    "i am unable to answer", "i'm unable to answer", "no idea", "i don't have enough information",
    "cannot be determined", "i cannot determine",
)
_REFUSAL_ANSWERS = {"unknown", "idk", "not sure", "no answer"}  # refusals only as the whole answer
_NUMBER_WORDS = {w: str(i) for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
    "seventeen eighteen nineteen twenty".split())}
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans({c: " " for c in string.punctuation + "‘’“”–—"})


def tag_content(text: str | None, tag: str) -> str | None:
    """The stripped content of the last <tag>...</tag> in text (None if there is none; "" if it is empty)."""
    if not text:
        return None
    found = re.findall(rf"<{tag}>(.*?)</{tag}>", text, flags=re.DOTALL)
    return found[-1].strip() if found else None


def normalize_answer(s: str | None) -> str:
    s = (s or "").lower().replace("'", "").replace("’", "")
    s = " ".join(_NUMBER_WORDS.get(w, w) for w in s.translate(_PUNCT).split())
    return " ".join(_ARTICLES.sub(" ", s).split())


def gold_aliases(answers) -> list[str]:
    """A data set's gold answer(s) as a list of aliases: a string (aliases separated by ';' or '|'), or a list."""
    if answers is None:
        return []
    items = answers if isinstance(answers, (list, tuple)) else re.split(r"[;|]", str(answers))
    return [str(a).strip() for a in items if str(a).strip()]


def answer_correct(pred: str | None, golds: Sequence[str] | str, judge: str = "contains",
                   max_extra_words: int = 8) -> bool:
    p = normalize_answer(pred)
    if not p:
        return False
    words = p.split()
    for gold in gold_aliases(golds):
        g = normalize_answer(gold)
        if not g:
            continue
        if p == g:
            return True
        if judge == "contains" and len(words) <= len(g.split()) + max_extra_words and f" {g} " in f" {p} ":
            return True
    return False


def grade_short_answer(answer: str | None, golds, judge: str = "contains",
                       refusal_phrases: Sequence[str] = DEFAULT_REFUSALS) -> tuple[bool, bool]:
    """(correct, refused) of an extracted answer (None: there was none, which is wrong): a refusal is never correct."""
    refused = answer is not None and is_refusal(answer, refusal_phrases)
    return (not refused and answer_correct(answer, golds, judge)), refused


def is_refusal(text: str | None, phrases: Sequence[str] = DEFAULT_REFUSALS) -> bool:
    t = " ".join((text or "").lower().replace("’", "'").split())
    if normalize_answer(t) in _REFUSAL_ANSWERS:
        return True
    return any(re.search(rf"(?<![a-z]){re.escape(ph.lower())}(?![a-z])", t) for ph in phrases)


_ANSWER_MARKER = re.compile(r"(?:final\s+)?answer\s*(?:is\b\s*:?|:)\s*", re.IGNORECASE)
_CONFIDENCE = re.compile(r"confidence\s*(?:level)?\s*(?:is|:|=)?\s*(\d+(?:\.\d+)?)\s*(%?)", re.IGNORECASE)


def final_answer(text: str | None, tag: str = "answer") -> str | None:
    """The model's short answer: the last <tag>...</tag>; else the text after the last "Answer:" / "answer is" (to the
    end of its line); else the last non-empty line without a confidence statement. None for an empty text."""
    tagged = tag_content(text, tag)
    if tagged is not None:
        return tagged
    if not text or not text.strip():
        return None
    marks = list(_ANSWER_MARKER.finditer(text))
    if marks:
        return text[marks[-1].end():].split("\n")[0].strip()
    lines = [ln.strip() for ln in text.strip().split("\n") if ln.strip() and not _CONFIDENCE.search(ln)]
    return lines[-1] if lines else None


def parse_confidence(text: str | None) -> float | None:
    """A verbalized confidence in [0, 1]: the last "Confidence: 80%" / "confidence 0.8" / "Confidence: 80" in the text
    (a number above 1 is read as a percentage); None when there is none or it is above 100."""
    found = _CONFIDENCE.findall(text or "")
    if not found:
        return None
    value, percent = found[-1]
    x = float(value)
    x = x / 100 if percent or x > 1 else x
    return x if 0.0 <= x <= 1.0 else None
