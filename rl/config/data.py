"""The `data` section and `eval_sets`: where prompts come from and how they are shown (rl/data/prompts.py)."""

from __future__ import annotations

from dataclasses import dataclass, field

from rl.config.errors import ANY_ON_RESUME, ConfigError

GRADERS = ("math_verify", "short_answer")  # how an evaluation set's answers are graded (rl/eval/evaluate.py)
PROMPT_OVERFLOW = ("drop", "truncate", "error")


@dataclass
class ArithmeticConfig:
    num_train: int = 4000
    num_eval: int = 200
    min_ops: int = 1  # operations per problem
    max_ops: int = 1
    max_value: int = 20  # operands drawn from [1, max_value] (multipliers from [2, max_value])
    operations: list[str] = field(default_factory=lambda: ["+", "-"])  # a subset of + - *
    seed: int = 0


@dataclass
class DatasetConfig:
    source: str = "arithmetic"  # "arithmetic" | a local .jsonl/.json/.parquet/.csv file or folder | a hub data set id
    # (looked up in the data mirror first: rl/data/sources.py)
    split: str = "train"
    subset: str | None = None  # hub config name
    prompt_template: str = "{question}"  # str.format over the row's columns, e.g. "{Body} {Question}" (SVAMP)
    answer_column: str = "answer"
    answer_after: str | None = None  # keep the text after the last occurrence of this marker (GSM8K: "####")
    offset: int = 0  # skip the first rows (with limit: a slice, e.g. a held-out tail of one file)
    limit: int | None = None  # then keep the first N rows
    grader: str = "math_verify"  # evaluation: math_verify | short_answer (factual answers, refusals counted)
    optional: bool = field(default=False, metadata=ANY_ON_RESUME)  # an evaluation set that cannot be found (no local
    # copy, no hub) is skipped with a line that says how to get it, instead of stopping the run (only false is valid
    # for data.train: absent from checkpoints written before it existed)

    def check(self, key: str = "") -> None:
        """ConfigError (a ValueError) naming the key (e.g. data.train.limit) when a data set's settings cannot work."""
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"{key + '.' if key else ''}limit={self.limit} (data source {self.source!r}); use a "
                              "positive number of rows or null for all")
        if self.offset < 0:
            raise ConfigError(f"{key + '.' if key else ''}offset={self.offset} (data source {self.source!r}); use 0 "
                              "or more")
        if self.grader not in GRADERS:
            raise ConfigError(f"{key + '.' if key else ''}grader={self.grader!r}; choose one of {list(GRADERS)}")
        if self.optional and key == "data.train":
            raise ConfigError("data.train.optional=true: a run cannot skip its training set; only evaluation sets "
                              "(data.eval, eval_sets.<name>) may be optional")


check_dataset_config = DatasetConfig.check  # check_dataset_config(ds, key)


@dataclass
class FewShotExample:
    """A worked example shown before every prompt, as an earlier user turn and the assistant's reply."""

    user: str = ""
    assistant: str = ""


@dataclass
class DataConfig:
    train: DatasetConfig = field(default_factory=DatasetConfig)
    eval: DatasetConfig | None = field(default_factory=lambda: DatasetConfig(split="test"), metadata=ANY_ON_RESUME)
    system_prompt: str | None = None
    few_shot: list[FewShotExample] = field(default_factory=list)  # examples as earlier chat turns (small models
    # follow an output format from an example far better than from an instruction); they count in max_prompt_tokens
    instruction: str = ""  # appended to every user prompt, e.g. how to state the answer
    max_prompt_tokens: int = 256
    prompt_overflow: str = "drop"  # drop | truncate | error, for prompts longer than max_prompt_tokens
    shuffle: bool = True
    seed: int = 0
    mirror: str | None = field(default=None, metadata=ANY_ON_RESUME)  # a local folder of data set copies, looked up
    # before the hub (default: $RLVR_DATA_DIR; layout in rl/data/sources.py)
    arithmetic: ArithmeticConfig = field(default_factory=ArithmeticConfig)

    def check_prompt_limits(self, key: str = "data") -> None:
        """ConfigError naming the key when data.max_prompt_tokens / data.prompt_overflow cannot work."""
        if self.prompt_overflow not in PROMPT_OVERFLOW:
            raise ConfigError(f"{key}.prompt_overflow={self.prompt_overflow!r}; choose one of {list(PROMPT_OVERFLOW)}")
        if self.max_prompt_tokens < 1:
            raise ConfigError(f"{key}.max_prompt_tokens={self.max_prompt_tokens}; it must be >= 1")

    def check(self, key: str = "data") -> None:
        self.check_prompt_limits(key)
        for name, ds in ((f"{key}.train", self.train), (f"{key}.eval", self.eval)):
            if ds is not None:
                ds.check(name)
