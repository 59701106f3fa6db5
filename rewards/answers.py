"""Math answer rewards: extract the model's final answer, compare it to the gold answer with math-verify."""

from __future__ import annotations

import logging
import re

from math_verify import parse, verify

from rewards.registry import REWARDS

logging.getLogger("math_verify").setLevel(logging.ERROR)  # it warns on every call made without its signal timeout

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")
_HASHES = re.compile(r"####")
_ANSWER_IS = re.compile(r"answer\s+is\s*:?\s*", re.IGNORECASE)


def _last_boxed(text: str) -> str | None:
    """Content of the last \\boxed{...} (or \\fbox{...}), with nested braces balanced."""
    start = max(text.rfind("\\boxed{"), text.rfind("\\fbox{"))
    if start < 0:
        return None
    i = text.index("{", start) + 1
    depth, j = 1, i
    while j < len(text) and depth:
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        j += 1
    return text[i : j - 1].strip() if depth == 0 else None


def _clean_number(s: str) -> str:
    return s.replace(",", "").rstrip(".")


def _stated_answer(tail: str) -> str | None:
    """The answer at the start of the text after a marker: a number, or a LaTeX expression, on its first line."""
    line = tail.strip().split("\n")[0].strip().strip("$").rstrip(".").strip()
    lead = _NUMBER.match(line)
    if lead:
        return _clean_number(lead.group())
    if "\\" in line:  # a LaTeX answer such as \frac{1}{2}
        return line
    m = _NUMBER.search(line)
    return _clean_number(m.group()) if m else None


def extract_answer(text: str) -> str | None:
    """The final answer stated in `text`: the last \\boxed{}, else what follows the last '####', else what follows
    the last 'answer is', else the last number. None if there is none."""
    if not text:
        return None
    boxed = _last_boxed(text)
    if boxed:
        return boxed
    for marker in (_HASHES, _ANSWER_IS):
        parts = marker.split(text)
        if len(parts) > 1 and (found := _stated_answer(parts[-1])):
            return found
    numbers = _NUMBER.findall(text)
    return _clean_number(numbers[-1]) if numbers else None


def _parse(s: str):
    # timeouts off: math-verify's timeout uses signal.alarm, which fails outside the main thread
    return parse(f"${s}$", parsing_timeout=None) or parse(s, parsing_timeout=None)


def answers_match(pred: str | None, gold: str) -> bool:
    """True when pred and gold are the same answer (0.5 == \\frac{1}{2}, 12 == 12.0). Never raises."""
    if pred is None or gold is None:
        return False
    pred, gold = str(pred).strip(), str(gold).strip()
    try:
        a, b = float(_clean_number(pred)), float(_clean_number(gold))
        return abs(a - b) <= 1e-6 * max(1.0, abs(b))
    except ValueError:
        pass
    try:
        g, p = _parse(gold), _parse(pred)
        if g and p:
            return bool(verify(g, p, timeout_seconds=None))
    except Exception:  # math-verify on arbitrary model output: any failure is a wrong answer
        pass
    return pred.replace(" ", "") == gold.replace(" ", "")


@REWARDS.register("math_verify")
def math_verify_reward(prompts, completions, answer, **kwargs) -> list[float]:
    """1.0 if the completion's final answer equals the gold `answer` column (math-verify), else 0.0."""
    return [1.0 if answers_match(extract_answer(c), str(a)) else 0.0 for c, a in zip(completions, answer)]


_STATED = re.compile(r"\\boxed\{|####\s*-?\d|answer\s+is\s*:?\s*\$?-?\d", re.IGNORECASE)


@REWARDS.register("format")
def format_reward(prompts, completions, **kwargs) -> list[float]:
    """1.0 if the completion states its final answer explicitly (\\boxed{}, '#### N' or 'the answer is N'), else 0.0."""
    return [1.0 if _STATED.search(c or "") else 0.0 for c in completions]
