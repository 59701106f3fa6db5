"""The `learner` section: the policy's optimizer, schedule, dtypes and micro-batching (rl/train/learner.py)."""

from __future__ import annotations

from dataclasses import dataclass, field

from rl.config.errors import ANY_ON_RESUME, check, did_you_mean
from rl.config.precision import DTYPES as PRECISIONS


@dataclass
class OptimConfig:
    lr: float = 1e-6
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    schedule: str = "constant"  # one of SCHEDULES (transformers.get_scheduler names): constant, linear, cosine, ...
    warmup_steps: int = 0
    grad_clip: float = 1.0  # max global grad norm; 0 disables clipping

    def check(self, key: str) -> None:
        check(self.lr > 0, f"{key}.lr must be > 0")
        check(self.schedule in SCHEDULES, f"{key}.schedule={self.schedule!r} is not a schedule the learner can step; "
              f"choose one of {list(SCHEDULES)}{did_you_mean(self.schedule, SCHEDULES)}")


# the transformers schedules the learner can step: built from warmup and total steps alone, stepped without a metric
# (not reduce_lr_on_plateau, greedy, cosine_with_min_lr, warmup_stable_decay)
SCHEDULES = ("constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial",
             "inverse_sqrt")
# transformers' attention backends (learner.attn_implementation); flash_attention_* need CUDA and the flash-attn wheel
ATTENTION = ("sdpa", "eager", "flex_attention", "flash_attention_2", "flash_attention_3")
DTYPES = ("float32", "bfloat16", "float16")  # learner.dtype


@dataclass
class LoraConfig:
    """LoRA (peft): the policy trains low-rank adapters on the frozen base weights; the reference policy is the base
    with the adapter disabled (no second copy); engines get the merged weights."""

    rank: int = 16
    alpha: float = 32.0  # the update is scaled by alpha / rank
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                                "up_proj", "down_proj"])  # or ["all-linear"]
    dropout: float = 0.0

    def check(self, key: str) -> None:
        check(self.rank >= 1, f"{key}.rank={self.rank}: must be >= 1")
        check(self.alpha > 0, f"{key}.alpha={self.alpha}: must be > 0")
        check(0 <= self.dropout < 1, f"{key}.dropout={self.dropout}: must be in [0, 1)")
        check(bool(self.target_modules), f"{key}.target_modules is empty: name the layers to adapt (or all-linear)")


@dataclass
class LearnerConfig:
    dtype: str = "float32"  # master weights and optimizer state: one of DTYPES
    mixed_precision: str | None = field(default=None, metadata=ANY_ON_RESUME)  # "bfloat16" / "float16": the decoder
    # runs under autocast; None: off. A run's config defaults to "auto" (rl/config/run.py; bfloat16 where the hardware
    # has native bf16, else off: rl/models/precision.py); numerics, not the run: auto may choose otherwise elsewhere
    micro_batch_size: int = field(default=8, metadata=ANY_ON_RESUME)  # rows per forward/backward; not the gradient
    max_tokens_per_micro_batch: int | None = field(default=None, metadata=ANY_ON_RESUME)  # also at most this many
    # tokens (rows x the longest row, as the forward reads them) per micro-batch; rows go by length, so a budget
    # holds many short rows or few long ones. None: rows only
    ppo_epochs: int = 1  # passes over each rollout batch
    mini_batches: int = 1  # optimizer steps per pass
    gradient_checkpointing: bool = field(default=False, metadata=ANY_ON_RESUME)
    share_prompts: bool = field(default=True, metadata=ANY_ON_RESUME)  # rows of a micro-batch with the same prompt
    # read it once (rl/core/packing.py); the values are those of the padded layout, to rounding
    pack_max_tokens: int = field(default=1024, metadata=ANY_ON_RESUME)  # tokens per packed row (attention costs its
    # square); a longer sample packs alone
    block_attention: bool = field(default=False, metadata=ANY_ON_RESUME)  # true, with sdpa (attn_implementation
    # null or sdpa): a pack's attention computed block by block, the prompt's and each member's (rl/core/packing.py
    # shared_prompt_attention), not over its dense [L, L] mask, most of which is masked out (0.86x the time of an
    # update on CPU: benchmarks/results/learner_cpu.md). Off by default until the quickstart's outcome with it has
    # been compared over several seeds (one run each: 0.175 -> 0.095 held-out with it, 0.160 without)
    varlen: bool = field(default=False, metadata=ANY_ON_RESUME)  # true: each micro-batch's rows, whole, as one row
    # with no padding and position_ids restarting per row (rl/core/packing.py pack_varlen); flash attention runs its
    # varlen kernel, sdpa / eager a block-diagonal mask. Shares no prompt, so needs share_prompts=false; the token
    # budget then counts real tokens
    attn_implementation: str | None = field(default=None, metadata=ANY_ON_RESUME)  # transformers' attention backend
    # for the policy and reference (one of ATTENTION or a hub kernel "org/name"); None: transformers' default (sdpa)
    head_chunk_tokens: int = field(default=1024, metadata=ANY_ON_RESUME)  # rows of logits alive at a time in the
    # fused output layer + log-prob + entropy (rl/core/fused_head.py); memory for the head is O(this x vocab)
    head_autocast: bool = field(default=False, metadata=ANY_ON_RESUME)  # true: the output layer's three matmuls
    # take learner.mixed_precision's dtype, as autocast gives the decoder (logits rounded to it, as vLLM's are; the
    # log-softmax, entropy and dW sums stay float32); about 2x faster on native-bf16 hardware. false: learner.dtype
    entropy_coef: float = 0.0  # > 0 adds an entropy bonus -coef * H to each token's loss
    num_threads: int | None = field(default=None, metadata=ANY_ON_RESUME)  # torch CPU threads; None: all cores
    num_cpus: float = field(default=0.5, metadata=ANY_ON_RESUME)  # Ray scheduling
    num_gpus: float | None = field(default=None, metadata=ANY_ON_RESUME)  # per rank; None: 1 when the cluster has
    # GPUs, else 0
    num_ranks: int = field(default=1, metadata=ANY_ON_RESUME)  # learner actors in one torch.distributed group, each
    # an FSDP2 shard of the policy (and reference) and its share of each step's rows (rl/train/learner_group.py);
    # a checkpoint resumes on any number of ranks
    offload: bool = field(default=False, metadata=ANY_ON_RESUME)  # num_ranks > 1: parameters, gradients and
    # optimizer state on the CPU between uses (FSDP2 CPUOffloadPolicy)
    optim: OptimConfig = field(default_factory=OptimConfig)
    lora: LoraConfig | None = None  # present: train LoRA adapters (peft) instead of every weight

    def check(self, key: str) -> None:
        """The checks of the section alone (the count of mini-batches against the samples: rl/config/run.py)."""
        check(self.micro_batch_size >= 1, f"{key}.micro_batch_size must be >= 1")
        check(self.num_cpus > 0, f"{key}.num_cpus={self.num_cpus}: must be > 0 (a rank's placement bundle holds its "
              "CPUs; a fraction such as 0.5 is fine)")
        check(self.pack_max_tokens >= 1,
              f"{key}.pack_max_tokens={self.pack_max_tokens}: must be >= 1 (tokens per packed row)")
        check(self.max_tokens_per_micro_batch is None or self.max_tokens_per_micro_batch >= 1,
              f"{key}.max_tokens_per_micro_batch={self.max_tokens_per_micro_batch}: must be >= 1 or null (rows only)")
        check(not (self.varlen and self.share_prompts),
              f"{key}.varlen=true reads every row whole (varlen attention cannot share a prompt between rows), but "
              f"{key}.share_prompts=true; set {key}.share_prompts=false with it")
        check(not (self.share_prompts and str(self.attn_implementation).startswith("flash_attention")),
              f"{key}.attn_implementation={self.attn_implementation} takes no [L, L] mask, which shared-prompt "
              f"packing needs; set {key}.share_prompts=false (and {key}.varlen=true to pack rows for its varlen kernel)")
        check(not self.block_attention or (self.share_prompts and self.attn_implementation in (None, "sdpa")),
              f"{key}.block_attention=true computes shared-prompt packs' attention with sdpa, but "
              + (f"{key}.share_prompts=false (nothing is packed)" if not self.share_prompts else
                 f"{key}.attn_implementation={self.attn_implementation}")
              + f"; set {key}.block_attention=false, or use it with {key}.share_prompts=true and "
              f"{key}.attn_implementation=null (sdpa)")
        check(self.attn_implementation is None or self.attn_implementation in ATTENTION
              or "/" in self.attn_implementation,
              f"{key}.attn_implementation={self.attn_implementation!r}: use one of {', '.join(ATTENTION)}"
              f"{did_you_mean(self.attn_implementation, ATTENTION)}, a hub kernel (org/name), or null for transformers' default")
        check(self.head_chunk_tokens >= 1, f"{key}.head_chunk_tokens={self.head_chunk_tokens}: must be >= 1")
        check(self.ppo_epochs >= 1 and self.mini_batches >= 1, f"{key}.ppo_epochs and {key}.mini_batches must be >= 1")
        check(self.num_ranks >= 1, f"{key}.num_ranks={self.num_ranks}: must be >= 1")
        check(self.num_ranks == 1 or self.num_gpus is None or self.num_gpus == 0 or self.num_gpus >= 1,
              f"{key}.num_gpus={self.num_gpus} with {key}.num_ranks={self.num_ranks}: each rank needs a GPU of its "
              f"own (NCCL refuses two ranks on one GPU); set {key}.num_gpus=1 (or 0 on CPU)")
        check(not (self.offload and self.num_ranks == 1),
              f"{key}.offload=true shards onto the CPU with FSDP2, which needs {key}.num_ranks > 1")
        if self.lora is not None:
            self.lora.check(f"{key}.lora")

    def check_precision(self, key: str) -> None:
        check(self.dtype in DTYPES, f"{key}.dtype={self.dtype!r}; choose one of {list(DTYPES)}"
              f"{did_you_mean(self.dtype, DTYPES)}")
        check(self.mixed_precision in PRECISIONS or self.mixed_precision is None,
              f"{key}.mixed_precision={self.mixed_precision!r}; choose one of {list(PRECISIONS)} or null"
              f"{did_you_mean(self.mixed_precision, PRECISIONS)} (off: float32 and "
              f"null both run the decoder in {key}.dtype; auto: bfloat16 where the hardware has native bf16)")
