"""The `rollout` section: the engines, sampling, and the rollout modes (CURE, search, adaptive thinking): rollout/.

A rollout mode's section is optional: absent (or null) is off, present is on; at most one is on."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from rl.config.errors import ANY_ON_RESUME, ConfigError, check, did_you_mean
from rl.config.precision import DTYPES

ENGINES = {"vllm": "rollout.vllm_engine:VLLMEngine", "hf": "rollout.hf_engine:HFEngine"}


@dataclass
class SamplingConfig:
    n: int = 8  # samples per prompt (the GRPO group size)
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1  # -1: off
    max_tokens: int = 256
    stop: list[str] = field(default_factory=list)  # stop strings, kept at the end of the text (a tool call's tag)
    # Every response (each turn of a multi-turn rollout) must match this regular expression: vLLM's structured
    # outputs (rollout.engine=vllm only), e.g. to force a tool call's format. The sampler log-probs logged are then
    # the constrained distribution's (a forced token's is 0); the learner's ratio uses its own log-probs, not these.
    regex: str | None = None

    def check(self, key: str, prompt_tokens: int, max_model_len: int) -> None:
        """A ConfigError naming `key` (rollout.sampling or rollout.eval_sampling) and the fix, for values an engine
        would refuse or misread only once it runs."""
        checks = [
            (self.n >= 1, f"{key}.n={self.n}: must be >= 1"),
            (self.max_tokens >= 1, f"{key}.max_tokens={self.max_tokens}: must be >= 1"),
            (self.temperature >= 0, f"{key}.temperature={self.temperature}: must be >= 0 (0: greedy)"),
            (0 < self.top_p <= 1, f"{key}.top_p={self.top_p}: must be in (0, 1] (1: off)"),
            (self.top_k == -1 or self.top_k >= 1, f"{key}.top_k={self.top_k}: must be -1 (off) or >= 1"),
            (prompt_tokens + self.max_tokens <= max_model_len,
             f"data.max_prompt_tokens ({prompt_tokens}) + {key}.max_tokens ({self.max_tokens}) exceeds "
             f"rollout.max_model_len ({max_model_len}); raise it or shorten one"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)


@dataclass
class CureConfig:
    """CURE stage 1: each group is rollout.sampling.n responses + n * branches continuations."""

    branches: int = 3  # n2: continuations sampled from each response's critical prefix
    top_entropy: int = 20  # the critical position is drawn uniformly from this many highest-entropy positions
    min_token_chars: int = 2  # a token whose stripped text is shorter is never critical

    def check(self, key: str) -> None:
        check(self.branches >= 1, f"{key}.branches (n2 continuations per response) must be >= 1")
        check(self.top_entropy >= 1, f"{key}.top_entropy must be >= 1")
        check(self.min_token_chars >= 0, f"{key}.min_token_chars must be >= 0")


@dataclass
class KnowledgeConfig:
    """The `knowledge` config section: where passages come from and how they are retrieved (rewards/knowledge.py)."""

    passages: str | None = None  # JSONL of {"title", "text"} rows
    qa_data: str | None = None  # or a QA data set (question, answers, ';'-separated title) to derive passages from
    retriever: str = "bm25"  # bm25 | dense
    chunk_words: int = 120  # longer texts are split into chunks of at most this many words
    k: int = 5  # passages returned by default
    cache_dir: str | None = None  # None: $RLVR_CACHE/knowledge, else ~/.cache/rlvr/knowledge
    embedding_model: str = "all-MiniLM-L6-v2"  # for retriever=dense


@dataclass
class SearchConfig:
    """IKEA's multi-turn rollout: a <search> call retrieves passages from `knowledge`."""

    max_searches: int = 3  # IKEA: at most 3 retrieval turns
    top_k: int = 3  # passages per search
    max_passage_words: int = 60  # each passage is cut to this many words
    knowledge: KnowledgeConfig = field(default_factory=KnowledgeConfig)  # what is searched

    def check(self, key: str) -> None:
        check((self.knowledge.passages is None) != (self.knowledge.qa_data is None),
              f"{key} needs exactly one of {key}.knowledge.passages (a JSONL of {{title, text}}) "
              f"or {key}.knowledge.qa_data (a question-answer file)")
        check(self.max_searches >= 1 and self.top_k >= 1, f"{key}.max_searches and top_k must be >= 1")


@dataclass
class AdaptiveThinkingConfig:
    """AdaptThink's forced modes: half of each group starts by closing the thinking block (NoThinking), half by
    thinking."""

    forced_modes: bool = True  # AdaptThink: half NoThinking, half Thinking; false: the block opened, the model
    # chooses (plain GRPO on the same format, AdaptThink's baseline)
    open_tag: str = "<think>"
    close_tag: str = "</think>"  # NoThinking: the first generated token(s) end the thinking block
    thinking_prefix: str = "Okay"  # Thinking: the first token(s), a normal word
    append_open_tag: bool = True  # add open_tag to every prompt (false when the chat template ends with it)
    nothinking_max_tokens: int = 256
    thinking_max_tokens: int = 1024


WEIGHT_SYNCS = ("auto", "object_store", "transfer")  # rollout.weight_sync
TRANSFER_BACKENDS = ("auto", "gloo", "nccl")  # rollout.weight_transfer_backend (rollout/weight_transfer.py TRANSPORTS)


@dataclass
class RolloutConfig:
    engine: str = "vllm"  # vllm | hf (fallback)
    num_engines: int = field(default=1, metadata=ANY_ON_RESUME)
    dtype: str = field(default="auto", metadata=ANY_ON_RESUME)  # engine weights: auto (bfloat16 where the hardware
    # has native bf16, else float32: rl/models/precision.py), float32, bfloat16 or float16; the learner keeps its own
    # dtype (numerics, not the run: auto may choose otherwise on another machine)
    max_model_len: int = 1024
    gpu_memory_utilization: float = field(default=0.5, metadata=ANY_ON_RESUME)
    enforce_eager: bool = True
    kv_cache_gib: int = field(default=2, metadata=ANY_ON_RESUME)  # CPU only
    num_cpus_per_engine: float = field(default=0.5, metadata=ANY_ON_RESUME)  # Ray scheduling; threads: num_threads
    num_gpus_per_engine: float | None = field(default=None, metadata=ANY_ON_RESUME)  # None: 1 when the cluster has
    # GPUs, else 0
    num_threads: int | None = field(default=None, metadata=ANY_ON_RESUME)  # CPU threads of each engine; None: all
    # cores of its node
    tensor_parallel_size: int = field(default=1, metadata=ANY_ON_RESUME)  # GPUs of one engine (vLLM tensor
    # parallelism, inside one node); the engine actor takes that many GPUs. rl/train/placement.py plans the cluster
    weight_sync: str = field(default="auto", metadata=ANY_ON_RESUME)  # how the learner's weights reach the engines
    # after each update: "object_store" (a state dict through Ray's object store, loaded by vLLM's reload_weights;
    # the engine core then runs in-process, on GPU too) or "transfer" (vLLM's weight-transfer API over a gloo group:
    # the learner broadcasts byte buckets, only names and shapes cross vLLM's RPC; the engine core runs in a process
    # of its own, vLLM's GPU default, on CPU too). auto: transfer when the engines have GPUs, else object_store.
    # rollout/weight_transfer.py
    weight_transfer_backend: str = field(default="auto", metadata=ANY_ON_RESUME)  # transfer: "gloo" (ours: host
    # memory over TCP, any device; what the CPU tests run) or "nccl" (vLLM's built-in backend, GPU to GPU; learner and
    # engines on GPUs of their own). auto: nccl when the learner ranks and the engines each have >= 1 GPU, else gloo
    weight_bucket_mib: int = field(default=1024, metadata=ANY_ON_RESUME)  # transfer: bytes broadcast at a time
    weight_transfer_timeout_s: float = field(default=300.0, metadata=ANY_ON_RESUME)  # transfer: how long the group's
    # rendezvous and a broadcast wait for an engine before the sync gives up on it (and replaces it)
    max_engine_restarts: int = field(default=3, metadata=ANY_ON_RESUME)  # replacements of dead engines within one
    # generate/sync call before giving up
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    eval_sampling: SamplingConfig = field(default_factory=lambda: SamplingConfig(n=1, temperature=0.0, max_tokens=256),
                                          metadata=ANY_ON_RESUME)
    # the rollout modes, optional (None: off): rollout/strategies.py
    cure: CureConfig | None = None  # branch responses at critical tokens (CURE stage 1)
    search: SearchConfig | None = None  # multi-turn: <search> calls a retriever (IKEA)
    adaptive_thinking: AdaptiveThinkingConfig | None = None  # AdaptThink's forced modes (or the model chooses)

    def thinking(self) -> AdaptiveThinkingConfig:
        """The thinking block's tags and limits: the adaptive_thinking section's, or its defaults (evaluation's
        think / nothinking / budget modes run on any recipe)."""
        return self.adaptive_thinking or AdaptiveThinkingConfig()

    def modes(self) -> list[str]:
        """The rollout modes that are on (present), in the order rollout/strategies.py tries them."""
        return [name for name in ("search", "adaptive_thinking", "cure") if getattr(self, name) is not None]

    def check(self, key: str) -> None:
        """The checks of the section alone, in validate's order (the sampling limits against data and the rollout
        modes against each other: rl/config/run.py)."""
        check(self.engine in ENGINES, f"{key}.engine={self.engine!r}; choose one of {sorted(ENGINES)}")
        check(self.num_engines >= 1, f"{key}.num_engines must be >= 1")
        check(self.num_cpus_per_engine > 0, f"{key}.num_cpus_per_engine={self.num_cpus_per_engine}: must be > 0 (an "
              "engine's placement bundle holds its CPUs; a fraction such as 0.5 is fine)")
        check(self.weight_sync in WEIGHT_SYNCS, f"{key}.weight_sync={self.weight_sync!r}; choose one of "
              f"{list(WEIGHT_SYNCS)}")
        check(self.weight_sync != "transfer" or self.engine == "vllm",
              f"{key}.weight_sync=transfer is vLLM's weight-transfer API: it needs {key}.engine=vllm")
        check(self.weight_transfer_backend in TRANSFER_BACKENDS, f"{key}.weight_transfer_backend="
              f"{self.weight_transfer_backend!r}; choose one of {list(TRANSFER_BACKENDS)}")
        check(self.weight_transfer_backend == "auto" or self.weight_sync != "object_store",
              f"{key}.weight_transfer_backend={self.weight_transfer_backend} is a backend of weight_sync=transfer and "
              f"{key}.weight_sync=object_store: set {key}.weight_sync=transfer, or remove the backend")
        tp = self.tensor_parallel_size
        check(tp >= 1, f"{key}.tensor_parallel_size={tp}: must be >= 1")
        check(tp == 1 or self.engine == "vllm", f"{key}.tensor_parallel_size={tp} needs {key}.engine=vllm")
        check(tp == 1 or self.num_gpus_per_engine in (None, tp),
              f"{key}.tensor_parallel_size={tp} gives each engine {tp} GPUs: remove {key}.num_gpus_per_engine "
              f"(now {self.num_gpus_per_engine}) or set it to {tp}")
        check(self.weight_bucket_mib >= 1, f"{key}.weight_bucket_mib={self.weight_bucket_mib}: must be >= 1")
        check(self.weight_transfer_timeout_s > 0,
              f"{key}.weight_transfer_timeout_s={self.weight_transfer_timeout_s}: must be > 0 (seconds, e.g. 300)")
        check(self.sampling.n >= 1, f"{key}.sampling.n must be >= 1")
        for name in ("sampling", "eval_sampling"):
            regex = getattr(self, name).regex
            if regex is not None:
                check(self.engine == "vllm", f"{key}.{name}.regex needs rollout.engine=vllm (structured outputs); "
                      f"the {self.engine} engine cannot constrain sampling: remove {key}.{name}.regex")
                try:
                    re.compile(regex)
                except re.error as e:
                    raise ConfigError(f"{key}.{name}.regex={regex!r} is not a regular expression: {e}") from None
        on = self.modes()
        check(len(on) <= 1, f"{' and '.join(key + '.' + n for n in on)} cannot be on together; remove all but one")
        for name in on:
            if hasattr(section := getattr(self, name), "check"):
                section.check(f"{key}.{name}")

    def check_dtype(self, key: str) -> None:
        check(self.dtype in DTYPES, f"{key}.dtype={self.dtype!r}; choose one of {list(DTYPES)}"
              f"{did_you_mean(self.dtype, DTYPES)} (auto: bfloat16 where the hardware has native bf16, else float32)")
