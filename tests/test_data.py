"""Data: generated problems, the data mirror and the real sets in it (when one is there), chat prompts, the resumable
sampler.

Everything here runs offline: the tokenizer is a tiny byte-level BPE trained in memory, not a hub download.
"""

from __future__ import annotations

import json
import re

import datasets
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rl.models.chat import render_prompts
from rl.data.prompts import PromptSampler, arithmetic_problems, load_dataset_rows, load_prompts, prepare_prompts, preset
from rl.config.data import ArithmeticConfig, DataConfig, DatasetConfig, FewShotExample
from rl.data.sources import DataUnavailable
from tests.conftest import SHARED_DATA, requires_mirror

GSM8K_TEST = str(SHARED_DATA / "gsm8k" / "test.jsonl")
SVAMP = str(SHARED_DATA / "svamp" / "test.jsonl")
KNOWRL = str(SHARED_DATA / "knowrl" / "train.json")


@pytest.fixture(autouse=True, scope="module")
def _datasets_cache(tmp_path_factory):
    """Keep the Arrow caches that load_dataset writes for these tests out of the home folder."""
    old = datasets.config.HF_DATASETS_CACHE
    datasets.config.HF_DATASETS_CACHE = tmp_path_factory.mktemp("hf-datasets-cache")
    yield
    datasets.config.HF_DATASETS_CACHE = old


# -- generated arithmetic ---------------------------------------------------------------------------------------


def _replay(question: str) -> tuple[int, list[tuple[str, int]], list[int]]:
    """Re-derive a problem from its text alone: the start count, the (op, operand) steps, every running count.

    The wording contract: the first sentence holds the start count, each later sentence with a number is one step,
    "+" steps say "more", "*" steps say "times", "-" steps say neither; the question holds no number."""
    sentences = [s for s in re.split(r"(?<=[.?])\s+", question) if s]
    assert sentences[-1].endswith("?") and not re.search(r"\d", sentences[-1])
    (start,) = map(int, re.findall(r"\d+", sentences[0]))
    value, steps, running = start, [], [start]
    for s in sentences[1:-1]:
        (b,) = map(int, re.findall(r"\d+", s))
        op = "+" if " more" in s else "*" if " times" in s else "-"
        value = value + b if op == "+" else value * b if op == "*" else value - b
        steps.append((op, b))
        running.append(value)
    return start, steps, running


def test_arithmetic_is_deterministic_and_seeded():
    cfg = ArithmeticConfig(num_train=300, num_eval=50, max_ops=3, operations=["+", "-", "*"], seed=3)
    train, test = arithmetic_problems(cfg, "train"), arithmetic_problems(cfg, "test")
    assert train == arithmetic_problems(cfg, "train") and test == arithmetic_problems(cfg, "test")
    assert len(train) == 300 and len(test) == 50
    assert set(train[0]) == {"question", "answer", "num_ops"}
    other = ArithmeticConfig(num_train=300, num_eval=50, max_ops=3, operations=["+", "-", "*"], seed=4)
    assert arithmetic_problems(other, "train") != train and arithmetic_problems(other, "test") != test
    # the train set does not depend on how many eval problems are asked for
    assert arithmetic_problems(ArithmeticConfig(num_train=300, num_eval=7, max_ops=3, operations=["+", "-", "*"],
                                                seed=3), "train") == train


@pytest.mark.parametrize("cfg", [
    ArithmeticConfig(),
    ArithmeticConfig(num_train=2000, num_eval=300, max_value=4, operations=["+"], seed=1),  # a small space
    ArithmeticConfig(num_train=1000, num_eval=200, min_ops=2, max_ops=3, operations=["+", "-", "*"], seed=2),
])
def test_arithmetic_train_and_test_are_disjoint_and_distinct(cfg):
    train, test = arithmetic_problems(cfg, "train"), arithmetic_problems(cfg, "test")
    train_q, test_q = [p["question"] for p in train], [p["question"] for p in test]
    assert len(set(train_q)) == len(train_q) == cfg.num_train and len(set(test_q)) == len(test_q) == cfg.num_eval
    assert not set(train_q) & set(test_q)


@pytest.mark.parametrize("ops", [["+", "-"], ["+", "-", "*"], ["-"], ["*"], ["+", "*"]])
def test_arithmetic_answers_are_correct_and_positive(ops):
    cfg = ArithmeticConfig(num_train=400, num_eval=100, min_ops=1, max_ops=4, max_value=15, operations=ops, seed=7)
    for p in arithmetic_problems(cfg, "train") + arithmetic_problems(cfg, "test"):
        start, steps, running = _replay(p["question"])
        assert len(steps) == p["num_ops"]
        assert p["answer"] == str(running[-1]), p["question"]
        assert min(running) >= 1, p["question"]  # no count ever goes negative (or to zero)
        assert {op for op, _ in steps} <= set(ops)


def test_arithmetic_difficulty_knobs():
    easy = arithmetic_problems(ArithmeticConfig(), "train")
    assert len(easy) == 4000 and all(p["num_ops"] == 1 for p in easy)  # the default is one-step problems
    for p in easy:
        start, steps, _ = _replay(p["question"])
        assert 1 <= start <= 20 and all(op in "+-" and 1 <= b <= 20 for op, b in steps)
        assert 1 <= int(p["answer"]) <= 40
    assert {_replay(p["question"])[1][0][0] for p in easy} == {"+", "-"}

    cfg = ArithmeticConfig(num_train=600, num_eval=0, min_ops=2, max_ops=4, max_value=50, operations=["+", "*"])
    hard = arithmetic_problems(cfg, "train")
    assert {p["num_ops"] for p in hard} == {2, 3, 4}
    for p in hard:
        start, steps, _ = _replay(p["question"])
        assert 1 <= start <= 50
        assert all(1 <= b <= 50 if op == "+" else 2 <= b <= 50 for op, b in steps)
    assert {op for p in hard for op, _ in _replay(p["question"])[1]} == {"+", "*"}
    mean = lambda rows: sum(int(p["answer"]) for p in rows) / len(rows)  # noqa: E731
    assert mean(hard) > 10 * mean(easy)


def test_arithmetic_wording_counts_one_thing_in_the_singular():
    for p in arithmetic_problems(ArithmeticConfig(num_train=2000, num_eval=0, max_value=3), "train"):
        plural = re.search(r"How many (.+?) does", p["question"]).group(1)
        first = p["question"].split(". ")[0]
        assert f" 1 {plural} " not in first + " " and f" 1 {plural}." not in first + "."


def test_arithmetic_bad_settings():
    with pytest.raises(ValueError, match="operations"):
        arithmetic_problems(ArithmeticConfig(operations=["/"]), "train")
    with pytest.raises(ValueError, match="operations"):
        arithmetic_problems(ArithmeticConfig(operations=[]), "train")
    with pytest.raises(ValueError, match="min_ops <= max_ops"):
        arithmetic_problems(ArithmeticConfig(min_ops=3, max_ops=2), "train")
    with pytest.raises(ValueError, match="max_value"):
        arithmetic_problems(ArithmeticConfig(max_value=1), "train")
    with pytest.raises(ValueError, match="splits 'train' and 'test'"):
        arithmetic_problems(ArithmeticConfig(), "dev")
    with pytest.raises(ValueError, match="distinct train problems"):
        arithmetic_problems(ArithmeticConfig(num_train=10000, max_value=2, operations=["*"]), "train")


# -- loading data sets into one shape ----------------------------------------------------------------------------


@requires_mirror("gsm8k/test.jsonl")
def test_gsm8k_loads_with_the_answer_after_the_marker():
    rows = load_dataset_rows(DatasetConfig(source=GSM8K_TEST, answer_after="####"), DataConfig(instruction=" Go."))
    assert len(rows) == 1319
    first = rows[0]
    assert first["answer"] == "18"
    assert first["prompt"] == first["question"] + " Go." and first["question"].startswith("Janet")
    assert all(re.fullmatch(r"-?\d+(\.\d+)?", a) for a in rows["answer"])  # thousands separators removed
    # a folder of split-named files gives the asked-for split only
    folder = load_dataset_rows(DatasetConfig(source=str(SHARED_DATA / "gsm8k"), split="test", answer_after="####",
                                             limit=3), DataConfig())
    assert folder["question"] == rows["question"][:3]


@requires_mirror("svamp/test.jsonl")
def test_svamp_template_over_two_columns_and_float_answers():
    rows = load_dataset_rows(DatasetConfig(source=SVAMP, prompt_template="{Body} {Question}", answer_column="Answer",
                                           limit=50), DataConfig(instruction=" Answer with a number."))
    assert len(rows) == 50 and {"Body", "Question", "Answer", "Equation"} <= set(rows.column_names)
    r = rows[0]
    assert r["prompt"] == f"{r['Body']} {r['Question']} Answer with a number."
    assert r["answer"] == "145" and r["Answer"] == 145.0
    assert all(a == (str(int(x)) if x == int(x) else str(x)) for a, x in zip(rows["answer"], rows["Answer"]))


@requires_mirror("knowrl/train.json")
def test_knowrl_json_list_loads():
    rows = load_dataset_rows(DatasetConfig(source=KNOWRL, answer_column="answers"), DataConfig())
    assert len(rows) == 3177 and rows[0]["answer"] == "three seasons"
    assert rows[0]["prompt"] == "How many seasons of Hinterland are on Netflix?" and "title" in rows.column_names


def test_arithmetic_source_and_limit():
    data = DataConfig(arithmetic=ArithmeticConfig(num_train=30, num_eval=10))
    rows = load_dataset_rows(DatasetConfig(source="arithmetic", split="test", limit=4), data)
    assert len(rows) == 4 and rows["question"] == [p["question"] for p in arithmetic_problems(data.arithmetic,
                                                                                            "test")[:4]]
    assert rows["prompt"] == rows["question"] and set(rows.column_names) == {"question", "answer", "num_ops", "prompt"}
    none = load_dataset_rows(DatasetConfig(source="arithmetic", split="test"),
                             DataConfig(arithmetic=ArithmeticConfig(num_train=5, num_eval=0)))
    assert len(none) == 0 and {"prompt", "answer"} <= set(none.column_names)


def test_other_formats_relative_paths_and_existing_prompt_columns(tmp_path, monkeypatch):
    table = datasets.Dataset.from_list([{"prompt": "What is 2+2?", "answer": 4}, {"prompt": "1,000 + 1?",
                                                                                  "answer": 1001}])
    table.to_parquet(str(tmp_path / "p.parquet"))
    table.to_csv(str(tmp_path / "c.csv"), index=False)
    (tmp_path / "l.jsonl").write_text('{"prompt": "What is 2+2?", "answer": "4"}\n\n{"prompt": "x", "answer": '
                                      '"1,000"}\n')
    monkeypatch.chdir(tmp_path)  # relative paths resolve against the current directory
    for name in ("p.parquet", "c.csv", "./l.jsonl"):
        rows = load_dataset_rows(DatasetConfig(source=name, prompt_template="Q: {prompt}"), DataConfig(instruction="!"))
        assert rows["prompt"][0] == "Q: What is 2+2?!" and rows["answer"][0] == "4", name
    assert rows["answer"][1] == "1000"


def test_parquet_text_that_is_not_utf8_is_named_before_any_row_is_read(tmp_path):
    # found by tests/test_fuzz_inputs.py: datasets loads such a file and only fails when a row is read
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"question": ["What is 2+2?"], "answer": ["4"]}), path, compression="none",
                   use_dictionary=False, write_statistics=False)
    path.write_bytes(path.read_bytes().replace(b"What", b"\x80hat", 1))
    with pytest.raises(ValueError, match=r"bad\.parquet.*UTF8.*rewrite the file with UTF-8 text"):
        load_dataset_rows(DatasetConfig(source=str(path), prompt_template="{question}"), DataConfig())


def test_hub_names_go_to_load_dataset(monkeypatch):
    calls = []

    def fake(name, subset=None, split=None):
        calls.append((name, subset, split))
        if name == "nobody/nothing":
            raise FileNotFoundError("Dataset 'nobody/nothing' doesn't exist on the Hub")
        return datasets.Dataset.from_list([{"question": "q", "answer": "r #### 7"}])

    monkeypatch.setattr(datasets, "load_dataset", fake)
    monkeypatch.delenv("RLVR_DATA_DIR", raising=False)  # no data mirror
    monkeypatch.setattr("rl.data.prompts.hub_reachable", lambda: True)
    rows = load_dataset_rows(DatasetConfig(source="openai/gsm8k", subset="main", split="test", answer_after="####"),
                             DataConfig())
    assert calls == [("openai/gsm8k", "main", "test")] and rows[0]["answer"] == "7"
    with pytest.raises(ValueError, match="nobody/nothing.*hub data set.*doesn't exist"):
        load_dataset_rows(DatasetConfig(source="nobody/nothing"), DataConfig())


def _write_jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_a_data_mirror_is_looked_up_before_the_hub(tmp_path, monkeypatch):
    """Known sets by hub id map to the mirror's short-name files (aime_2024's hub split is train, its copy
    aime24/test.jsonl); any other hub id to a folder named like it; a relative file name to the mirror's file."""
    monkeypatch.setattr("rl.data.prompts._load_hub", lambda ds, offline=False: pytest.fail(f"asked the hub for {ds.source}"))
    mirror = tmp_path / "mirror"
    _write_jsonl(mirror / "svamp" / "test.jsonl", [{"Body": "Sam has 3 apples.", "Question": "How many?", "Answer": 3.0}])
    _write_jsonl(mirror / "aime24" / "test.jsonl", [{"problem": "p", "answer": "204"}])
    _write_jsonl(mirror / "someone" / "qa" / "test.jsonl", [{"question": "q", "answer": "1"}])
    _write_jsonl(mirror / "someone" / "qa" / "train.jsonl", [{"question": "q", "answer": "2"}])
    _write_jsonl(mirror / "facts" / "train.jsonl", [{"question": "q", "answer": "3"}])
    monkeypatch.delenv("RLVR_DATA_DIR", raising=False)
    svamp = DatasetConfig(source="ChilleD/SVAMP", split="test", prompt_template="{Body} {Question}",
                          answer_column="Answer")
    rows = load_dataset_rows(svamp, DataConfig(mirror=str(mirror)))
    assert rows["prompt"] == ["Sam has 3 apples. How many?"] and rows["answer"] == ["3"]
    monkeypatch.setenv("RLVR_DATA_DIR", str(mirror))  # the environment variable, when data.mirror is unset
    assert load_dataset_rows(svamp, DataConfig())["answer"] == ["3"]
    assert load_dataset_rows(preset("aime24"), DataConfig())["answer"] == ["204"]
    assert load_dataset_rows(DatasetConfig(source="someone/qa", split="train"), DataConfig())["answer"] == ["2"]
    assert load_dataset_rows(DatasetConfig(source="facts/train.jsonl"), DataConfig())["answer"] == ["3"]
    monkeypatch.chdir(tmp_path)  # a local file of that name wins over the mirror
    _write_jsonl(tmp_path / "facts" / "train.jsonl", [{"question": "q", "answer": "4"}])
    assert load_dataset_rows(DatasetConfig(source="facts/train.jsonl"), DataConfig())["answer"] == ["4"]


def test_a_set_with_no_mirror_copy_and_no_hub_is_named_with_the_fix(tmp_path, monkeypatch):
    """Offline, only the local hub cache is asked (no network retries), and the error names the set, its hub id, the
    mirror file it would be and both ways to point at a copy."""
    asked = []

    def cache_only(name, subset=None, split=None):
        asked.append((name, datasets.config.HF_HUB_OFFLINE))
        raise ConnectionError("Couldn't reach the Hub (OfflineModeIsEnabled)")

    monkeypatch.setattr(datasets, "load_dataset", cache_only)
    monkeypatch.setattr("rl.data.prompts.hub_reachable", lambda: False)
    monkeypatch.setenv("RLVR_DATA_DIR", str(tmp_path))  # an empty mirror
    with pytest.raises(DataUnavailable) as e:
        load_prompts(preset("gsm8k"), "eval_sets.gsm8k", DataConfig(), None)
    assert asked == [("openai/gsm8k", True)] and datasets.config.HF_HUB_OFFLINE is False
    for words in ("eval_sets.gsm8k", "'openai/gsm8k'", "subset 'main'", f"{tmp_path} has no gsm8k/test.jsonl",
                  "hub cannot be reached", "set source to its path", "data.mirror=DIR", "RLVR_DATA_DIR=DIR"):
        assert words in str(e.value), words
    monkeypatch.delenv("RLVR_DATA_DIR")
    with pytest.raises(DataUnavailable, match="'knowrl/train.json' is not a local file, no data mirror is set.*"
                                              "KnowRL authors' release"):
        load_dataset_rows(DatasetConfig(source="knowrl/train.json"), DataConfig())


def test_hub_reachability_is_a_quick_check(monkeypatch):
    from rl.data.sources import hub_reachable

    hub_reachable.cache_clear()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert hub_reachable() is False
    hub_reachable.cache_clear()
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens on the discard port here
    assert hub_reachable() is False
    hub_reachable.cache_clear()


@pytest.mark.parametrize(
    "name, content, kwargs, words",
    [
        ("d.jsonl", None, {}, ["does not exist", "d.jsonl"]),
        ("d.jsonl", "", {}, ["is empty"]),
        ("d.jsonl", "\n  \n", {}, ["is empty"]),
        ("d.jsonl", '{"question": "a", "answer": "1"}\n{oops\n', {}, ["malformed JSON", "line 2"]),
        ("d.json", '[{"question": "a", "answer": "1"},\n {"question": "b" "answer": "2"}]', {}, ["malformed JSON",
                                                                                              "line 2"]),
        ("d.jsonl", '{"q": "a", "answer": "1"}\n', {}, ["needs column 'question'", "row 0", "['q', 'answer']"]),
        ("d.jsonl", '{"question": "a", "ans": "1"}\n', {}, ["answer_column 'answer'", "['question', 'ans']"]),
        ("d.jsonl", '{"question": "a", "answer": "1"}\n{"answer": "2"}\n', {}, ["row 1", "'question'", "['answer']"]),
        ("d.jsonl", '{"question": "a", "answer": "no marker"}\n', {"answer_after": "####"}, ["row 0", "####"]),
        ("d.jsonl", '{"question": "a", "answer": "1"}\n', {"prompt_template": "{} {question}"}, ["positional"]),
        ("d.jsonl", '{"question": "a", "answer": "1"}\n', {"limit": 0}, ["limit=0"]),
        ("d.txt", "question,answer\n", {}, ["unknown extension", ".txt"]),
    ],
)
def test_bad_inputs_give_clear_errors(tmp_path, name, content, kwargs, words):
    path = tmp_path / name
    if content is not None:
        path.write_text(content)
    with pytest.raises((ValueError, FileNotFoundError)) as e:
        load_dataset_rows(DatasetConfig(source=str(path), **kwargs), DataConfig())
    for w in words:
        assert w in str(e.value), (w, str(e.value))


# -- chat prompts with an offline tokenizer ----------------------------------------------------------------------

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


@pytest.fixture(scope="module")
def tokenizer():
    """A byte-level BPE trained in memory on a few sentences, wrapped as a transformers tokenizer with ChatML."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    sentences = [p["question"] for p in arithmetic_problems(ArithmeticConfig(num_train=200, num_eval=0), "train")]
    bpe.train_from_iterator(sentences + ["user assistant system", "How much in dollars does she make?"], trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                  bos_token="<|im_start|>")
    tok.chat_template = CHATML
    return tok


def test_render_prompts_uses_the_chat_template(tokenizer):
    ids = render_prompts(tokenizer, ["Sam has 7 apples.", "How many?"], None)
    assert tokenizer.decode(ids[0]) == "<|im_start|>user\nSam has 7 apples.<|im_end|>\n<|im_start|>assistant\n"
    one = tokenizer.apply_chat_template([{"role": "user", "content": "How many?"}], add_generation_prompt=True,
                                        tokenize=True, return_dict=False)
    assert ids[1] == list(one)
    with_system = render_prompts(tokenizer, ["How many?"], "Be brief.")[0]
    assert tokenizer.decode(with_system).startswith("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user")
    assert with_system[-len(ids[1]):] == ids[1]
    assert render_prompts(tokenizer, [], None) == []
    shot = render_prompts(tokenizer, ["How many?"], None, [FewShotExample("What is 2+2?", "<answer>4</answer>")])[0]
    assert tokenizer.decode(shot) == ("<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n<answer>4</answer>"
                                      "<|im_end|>\n<|im_start|>user\nHow many?<|im_end|>\n<|im_start|>assistant\n")


def test_a_tokenizer_without_a_chat_template_is_refused(tokenizer):
    plain = tokenizer.__class__(tokenizer_object=tokenizer.backend_tokenizer)
    plain.chat_template = None
    with pytest.raises(ValueError, match="no chat template; set one"):
        render_prompts(plain, ["hi"], None)


def test_prompt_overflow_policies(tokenizer):
    rows = load_dataset_rows(DatasetConfig(source="arithmetic", limit=20),  # problems of 1 to 6 steps: ragged lengths
                             DataConfig(arithmetic=ArithmeticConfig(num_train=20, max_ops=6)))
    full = prepare_prompts(rows, tokenizer, DataConfig(max_prompt_tokens=100_000))[1]
    lengths = [len(p) for p in full]
    limit = sorted(lengths)[10]
    n_long = sum(n > limit for n in lengths)
    assert 0 < n_long < 20

    kept, ids, stats = prepare_prompts(rows, tokenizer, DataConfig(max_prompt_tokens=limit))
    assert stats == {"num_rows": 20, "num_dropped_too_long": n_long, "num_truncated": 0}
    assert len(kept) == len(ids) == 20 - n_long and max(map(len, ids)) <= limit
    assert kept["question"] == [q for q, n in zip(rows["question"], lengths) if n <= limit]  # rows match their ids
    assert ids == [p for p in full if len(p) <= limit]

    kept, ids, stats = prepare_prompts(rows, tokenizer, DataConfig(max_prompt_tokens=limit, prompt_overflow="truncate"))
    assert stats == {"num_rows": 20, "num_dropped_too_long": 0, "num_truncated": n_long}
    assert len(kept) == 20 and ids == [p[-limit:] for p in full]  # the last max_prompt_tokens tokens are kept

    first = next(i for i, n in enumerate(lengths) if n > limit)
    with pytest.raises(ValueError) as e:
        prepare_prompts(rows, tokenizer, DataConfig(max_prompt_tokens=limit, prompt_overflow="error"))
    assert f"row {first}'s prompt has {lengths[first]} tokens" in str(e.value)
    assert "data.max_prompt_tokens" in str(e.value)

    with pytest.raises(ValueError, match="data.prompt_overflow"):
        prepare_prompts(rows, tokenizer, DataConfig(prompt_overflow="clip"))
    kept, ids, stats = prepare_prompts(rows, tokenizer, DataConfig(max_prompt_tokens=100_000,
                                                                   system_prompt="You solve math."))
    assert len(kept) == 20 and all(len(a) > len(b) for a, b in zip(ids, full))


# -- the resumable sampler ---------------------------------------------------------------------------------------


def test_sampler_is_seeded_and_covers_each_row_once_per_epoch():
    s = PromptSampler(10, seed=1)
    epochs = [s.next_indices(10) for _ in range(4)]
    assert all(sorted(e) == list(range(10)) for e in epochs)
    assert len({tuple(e) for e in epochs}) == 4  # a fresh permutation each epoch
    assert s.epoch == 3 and s.position == 10
    assert PromptSampler(10, seed=1).next_indices(40) == sum(epochs, [])
    assert PromptSampler(10, seed=2).next_indices(40) != sum(epochs, [])
    assert PromptSampler(10, seed=1, shuffle=False).next_indices(12) == list(range(10)) + [0, 1]
    # uneven batches cross epoch boundaries seamlessly
    t = PromptSampler(7, seed=9)
    stream = sum((t.next_indices(k) for k in (3, 5, 0, 6, 9, 1)), [])
    assert stream == PromptSampler(7, seed=9).next_indices(24)
    assert all(sorted(stream[i:i + 7]) == list(range(7)) for i in range(0, 21, 7))
    with pytest.raises(ValueError):
        PromptSampler(0, seed=1)


@settings(max_examples=60, deadline=None)
@given(num_rows=st.integers(1, 15), seed=st.integers(0, 3), shuffle=st.booleans(),
       before=st.lists(st.integers(0, 12), max_size=6), after=st.lists(st.integers(0, 12), min_size=1, max_size=6))
def test_sampler_resumes_exactly(num_rows, seed, shuffle, before, after):
    a = PromptSampler(num_rows, seed, shuffle)
    for k in before:
        a.next_indices(k)
    state = json.loads(json.dumps(a.state_dict()))  # survives a checkpoint file
    assert state == {"epoch": a.epoch, "position": a.position, "seed": seed, "num_rows": num_rows, "shuffle": shuffle}
    b = PromptSampler(num_rows, seed, shuffle)
    b.load_state_dict(state)
    assert [a.next_indices(k) for k in after] == [b.next_indices(k) for k in after]
    # and the whole stream equals one that never stopped
    whole = PromptSampler(num_rows, seed, shuffle).next_indices(sum(before) + sum(after))
    c = PromptSampler(num_rows, seed, shuffle)
    c.load_state_dict(state)
    assert whole[sum(before):] == c.next_indices(sum(after))


def test_sampler_refuses_a_state_from_other_data():
    state = PromptSampler(7, seed=5).state_dict()
    with pytest.raises(ValueError, match="num_rows=7"):
        PromptSampler(8, seed=5).load_state_dict(state)
    with pytest.raises(ValueError, match="seed=5"):
        PromptSampler(7, seed=6).load_state_dict(state)
    with pytest.raises(ValueError, match="out of range"):
        PromptSampler(7, seed=5).load_state_dict({**state, "position": 9})


def test_offset_and_limit_slice_one_file_into_train_and_held_out(tmp_path):
    from rl.data.prompts import load_dataset_rows
    from rl.config.data import DataConfig, DatasetConfig

    path = tmp_path / "rows.jsonl"
    path.write_text("".join(f'{{"q": "What is {i}+0?", "a": "{i}"}}\n' for i in range(10)))
    data = DataConfig()
    train = load_dataset_rows(DatasetConfig(source=str(path), prompt_template="{q}", answer_column="a", limit=7), data)
    held = load_dataset_rows(DatasetConfig(source=str(path), prompt_template="{q}", answer_column="a", offset=7), data)
    assert train["answer"] == [str(i) for i in range(7)] and held["answer"] == ["7", "8", "9"]
    with pytest.raises(ValueError, match="offset=-1"):
        load_dataset_rows(DatasetConfig(source=str(path), offset=-1), data)


def test_a_data_file_named_in_a_reward_is_found_in_the_mirror(tmp_path, monkeypatch):
    from rl.data.sources import resolve_data_file

    _write_jsonl(tmp_path / "knowrl" / "train.json", [{"question": "q", "answers": "a", "title": "t"}])
    monkeypatch.setenv("RLVR_DATA_DIR", str(tmp_path))
    monkeypatch.chdir(tmp_path / "knowrl")  # not found relative to here: the mirror's copy
    assert resolve_data_file("knowrl/train.json", "knowledge.qa_data") == str(tmp_path / "knowrl" / "train.json")
    monkeypatch.setenv("RLVR_DATA_DIR", str(tmp_path / "nothing"))
    with pytest.raises(DataUnavailable, match=r"knowledge.qa_data: data file 'knowrl/train.json' .* has no "
                                              r"knowrl/train.json.*KnowRL authors' release"):
        resolve_data_file("knowrl/train.json", "knowledge.qa_data")
    assert resolve_data_file("/no/such/file.json", "k") == "/no/such/file.json"  # its reader names the problem


def test_only_evaluation_sets_may_be_optional():
    from rl.config.data import check_dataset_config

    check_dataset_config(DatasetConfig(optional=True), "eval_sets.svamp")
    with pytest.raises(ValueError, match="data.train.optional=true: a run cannot skip its training set"):
        check_dataset_config(DatasetConfig(optional=True), "data.train")
