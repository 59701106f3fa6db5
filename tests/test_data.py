"""Data: generated problems, loading the real sets in ../shared/data, prompts, the resumable sampler."""

from __future__ import annotations

import json
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rl.data import (ArithmeticConfig, DataConfig, DatasetConfig, PromptSampler, arithmetic_problems,
                     load_dataset_rows, prepare_prompts)
from tests.conftest import SHARED_DATA


def _solve(question: str) -> int:
    value = int(re.match(r"\w+ has (\d+)", question).group(1))
    for verb, b in re.findall(r"(buys|finds|more\.|gives away|loses|uses|times as large)\D*?(\d+)", question):
        pass
    steps = re.findall(r"(buys (\d+)|finds (\d+)|gives \w+ (\d+) more|gives away (\d+)|loses (\d+)|uses (\d+)|"
                       r"becomes (\d+) times)", question)
    for s in steps:
        n = int(next(x for x in s[1:] if x))
        value = value + n if s[0].startswith(("buys", "finds", "gives him", "gives her")) else (
            value * n if s[0].startswith("becomes") else value - n)
    return value


def test_arithmetic_is_seeded_correct_and_disjoint():
    cfg = ArithmeticConfig(num_train=500, num_eval=100, min_ops=1, max_ops=3, operations=["+", "-", "*"], seed=3)
    train, test = arithmetic_problems(cfg, "train"), arithmetic_problems(cfg, "test")
    assert train == arithmetic_problems(cfg, "train") and len(train) == 500 and len(test) == 100
    assert not {p["question"] for p in train} & {p["question"] for p in test}
    for p in train + test:
        assert int(p["answer"]) == _solve(p["question"]) >= 0
        assert 1 <= p["num_ops"] <= 3
    other = arithmetic_problems(ArithmeticConfig(num_train=500, seed=4), "train")
    assert other != arithmetic_problems(ArithmeticConfig(num_train=500, seed=3), "train")


def test_arithmetic_bad_settings():
    with pytest.raises(ValueError, match="operations"):
        arithmetic_problems(ArithmeticConfig(operations=["/"]), "train")
    with pytest.raises(ValueError, match="distinct problems"):
        arithmetic_problems(ArithmeticConfig(num_train=100000, max_value=2), "train")


def test_real_sets_load_in_one_shape():
    data = DataConfig(instruction=" Answer:")
    gsm = load_dataset_rows(DatasetConfig(source=str(SHARED_DATA / "gsm8k/test.jsonl"), answer_after="####"), data)
    assert gsm[0]["answer"] == "18" and gsm[0]["prompt"].endswith(" Answer:")
    svamp = load_dataset_rows(DatasetConfig(source=str(SHARED_DATA / "svamp/test.jsonl"),
                                            prompt_template="{Body} {Question}", answer_column="Answer", limit=5), data)
    assert len(svamp) == 5 and "Body" in svamp.column_names and not svamp[0]["answer"].endswith(".0")
    knowrl = load_dataset_rows(DatasetConfig(source=str(SHARED_DATA / "knowrl/train.json"), answer_column="answers"),
                               data)
    assert len(knowrl) == 3177


@pytest.mark.parametrize(
    "content, kwargs, words",
    [(None, {}, "does not exist"), ("", {}, "is empty"), ('{"question": "a", "answer": "1"}\n{oops\n', {}, "could not be read"),
     ('{"q": "a", "answer": "1"}\n', {}, "needs column(s) ['question']"),
     ('{"question": "a", "ans": "1"}\n', {}, "answer_column 'answer'"),
     ('{"question": "a", "answer": "1"}\n{"question": null, "answer": "2"}\n', {}, "row 1"),
     ('{"question": "a", "answer": "no marker"}\n', {"answer_after": "####"}, "row 0")],
)
def test_bad_files_give_clear_errors(tmp_path, content, kwargs, words):
    path = tmp_path / "d.jsonl"
    if content is not None:
        path.write_text(content)
    with pytest.raises((ValueError, FileNotFoundError)) as e:
        load_dataset_rows(DatasetConfig(source=str(path), **kwargs), DataConfig())
    assert words in str(e.value)


def test_prompt_overflow_policies(smollm2_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smollm2_path)
    rows = load_dataset_rows(DatasetConfig(source=str(SHARED_DATA / "gsm8k/test.jsonl"), answer_after="####",
                                           limit=20), DataConfig())
    lengths = [len(p) for p in prepare_prompts(rows, tok, DataConfig(max_prompt_tokens=10_000))[1]]
    limit = sorted(lengths)[10]
    kept, ids, stats = prepare_prompts(rows, tok, DataConfig(max_prompt_tokens=limit))
    assert len(kept) == len(ids) == sum(n <= limit for n in lengths) and stats["num_dropped_too_long"] == 20 - len(ids)
    kept, ids, stats = prepare_prompts(rows, tok, DataConfig(max_prompt_tokens=limit, prompt_overflow="truncate"))
    assert len(ids) == 20 and max(map(len, ids)) == limit and stats["num_truncated"] > 0
    with pytest.raises(ValueError, match="data.max_prompt_tokens"):
        prepare_prompts(rows, tok, DataConfig(max_prompt_tokens=limit, prompt_overflow="error"))
    tok.chat_template = None
    with pytest.raises(ValueError, match="chat template"):
        prepare_prompts(rows, tok, DataConfig())


def test_sampler_covers_each_row_once_per_epoch():
    s = PromptSampler(10, seed=1)
    first, second = s.next_indices(10), s.next_indices(10)
    assert sorted(first) == sorted(second) == list(range(10)) and first != second
    assert PromptSampler(10, seed=1).next_indices(20) == first + second
    assert PromptSampler(10, seed=1, shuffle=False).next_indices(12) == list(range(10)) + [0, 1]


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 40), st.integers(1, 9))
def test_sampler_resumes_exactly(split, k):
    a = PromptSampler(7, seed=5)
    a.next_indices(split)
    state = json.loads(json.dumps(a.state_dict()))
    b = PromptSampler(7, seed=5)
    b.load_state_dict(state)
    assert a.next_indices(k * 3) == b.next_indices(k * 3)
    with pytest.raises(ValueError, match="num_rows"):
        PromptSampler(8, seed=5).load_state_dict(state)
