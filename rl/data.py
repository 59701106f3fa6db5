"""Data: generated arithmetic word problems, any local or hub data set in one shape, chat prompts, a resumable sampler.

Every data set becomes rows with a "prompt" (the user text) and an "answer" (the gold answer), plus its own columns,
which reward functions receive as keyword arguments.
"""

from __future__ import annotations

import random
import string
from dataclasses import dataclass, field
from pathlib import Path

import datasets

# -- generated arithmetic word problems (the quickstart needs no download) ----------------------------------------


@dataclass
class ArithmeticConfig:
    num_train: int = 4000
    num_eval: int = 200
    min_ops: int = 1  # operations per problem
    max_ops: int = 1
    max_value: int = 20  # operands drawn from [1, max_value]
    operations: list[str] = field(default_factory=lambda: ["+", "-"])  # a subset of + - *
    seed: int = 0


_NAMES = {"Sam": "He", "Mia": "She", "Tom": "He", "Ava": "She", "Leo": "He", "Zoe": "She", "Max": "He", "Ivy": "She",
          "Ben": "He", "Lily": "She", "Omar": "He", "Nina": "She", "Raj": "He", "Emma": "She"}
_OBJECTS = ["apples", "books", "marbles", "stickers", "pencils", "cookies", "coins", "cards", "shells", "toy cars"]
_FIRST = "{name} has {a} {obj}."
_STEP = {
    "+": ["{pron} buys {b} more.", "{pron} finds {b} more.", "A friend gives {obj_pron} {b} more."],
    "-": ["{pron} gives away {b}.", "{pron} loses {b}.", "{pron} uses {b}."],
    "*": ["Then the number of {obj} {pron_l} has becomes {b} times as large."],
}
_QUESTION = "How many {obj} does {name} have now?"


def _problem(rng: random.Random, cfg: ArithmeticConfig) -> dict:
    name, obj = rng.choice(list(_NAMES)), rng.choice(_OBJECTS)
    pron = _NAMES[name]
    value = rng.randint(1, cfg.max_value)
    text = [_FIRST.format(name=name, a=value, obj=obj)]
    num_ops = rng.randint(cfg.min_ops, cfg.max_ops)
    for _ in range(num_ops):
        op = rng.choice(cfg.operations)
        if op == "-" and value <= 1:
            op = "+"
        b = rng.randint(1, value - 1) if op == "-" else (rng.randint(2, 4) if op == "*" else rng.randint(1, cfg.max_value))
        value = value + b if op == "+" else value - b if op == "-" else value * b
        step = rng.choice(_STEP[op])
        text.append(step.format(pron=pron, pron_l=pron.lower(), b=b, obj=obj, obj_pron="him" if pron == "He" else "her"))
    text.append(_QUESTION.format(obj=obj, name=name))
    return {"question": " ".join(text), "answer": str(value), "num_ops": num_ops}


def arithmetic_problems(cfg: ArithmeticConfig, split: str) -> list[dict]:
    """Seeded problems; "test" never repeats a "train" question (same seed, disjoint by construction)."""
    for op in cfg.operations:
        if op not in _STEP:
            raise ValueError(f"data.arithmetic.operations: {op!r} is not one of {list(_STEP)}")
    if not 1 <= cfg.min_ops <= cfg.max_ops:
        raise ValueError("data.arithmetic: need 1 <= min_ops <= max_ops")
    if cfg.max_value < 2:
        raise ValueError("data.arithmetic.max_value must be >= 2")
    rng = random.Random(cfg.seed)
    seen: set[str] = set()
    train: list[dict] = []
    test: list[dict] = []
    # one stream: test problems are drawn first and reserved, then train problems that are not already taken
    for target, n in ((test, cfg.num_eval), (train, cfg.num_train)):
        tries = 0
        while len(target) < n:
            tries += 1
            if tries > 50 * n + 1000:
                raise ValueError(
                    f"data.arithmetic: only {len(target)} distinct problems of {n} could be made; "
                    "raise max_value or max_ops, or ask for fewer"
                )
            p = _problem(rng, cfg)
            if p["question"] not in seen:
                seen.add(p["question"])
                target.append(p)
    if split == "train":
        return train
    if split in ("test", "eval", "validation"):
        return test
    raise ValueError(f"data: the arithmetic source has splits train and test, not {split!r}")


# -- any data set into rows of (prompt, answer, ...) --------------------------------------------------------------


@dataclass
class DatasetConfig:
    source: str = "arithmetic"  # "arithmetic" | a local .jsonl/.json/.parquet/.csv file | a hub data set name
    split: str = "train"
    subset: str | None = None  # hub config name
    prompt_template: str = "{question}"  # str.format over the row's columns, e.g. "{Body} {Question}" (SVAMP)
    answer_column: str = "answer"
    answer_after: str | None = None  # keep the text after the last occurrence of this marker (GSM8K: "####")
    limit: int | None = None  # the first N rows


@dataclass
class DataConfig:
    train: DatasetConfig = field(default_factory=DatasetConfig)
    eval: DatasetConfig | None = field(default_factory=lambda: DatasetConfig(split="test"))
    system_prompt: str | None = None
    instruction: str = ""  # appended to every user prompt, e.g. how to state the answer
    max_prompt_tokens: int = 256
    prompt_overflow: str = "drop"  # drop | truncate | error, for prompts longer than max_prompt_tokens
    shuffle: bool = True
    seed: int = 0
    arithmetic: ArithmeticConfig = field(default_factory=ArithmeticConfig)


_FORMATS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}


def _load_raw(ds: DatasetConfig, data: DataConfig) -> datasets.Dataset:
    if ds.source == "arithmetic":
        return datasets.Dataset.from_list(arithmetic_problems(data.arithmetic, ds.split))
    path = Path(ds.source).expanduser()
    looks_local = path.suffix in _FORMATS or ds.source.startswith((".", "/", "~"))
    if path.exists() or looks_local:
        if not path.exists():
            raise FileNotFoundError(f"data source {ds.source!r} does not exist (resolved to {path.resolve()})")
        files = [path] if path.is_file() else sorted(p for p in path.iterdir() if p.suffix in _FORMATS)
        if not files:
            raise ValueError(f"data source {ds.source!r}: no {'/'.join(_FORMATS)} file in the folder")
        fmt = _FORMATS.get(files[0].suffix)
        if fmt is None:
            raise ValueError(f"data source {ds.source!r}: unknown extension {files[0].suffix!r}; use {list(_FORMATS)}")
        if all(f.stat().st_size == 0 for f in files):
            raise ValueError(f"data source {ds.source!r} is empty")
        try:
            return datasets.load_dataset(fmt, data_files=[str(f) for f in files], split="train")
        except Exception as e:  # datasets wraps parse errors deeply; say which file and why
            raise ValueError(f"data source {ds.source!r} could not be read as {fmt}: {_root_cause(e)}") from e
    return datasets.load_dataset(ds.source, ds.subset, split=ds.split)


def _root_cause(e: BaseException) -> str:
    while e.__cause__ is not None or e.__context__ is not None:
        e = e.__cause__ or e.__context__
    return f"{type(e).__name__}: {e}"


def load_dataset_rows(ds: DatasetConfig, data: DataConfig) -> datasets.Dataset:
    """Rows with "prompt" (template filled + instruction) and "answer" (gold answer string) plus the source columns."""
    raw = _load_raw(ds, data)
    if ds.limit is not None:
        raw = raw.select(range(min(ds.limit, len(raw))))
    columns = set(raw.column_names)
    needed = {f for _, f, _, _ in string.Formatter().parse(ds.prompt_template) if f}
    missing = sorted(needed - columns)
    if missing:
        raise ValueError(
            f"data source {ds.source!r}: prompt_template {ds.prompt_template!r} needs column(s) {missing}; "
            f"the rows have {sorted(columns)}"
        )
    if ds.answer_column not in columns:
        raise ValueError(
            f"data source {ds.source!r}: answer_column {ds.answer_column!r} is not a column; the rows have {sorted(columns)}"
        )

    def convert(row: dict, idx: int) -> dict:
        for c in needed | {ds.answer_column}:
            if row[c] is None:
                raise ValueError(f"data source {ds.source!r}: row {idx} has no value in column {c!r}")
        answer = row[ds.answer_column]
        answer = str(int(answer)) if isinstance(answer, float) and answer.is_integer() else str(answer)
        if ds.answer_after is not None:
            if ds.answer_after not in answer:
                raise ValueError(f"data source {ds.source!r}: row {idx}'s answer has no {ds.answer_after!r} marker")
            answer = answer.rsplit(ds.answer_after, 1)[1].strip()
        return {"prompt": ds.prompt_template.format(**row) + data.instruction, "answer": answer.replace(",", "")
                if _is_number(answer.replace(",", "")) else answer}

    drop = [c for c in ("prompt", "answer") if c in columns]
    return raw.map(convert, with_indices=True, remove_columns=drop) if drop else raw.map(convert, with_indices=True)


def _is_number(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False


# -- chat prompts -------------------------------------------------------------------------------------------------


def render_prompts(tokenizer, user_texts: list[str], system_prompt: str | None) -> list[list[int]]:
    """Token ids of each user text wrapped in the tokenizer's chat template, ready for the assistant's turn."""
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            "the tokenizer has no chat template; set tokenizer.chat_template in the model folder "
            "(tokenizer_config.json or chat_template.jinja)"
        )
    head = [{"role": "system", "content": system_prompt}] if system_prompt else []
    out = []
    for text in user_texts:
        ids = tokenizer.apply_chat_template(head + [{"role": "user", "content": text}], add_generation_prompt=True)
        out.append(list(ids["input_ids"] if hasattr(ids, "keys") else ids))
    return out


def prepare_prompts(rows: datasets.Dataset, tokenizer, data: DataConfig) -> tuple[datasets.Dataset, list[list[int]], dict]:
    """Tokenised chat prompts with data.max_prompt_tokens applied by data.prompt_overflow; returns kept rows too."""
    ids = render_prompts(tokenizer, rows["prompt"], data.system_prompt)
    limit, keep, kept_ids = data.max_prompt_tokens, [], []
    stats = {"num_rows": len(rows), "num_dropped_too_long": 0, "num_truncated": 0}
    for i, p in enumerate(ids):
        if len(p) <= limit:
            keep.append(i)
            kept_ids.append(p)
        elif data.prompt_overflow == "drop":
            stats["num_dropped_too_long"] += 1
        elif data.prompt_overflow == "truncate":
            keep.append(i)
            kept_ids.append(p[-limit:])
            stats["num_truncated"] += 1
        elif data.prompt_overflow == "error":
            raise ValueError(
                f"row {i}'s prompt has {len(p)} tokens, over data.max_prompt_tokens={limit}; raise it or set "
                "data.prompt_overflow=drop"
            )
        else:
            raise ValueError(f"data.prompt_overflow={data.prompt_overflow!r}; choose drop, truncate or error")
    return (rows if len(keep) == len(rows) else rows.select(keep)), kept_ids, stats


# -- a sampler whose position can be saved and restored exactly ------------------------------------------------------


class PromptSampler:
    """Walks a fresh permutation of the rows each epoch (permutation e seeded by (seed, e)), across epoch bounds."""

    def __init__(self, num_rows: int, seed: int, shuffle: bool = True):
        if num_rows < 1:
            raise ValueError("the training data has no rows")
        self.num_rows, self.seed, self.shuffle = num_rows, seed, shuffle
        self.epoch, self.position = 0, 0
        self._order = self._permutation(0)

    def _permutation(self, epoch: int) -> list[int]:
        order = list(range(self.num_rows))
        if self.shuffle:
            random.Random(f"{self.seed}-{epoch}").shuffle(order)
        return order

    def next_indices(self, k: int) -> list[int]:
        out = []
        while len(out) < k:
            if self.position == self.num_rows:
                self.epoch, self.position = self.epoch + 1, 0
                self._order = self._permutation(self.epoch)
            take = min(k - len(out), self.num_rows - self.position)
            out.extend(self._order[self.position : self.position + take])
            self.position += take
        return out

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed, "num_rows": self.num_rows,
                "shuffle": self.shuffle}

    def load_state_dict(self, state: dict) -> None:
        for key in ("num_rows", "seed", "shuffle"):
            if state[key] != getattr(self, key):
                raise ValueError(f"sampler state has {key}={state[key]!r}, this run has {getattr(self, key)!r}")
        self.epoch, self.position = state["epoch"], state["position"]
        self._order = self._permutation(self.epoch)
