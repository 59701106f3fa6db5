"""Math answer rewards: extract the model's final answer, compare it to the gold answer with math-verify.

math-verify's own timeout uses signal.alarm, which only works in the main thread; rewards run in a thread pool, so
it is turned off here (`parsing_timeout=None`, `timeout_seconds=None`). Without it, sympy would hang forever on
answers that denote astronomically large numbers (a power tower such as 9^{9^{9^{9}}}, \\binom{100000}{50000}), so
such answers are kept away from sympy (`_sympy_safe_text`, `_sympy_safe_expr`) and compared as strings only.
"""

from __future__ import annotations

import logging
import math
import re

from math_verify import parse, verify
from sympy import E, Basic, Pow, exp, postorder_traversal

from rl.core.registry import REWARDS

logging.getLogger("math_verify").setLevel(logging.ERROR)  # it warns on every call made without its signal timeout

# A number: 1,234.5 (comma groups of three), 1234, -7, .5. A minus sign right after a letter or digit is an
# operator ("3-7", "x-1"), not part of the number.
_NUMBER = re.compile(r"(?<![\w.])-?(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?|(?<![\w.])-?\.\d+")
_HASHES = re.compile(r"####")
_ANSWER_IS = re.compile(r"answer\s*(?:is\b|:)\s*:?\s*", re.IGNORECASE)  # "the answer is 5", "Answer: 5"


def _text(completion) -> str:
    """A completion as text: a string as it is; TRL's conversational form (a list of messages) -> the last content."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, (list, tuple)) and completion and isinstance(completion[-1], dict):
        return str(completion[-1].get("content") or "")
    return ""


def _last_boxed(text: str) -> str | None:
    """Content of the last \\boxed{...} (or \\fbox{...}), with nested braces balanced; None if there is none."""
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
    line = tail.strip().split("\n")[0].rstrip(" .$").lstrip(" $")  # "$\frac{1}{2}$." -> \frac{1}{2}
    lead = _NUMBER.match(line)
    if lead:
        return _clean_number(lead.group())
    if "\\" in line:  # a LaTeX answer such as \frac{1}{2}
        return line
    m = _NUMBER.search(line)
    return _clean_number(m.group()) if m else None


def extract_answer(text: str) -> str | None:
    """The final answer stated in `text`, as a string: the content of the last \\boxed{}, else what follows the last
    '####', else what follows the last 'answer is' / 'answer:', else the last number in the text (commas removed,
    "1,234." -> "1234"). None if there is none."""
    if not isinstance(text, str) or not text:
        return None
    text = text.replace("\u2212", "-")  # the Unicode minus sign
    boxed = _last_boxed(text)
    if boxed:
        return boxed
    for marker in (_HASHES, _ANSWER_IS):
        parts = marker.split(text)
        if len(parts) > 1 and (found := _stated_answer(parts[-1])):
            return found
    numbers = _NUMBER.findall(text)
    return _clean_number(numbers[-1]) if numbers else None


_MAX_CHARS = 200  # longer "answers" are compared as strings
_MAX_DIGITS = 100_000  # a power with more digits than this is not computed
# Constructs that make sympy compute arbitrarily large numbers already while parsing (binomial) or verifying
# (factorial of a big number or of an expression, sums and products over huge ranges). A final answer containing
# them is not simplified anyway.
_UNSAFE = re.compile(r"(\d{4,}|[})\]])\s*!|\\[dt]?binom|\\choose|\\sum|\\prod|\\int|\\lim")


def _sympy_safe_text(s: str) -> bool:
    return len(s) <= _MAX_CHARS and not _UNSAFE.search(s)


def _sympy_safe_expr(expr) -> bool:
    """False if a numeric power in `expr` (innermost first) has more than _MAX_DIGITS digits: sympy would compute
    it exactly and not return (10^{10^{7}}, power towers)."""
    if not isinstance(expr, Basic):
        return True
    for node in postorder_traversal(expr):
        if isinstance(node, (Pow, exp)) and node.is_number:
            base, power = (node.base, node.exp) if isinstance(node, Pow) else (E, node.args[0])
            try:
                b, p = float(abs(base.evalf(15))), float(abs(power.evalf(15)))
            except (TypeError, ValueError, OverflowError):
                return False
            if b not in (0.0, 1.0) and not p * abs(math.log10(b)) <= _MAX_DIGITS:  # NaN (inf * 0) is unsafe too
                return False
    return True


def _parse(s: str) -> list:
    # timeouts off: math-verify's timeout uses signal.alarm, which fails outside the main thread
    parsed = parse(f"${s}$", parsing_timeout=None) or parse(s, parsing_timeout=None)
    return parsed if all(_sympy_safe_expr(e) for e in parsed) else []


def answers_match(pred: str | None, gold: str) -> bool:
    """True when pred and gold are the same answer (0.5 == \\frac{1}{2}, 12 == 12.0, 1,234 == 1234), by numeric
    comparison for plain numbers, else math-verify, else the strings without spaces. False for None or anything
    that cannot be compared; never raises."""
    if pred is None or gold is None:
        return False
    pred, gold = str(pred).strip(), str(gold).strip()
    if not pred or not gold:
        return False
    try:
        a, b = float(_clean_number(pred)), float(_clean_number(gold))
        return a == b or abs(a - b) <= 1e-6 * max(1.0, abs(b))
    except ValueError:
        pass
    try:
        if _sympy_safe_text(pred) and _sympy_safe_text(gold):
            g, p = _parse(gold), _parse(pred)
            if g and p:
                return bool(verify(g, p, timeout_seconds=None))
    except Exception:  # math-verify on arbitrary model output: any failure is a wrong answer
        pass
    return pred.replace(" ", "") == gold.replace(" ", "")


@REWARDS.register("math_verify")
def math_verify_reward(prompts, completions, answer, **kwargs) -> list[float]:
    """1.0 where the completion's final answer (extract_answer) equals the gold `answer` column (answers_match),
    else 0.0; one value per completion."""
    return [1.0 if answers_match(extract_answer(_text(c)), None if a is None else str(a)) else 0.0
            for c, a in zip(completions, answer)]


_STATED = re.compile(r"\\boxed\{\s*[^\s}]|####\s*\$?-?\.?\d|answer\s*(?:is\b|:)\s*:?\s*\$?-?\.?\d", re.IGNORECASE)


@REWARDS.register("format")
def format_reward(prompts, completions, **kwargs) -> list[float]:
    """1.0 where the completion states its final answer explicitly: a non-empty \\boxed{...}, '#### N', or
    'the answer is N' / 'Answer: N' with N a number; else 0.0. One value per completion."""
    return [1.0 if _STATED.search(_text(c)) else 0.0 for c in completions]
