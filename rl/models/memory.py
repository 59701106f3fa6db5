"""Memory estimates of a run, from the model's config.json and the run's config (no torch: `rlvr config` prints them
in a second, and `rlvr train` refuses a run that cannot fit before anything starts).

The learner's peak on its device, for one learner process holding the whole policy (learner.dtype = D bytes a weight,
compute C bytes a value: 2 under learner.mixed_precision bfloat16/float16, else D; P parameters, T of them trained):

    weights      P x D                      master weights
    gradients    T x D
    optimizer    T x 2D                     AdamW's two moments, in the weights' dtype
    autocast     P x C   (mixed precision)  torch.autocast's cache of the cast weights during a forward
    reference    P x D   (KL on, no LoRA)   the frozen reference policy
    activations  t x (L x h x D + 2 a)      gradient checkpointing: each layer's input (the residual stream, in D),
                 t x L x a                  one layer recomputed and its gradient; without: every layer's saved
                                            tensors; a = 40h + C (6h + 3 kv + 4I) bytes a token a layer (what the two
                                            fp32 RMSNorms save; casts, q/k/v before and after RoPE, attention
                                            output, o_proj input; gate, up, SiLU and product of the MLP)
                 + (L, or 2 with checkpointing) x b
                                            b = C (2 t h + 2 kv (t + m P)) with shared-prompt block attention
                                            (learner.block_attention, sampling.n > 1): the gathered queries and
                                            output, keys and values, and each of the m rows' copy of its prompt's
                                            (P = data.max_prompt_tokens)
    head         c x V x 12 + r x h x 8     the fused head (rl/core/fused_head.py) on the response tokens only: a
                                            chunk of fp32 logits, its softmax and gradient; the hidden states it reads
                                            and their gradient
                 + V x h x C (head_autocast) the output layer's weight cast to the compute dtype

With learner.num_ranks = n > 1 (FSDP2: rl/train/distributed.py), each rank holds 1/n of the weights, gradients,
optimizer state and reference, and during compute the units it gathers whole:

    gathered     R x D x (2 with KL, else 1)  the root unit (embeddings, final norm, output layer: R parameters), in
                 + 2 x Y x C + Y x D          the masters' dtype; two decoder layers (Y parameters each: the one
                                              computing and the one prefetched) in the compute dtype, and one
                                              layer's whole gradient before its reduce-scatter
    autocast     0                            the layers are gathered in the compute dtype already

with t = tokens of the largest micro-batch: learner.micro_batch_size x (data.max_prompt_tokens +
rollout.sampling.max_tokens), at most learner.max_tokens_per_micro_batch; r = its response tokens
(learner.micro_batch_size x rollout.sampling.max_tokens, at most t); c = learner.head_chunk_tokens, at most r;
m = learner.micro_batch_size.
Attention is counted without its [s, s] scores (sdpa / flash attention never store them). The sum is the steady
state from the second update on, when AdamW's moments exist while a backward pass fills the gradients.

An engine (vLLM) holds the weights in rollout.dtype and reserves rollout.gpu_memory_utilization of its GPU; the rest of
that share is KV cache, which must hold at least one sequence of rollout.max_model_len tokens
(2 x L x kv x bytes a token).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

GIB = 1024 ** 3
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
ENGINE_OVERHEAD_GIB = 2.0  # vLLM's own buffers, CUDA graphs and the sampler's logits, beyond weights and KV cache


@dataclass(frozen=True)
class Shape:
    """What the estimate needs of a decoder-only transformer's config.json."""

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    tied: bool
    qkv_bias: bool

    @classmethod
    def from_config(cls, c: dict) -> Shape:
        c = c.get("text_config", c)
        heads = c["num_attention_heads"]
        return cls(
            hidden=c["hidden_size"], layers=c["num_hidden_layers"], heads=heads,
            kv_heads=c.get("num_key_value_heads") or heads,
            head_dim=c.get("head_dim") or c["hidden_size"] // heads,
            intermediate=c["intermediate_size"], vocab=c["vocab_size"],
            tied=bool(c.get("tie_word_embeddings", False)),
            qkv_bias=bool(c.get("attention_bias", c.get("model_type") == "qwen2")),
        )

    @property
    def kv(self) -> int:
        return self.kv_heads * self.head_dim

    def layer_parameters(self) -> int:
        h, q = self.hidden, self.heads * self.head_dim
        attention = h * q + 2 * h * self.kv + q * h + (q + 2 * self.kv if self.qkv_bias else 0)
        return attention + 3 * h * self.intermediate + 2 * h

    def root_parameters(self) -> int:
        """Embeddings, output layer (one matrix when tied) and the final norm."""
        return self.vocab * self.hidden * (1 if self.tied else 2) + self.hidden

    def parameters(self) -> int:
        return self.layers * self.layer_parameters() + self.root_parameters()

    def lora_parameters(self, rank: int, targets: list[str]) -> int:
        """rank x (in + out) for each adapted projection of each layer (all-linear: all seven)."""
        h, q, i = self.hidden, self.heads * self.head_dim, self.intermediate
        dims = {"q_proj": (h, q), "k_proj": (h, self.kv), "v_proj": (h, self.kv), "o_proj": (q, h),
                "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}
        names = dims if "all-linear" in targets else [t for t in targets if t in dims]
        return self.layers * sum(rank * sum(dims[n]) for n in names)


def load_model_config(path: str) -> dict | None:
    """The model's config.json: a local folder, the hub cache, or (online) the hub; None when none is at hand."""
    p = Path(path).expanduser()
    if (p / "config.json").is_file():
        return json.loads((p / "config.json").read_text())
    if p.exists() or path.startswith((".", "/", "~")):
        return None
    try:
        from huggingface_hub import hf_hub_download, try_to_load_from_cache

        from rl.data.sources import hub_reachable

        cached = try_to_load_from_cache(path, "config.json")
        if isinstance(cached, str):
            return json.loads(Path(cached).read_text())
        if not hub_reachable():  # a second, not half a minute of retries
            return None
        return json.loads(Path(hf_hub_download(path, "config.json", etag_timeout=5)).read_text())
    except Exception:  # noqa: BLE001 -- no such repo, a gated one, an odd answer: no estimate, the run goes on
        return None


def micro_batch_tokens(cfg) -> tuple[int, int]:
    """t and r: tokens of the largest micro-batch the learner can be handed (the longest prompts and responses), and
    of them response tokens."""
    learner = cfg.learner
    t = learner.micro_batch_size * (cfg.data.max_prompt_tokens + cfg.rollout.sampling.max_tokens)
    t = min(t, learner.max_tokens_per_micro_batch or t)
    return t, min(t, learner.micro_batch_size * cfg.rollout.sampling.max_tokens)


def learner_estimate(shape: Shape, cfg) -> dict[str, float]:
    """Bytes of each part of the learner's peak (module docstring); cfg is a resolved run Config."""
    learner = cfg.learner
    d = DTYPE_BYTES[learner.dtype]
    mixed = learner.mixed_precision if learner.mixed_precision in ("bfloat16", "float16") else None
    c = DTYPE_BYTES[mixed] if mixed else d
    p = shape.parameters()
    lora = learner.lora
    trained = shape.lora_parameters(lora.rank, list(lora.target_modules)) if lora is not None else p
    h, kv, i = shape.hidden, shape.kv, shape.intermediate
    t, r = micro_batch_tokens(cfg)
    per_layer = 40 * h + c * (6 * h + 3 * kv + 4 * i)
    if learner.gradient_checkpointing:
        activations = t * (shape.layers * h * d + 2 * per_layer)
    else:
        activations = t * shape.layers * per_layer
    if learner.block_attention and cfg.rollout.sampling.n > 1:  # (with share_prompts and sdpa: LearnerConfig.check)
        blocks = c * (2 * t * h + 2 * kv * (t + learner.micro_batch_size * cfg.data.max_prompt_tokens))
        activations += (2 if learner.gradient_checkpointing else shape.layers) * blocks
    n = learner.num_ranks
    kl = cfg.algorithm.kl is not None and lora is None
    parts = {
        "weights": (p + (trained if lora is not None else 0)) * d / n,
        "gradients": trained * d / n,
        "optimizer": trained * 2 * d / n,
        "autocast": p * c if mixed and c < d and n == 1 else 0,
        "reference": p * d / n if kl else 0,
        "gathered": 0 if n == 1 else shape.root_parameters() * d * (2 if kl else 1)
        + shape.layer_parameters() * (2 * c + d),
        "activations": activations,
        "head": min(learner.head_chunk_tokens, r) * shape.vocab * 12 + r * h * 8
        + (shape.vocab * h * c if learner.head_autocast and mixed and c < d else 0),
    }
    return {k: float(v) for k, v in parts.items()}


def engine_estimate(shape: Shape, cfg) -> dict[str, float]:
    """Bytes an engine needs at least: weights, vLLM's overhead, and one rollout.max_model_len sequence of KV cache."""
    r = cfg.rollout
    b = DTYPE_BYTES.get(r.dtype, 2)
    return {"weights": float(shape.parameters() * b), "overhead": ENGINE_OVERHEAD_GIB * GIB,
            "kv_one_sequence": float(2 * shape.layers * shape.kv * b * r.max_model_len)}


def describe(shape: Shape, cfg) -> list[str]:
    """The lines `rlvr config` prints: each estimate and its parts, in GiB."""
    def line(name: str, parts: dict[str, float]) -> str:
        inner = ", ".join(f"{k} {v / GIB:.1f}" for k, v in parts.items() if v)
        return f"# {name}: {sum(parts.values()) / GIB:.1f} GiB ({inner})"

    return [f"# memory estimate (rl/models/memory.py), {shape.parameters() / 1e9:.2f}B parameters, "
            f"{micro_batch_tokens(cfg)[0]} tokens a micro-batch:",
            line("learner peak", learner_estimate(shape, cfg)),
            line("engine minimum", engine_estimate(shape, cfg))]


def fit_problems(shape: Shape, cfg, gpu_gib: float) -> list[str]:
    """Why the run cannot fit GPUs of gpu_gib each (empty: it fits), each with the knobs that would make it fit."""
    problems = []  # (rollout.max_model_len against the model's limit: rl/models/resolve.py:check_context_length)
    r = cfg.rollout
    learner = learner_estimate(shape, cfg)
    need = sum(learner.values()) / GIB
    if need > gpu_gib:
        knobs = []
        if not cfg.learner.gradient_checkpointing:
            knobs.append("learner.gradient_checkpointing=true")
        if learner["activations"] > 0.1 * need * GIB:
            knobs.append("a smaller learner.micro_batch_size or learner.max_tokens_per_micro_batch")
        if cfg.learner.lora is None:
            lora = sum(learner_estimate(shape, with_lora(cfg)).values()) / GIB
            knobs.append(f"learner.lora={{rank: 64}} (LoRA; about {lora:.0f} GiB)")
        ranks = next((n for n in (2, 4, 8, 16, 32, 64) if n > cfg.learner.num_ranks
                      and sum(learner_estimate(shape, with_ranks(cfg, n)).values()) / GIB <= gpu_gib), None)
        if ranks is not None:
            per_rank = sum(learner_estimate(shape, with_ranks(cfg, ranks)).values()) / GIB
            knobs.append(f"learner.num_ranks={ranks} (FSDP2 shards on {ranks} GPUs; about {per_rank:.0f} GiB each)")
        problems.append(f"the learner needs about {need:.0f} GiB ({', '.join(f'{k} {v / GIB:.0f}' for k, v in learner.items() if v)}) "
                        f"> {gpu_gib:g} GiB a GPU (ray.gpu_memory_gib); to fit: {'; '.join(knobs)}")
    engine = engine_estimate(shape, cfg)
    share = r.gpu_memory_utilization * gpu_gib
    if sum(engine.values()) / GIB > share:
        problems.append(f"an engine needs at least {sum(engine.values()) / GIB:.0f} GiB (weights "
                        f"{engine['weights'] / GIB:.0f}, one {r.max_model_len}-token sequence of KV cache "
                        f"{engine['kv_one_sequence'] / GIB:.1f}) > rollout.gpu_memory_utilization x {gpu_gib:g} GiB "
                        f"= {share:.0f} GiB: raise rollout.gpu_memory_utilization or lower rollout.max_model_len")
    return problems


def with_lora(cfg, rank: int = 64):
    """cfg with learner.lora={rank: rank}: what the refusal message and the recipe table estimate LoRA at."""
    from dataclasses import replace

    from rl.config.learner import LoraConfig

    return replace(cfg, learner=replace(cfg.learner, lora=LoraConfig(rank=rank)))


def with_ranks(cfg, n: int):
    """cfg with learner.num_ranks=n: what the refusal message offers."""
    from dataclasses import replace

    return replace(cfg, learner=replace(cfg.learner, num_ranks=n))
