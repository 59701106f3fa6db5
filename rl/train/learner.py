"""The learner: an HF causal LM, AdamW and an LR schedule, updated by an algorithm-blind loop over micro-batches.

What the loss is comes from the registries in rl/core/losses.py, rl/core/kl.py and rl/core/entropy.py; this file only feeds them.
"""

from __future__ import annotations

import math
import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, get_scheduler

from rl.core.batch import Batch
from rl.core.divergences import DivergenceConfig, f_divergence_loss
from rl.core.entropy import entropy_from_logits, logprobs_from_logits
from rl.core.kl import KLConfig, kl_penalty
from rl.core.losses import POLICY_LOSSES, PolicyLossConfig, aggregate_loss, resolve_agg_mode
from rl.core.packing import pack_shared_prompts
from rl.core.token_weights import TokenStats, TokenWeightConfig, token_weights

ENTROPY_PERCENTILES = (10, 50, 90)


@dataclass
class OptimConfig:
    lr: float = 1e-6
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    schedule: str = "constant"  # one of SCHEDULES (transformers.get_scheduler names): constant, linear, cosine, ...
    warmup_steps: int = 0
    grad_clip: float = 1.0  # max global grad norm; 0 disables clipping


# the transformers schedules the learner can step: built from warmup and total steps alone, stepped without a metric
# (not reduce_lr_on_plateau, greedy, cosine_with_min_lr, warmup_stable_decay)
SCHEDULES = ("constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial",
             "inverse_sqrt")
DTYPES = ("float32", "bfloat16", "float16")  # learner.dtype


@dataclass
class LearnerConfig:
    dtype: str = "float32"  # master weights and optimizer state: one of DTYPES
    mixed_precision: str | None = None  # "bfloat16" / "float16": the decoder runs under autocast; None: off. A run's
    # config defaults to "auto" (rl/config.py; bfloat16 where the hardware has native bf16, else off: rl/models/precision.py)
    micro_batch_size: int = 8  # rows per forward/backward; does not change the gradient
    ppo_epochs: int = 1  # passes over each rollout batch
    mini_batches: int = 1  # optimizer steps per pass
    gradient_checkpointing: bool = False
    share_prompts: bool = True  # rows of a micro-batch with the same prompt read it once (rl/core/packing.py); the
    # values are those of the padded layout, to rounding
    pack_max_tokens: int = 1024  # tokens per packed row (attention costs its square); a longer sample packs alone
    entropy_coef: float = 0.0  # > 0 adds an entropy bonus -coef * H to each token's loss
    num_threads: int | None = None  # torch CPU threads; None: all cores
    num_cpus: float = 0.5  # Ray scheduling
    num_gpus: float | None = None  # None: 1 when the cluster has GPUs, else 0
    optim: OptimConfig = field(default_factory=OptimConfig)


class Learner:
    def __init__(
        self,
        model_path: str,
        cfg: LearnerConfig,
        loss: PolicyLossConfig,
        kl: KLConfig,
        total_steps: int,
        max_response_tokens: int,
        seed: int = 0,
        ref_model_path: str | None = None,
        weights: TokenWeightConfig | None = None,
        divergence: DivergenceConfig | None = None,
    ):
        torch.manual_seed(seed)
        torch.set_num_threads(cfg.num_threads or os.cpu_count() or 1)
        self.cfg, self.loss_cfg, self.kl_cfg = cfg, loss, kl
        self.weights_cfg = weights or TokenWeightConfig()
        self.div_cfg = divergence or DivergenceConfig()
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        mixed = cfg.mixed_precision
        if mixed == "auto":  # a config built in code (the offline prepare steps), not resolved by the CLI or Trainer
            from rl.models.precision import detect

            mixed = detect()[0]
        self.autocast_dtype = getattr(torch, mixed) if mixed and mixed != "float32" else None
        dtype = getattr(torch, cfg.dtype)
        self.model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype).to(self.device)
        if getattr(self.model.config, "final_logit_softcapping", None):
            raise ValueError("models with final_logit_softcapping (e.g. Gemma 2) are not supported by the learner yet")
        if cfg.gradient_checkpointing:
            self.model.gradient_checkpointing_enable()
        self.ref_model = None
        if kl.coef > 0:  # the reference policy is loaded only when a KL term uses it
            ref = ref_model_path or model_path  # on resume the policy comes from the checkpoint, the reference not
            self.ref_model = AutoModelForCausalLM.from_pretrained(ref, dtype=dtype).to(self.device).eval()
            self.ref_model.requires_grad_(False)
        o = cfg.optim
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=o.lr, betas=tuple(o.betas), eps=o.eps, weight_decay=o.weight_decay
        )
        self.scheduler = get_scheduler(
            o.schedule, self.optimizer, num_warmup_steps=o.warmup_steps,
            num_training_steps=max(1, total_steps * cfg.ppo_epochs * cfg.mini_batches),
        )
        self.policy_loss = POLICY_LOSSES.get(loss.name)
        self.agg_mode = resolve_agg_mode(loss)  # loss.agg_mode, or the policy loss's own aggregation
        self.norm_length = loss.norm_length or max_response_tokens
        self.generator = torch.Generator().manual_seed(seed)
        self._stepped = False  # an optimizer step was taken in the current update() (the policy left the old one)
        self._read = [0, 0]  # tokens the decoder read in this optimizer step's forward passes, and the real ones

    # -- forward passes ---------------------------------------------------------------------------------------
    def _forward(self, model, mb: Batch, with_entropy: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Token log-probs [B, T] aligned with input_ids (0 off the response), and optionally per-token entropy.

        The decoder runs under autocast when learner.mixed_precision is set (master weights stay in learner.dtype);
        the output layer runs in learner.dtype and only at positions that predict a response token, which saves most of
        the [B, T, vocab] logits. Rows that share a prompt go through the decoder packed (rl/core/packing.py).
        """
        ids = mb.input_ids
        rows, cols = torch.nonzero(mb.response_mask[:, 1:] > 0, as_tuple=True)  # position p predicts token p + 1
        packed = pack_shared_prompts(ids.cpu(), mb.attention_mask.cpu(),
                                     mb.prompt_lengths.cpu() if self.cfg.share_prompts and mb.prompt_lengths is not None
                                     else None, self.cfg.pack_max_tokens)
        with torch.autocast(self.device.type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None):
            hidden = model.get_decoder()(input_ids=packed.input_ids.to(self.device),
                                         position_ids=packed.position_ids.to(self.device),
                                         attention_mask=packed.attention_mask.to(self.device)).last_hidden_state
        if torch.is_grad_enabled():  # the update's forward: what the decoder read, for the step's metrics
            self._read[0] += packed.num_tokens
            self._read[1] += packed.real_tokens
        head = model.get_output_embeddings()
        source = packed.where.to(self.device)[rows, cols]
        logits = head(hidden.reshape(-1, hidden.shape[-1])[source].to(head.weight.dtype))
        logp = torch.zeros(ids.shape, dtype=torch.float32, device=self.device)
        logp[rows, cols + 1] = logprobs_from_logits(logits, ids[rows, cols + 1])
        entropy = None
        if with_entropy:
            entropy = torch.zeros_like(logp)
            with torch.set_grad_enabled(self.cfg.entropy_coef > 0 and torch.is_grad_enabled()):
                entropy[rows, cols + 1] = entropy_from_logits(logits if self.cfg.entropy_coef > 0 else logits.detach())
        return logp, entropy

    @torch.no_grad()
    def compute_logprobs(self, batch: Batch, reference: bool = False) -> torch.Tensor:
        """Log-probs of the batch's tokens under the current (or reference) model, without gradient."""
        model = self.ref_model if reference else self.model
        if model is None:
            raise RuntimeError("reference log-probs asked for, but no reference model is loaded (kl.coef is 0)")
        micro = self._micro(batch)
        parts = [self._forward(model, mb.to(self.device), with_entropy=False)[0].cpu() for _, mb in micro]
        return self._unsplit(parts, micro, batch)

    @torch.no_grad()
    def compute_logprobs_and_entropy(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-probs and full-distribution entropies [B, T] under the current model, without gradient."""
        micro = self._micro(batch)
        parts = [self._forward(self.model, mb.to(self.device), with_entropy=True) for _, mb in micro]
        return (self._unsplit([p[0].cpu() for p in parts], micro, batch),
                self._unsplit([p[1].cpu() for p in parts], micro, batch))

    def _micro(self, batch: Batch) -> list[tuple[torch.Tensor, Batch]]:
        """Micro-batches of at most micro_batch_size rows of similar length, each trimmed to its longest row, with
        the batch rows each holds. Rows are taken group by group (learner.share_prompts) and in order of length, so
        little of a micro-batch is padding; the step's normalisers make the loss and gradient independent of how
        rows are grouped."""
        key = batch.attention_mask.sum(-1)
        if self.cfg.share_prompts:  # a group's rows together (they pack with one copy of their prompt), by length
            key = batch.group_ids * (batch.input_ids.shape[1] + 1) + key
        order = torch.argsort(key, stable=True)
        return [(rows, batch.select(rows).trim()) for rows in order.split(self.cfg.micro_batch_size)]

    @staticmethod
    def _unsplit(parts: list[torch.Tensor], micro: list[tuple[torch.Tensor, Batch]], batch: Batch) -> torch.Tensor:
        out = torch.zeros(batch.input_ids.shape, dtype=torch.float32)
        for p, (rows, _) in zip(parts, micro):
            out[rows, : p.shape[1]] = p
        return out

    # -- the update -------------------------------------------------------------------------------------------
    def update(self, batch: Batch) -> dict[str, float]:
        """ppo_epochs x mini_batches optimizer steps on one rollout batch; returns averaged metrics."""
        cfg = self.cfg
        on_policy = cfg.ppo_epochs == 1 and cfg.mini_batches == 1
        if self.weights_cfg.methods and batch.old_entropy is None:  # token weights read the old policy's entropy
            batch.old_logprobs, batch.old_entropy = self.compute_logprobs_and_entropy(batch)
        if batch.old_logprobs is None and not on_policy:
            batch.old_logprobs = self.compute_logprobs(batch)
        if self.kl_cfg.coef > 0 and not self.kl_cfg.in_reward and batch.ref_logprobs is None:
            batch.ref_logprobs = self.compute_logprobs(batch, reference=True)
        self.model.train()
        sums: dict[str, float] = defaultdict(float)
        steps = 0
        self._stepped = False  # the policy still equals the behaviour policy (until the first optimizer step)
        for _ in range(cfg.ppo_epochs):
            order = torch.randperm(len(batch), generator=self.generator) if not on_policy else torch.arange(len(batch))
            for chunk in order.chunk(cfg.mini_batches):
                stats = self._optimizer_step(batch.select(chunk))
                for k, v in stats.items():
                    sums[k] += v
                steps += 1
        metrics = {k: v / steps for k, v in sums.items()}
        metrics["lr"] = self.scheduler.get_last_lr()[0]
        return metrics

    def _masks(self, mb: Batch) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The policy-loss mask (RL samples) and the divergence mask (the initial policy's samples, DPH-RL)."""
        if mb.divergence_mask is None:
            return mb.response_mask, None
        d = mb.divergence_mask.to(mb.response_mask.dtype).unsqueeze(-1)
        return mb.response_mask * (1 - d), mb.response_mask * d

    def _step_weights(self, mb: Batch, rl_mask: torch.Tensor) -> torch.Tensor | None:
        """Token weights with statistics over the whole optimizer step (token_weights.scope=batch)."""
        if not self.weights_cfg.methods or self.weights_cfg.scope != "batch":
            return None
        logp = mb.old_logprobs if not self._stepped else self.compute_logprobs(mb)
        return token_weights(TokenStats(logp, mb.old_logprobs, mb.old_entropy, mb.advantages, rl_mask),
                             self.weights_cfg)

    def _optimizer_step(self, mb: Batch) -> dict[str, float]:
        # normalisers of the whole optimizer step, so micro-batching leaves loss and gradient unchanged
        rl_mask, div_mask = self._masks(mb)
        num_tokens = float(rl_mask.sum().clamp(min=1))
        num_seqs = float(max(int((rl_mask.sum(-1) > 0).sum()), 1)) if div_mask is not None else float(len(mb))
        num_div_tokens = float(div_mask.sum()) if div_mask is not None else 0.0
        step_weights = self._step_weights(mb, rl_mask)
        self.optimizer.zero_grad(set_to_none=True)
        stats: dict[str, float] = defaultdict(float)
        entropies = []
        self._read = [0, 0]  # tokens the decoder read (padding included), and of them real tokens
        for rows, micro in self._micro(mb):
            weights = step_weights[rows, : micro.input_ids.shape[1]] if step_weights is not None else None
            micro = micro.to(self.device)
            mask, div = self._masks(micro)
            logp, entropy = self._forward(self.model, micro, with_entropy=True)
            old = micro.old_logprobs if micro.old_logprobs is not None else logp.detach()
            out = self.policy_loss(logp, old, micro.advantages, mask, self.loss_cfg)
            token_loss = out.loss
            if self.weights_cfg.methods and weights is None:  # token_weights.scope=micro (the STEER authors' code)
                weights = token_weights(TokenStats(logp, micro.old_logprobs, micro.old_entropy, micro.advantages, mask),
                                        self.weights_cfg)
            if weights is not None:
                weights = weights.to(self.device)
                token_loss = token_loss * weights
                stats["token_weight/mean"] += float((weights * mask).sum()) / num_tokens
                stats["token_weight/reweighted_frac"] += float(((weights != 1) & (mask != 0)).sum()) / num_tokens
                stats["token_weight/masked_frac"] += float(((weights == 0) & (mask != 0)).sum()) / num_tokens
            if self.kl_cfg.coef > 0 and not self.kl_cfg.in_reward:
                kl = kl_penalty(logp, micro.ref_logprobs, self.kl_cfg.estimator) * mask
                token_loss = token_loss + self.kl_cfg.coef * kl
                stats["kl"] += float(kl.detach().sum()) / num_tokens
            if self.cfg.entropy_coef > 0:
                token_loss = token_loss - self.cfg.entropy_coef * entropy * mask
            loss = aggregate_loss(
                token_loss, mask, self.agg_mode,
                num_tokens=num_tokens, num_seqs=num_seqs, norm_length=self.norm_length,
            )
            if div is not None and num_div_tokens > 0:  # DPH-RL: eta * f-divergence on the initial policy's samples
                div_loss = f_divergence_loss(logp, micro.init_logprobs, div, self.div_cfg, num_div_tokens)
                loss = loss + self.div_cfg.eta * div_loss
                stats["divergence"] += float(div_loss.detach())
            loss.backward()
            stats["loss"] += float(loss.detach())
            stats["entropy"] += float((entropy.detach() * mask).sum()) / num_tokens
            entropies.append(entropy.detach()[mask != 0].float().cpu())
            stats["clip_frac"] += float((out.clipped.float() * mask).sum()) / num_tokens
            stats["ratio_mean"] += float((out.ratio * mask).sum()) / num_tokens
            stats["rollout_logp_diff"] += float(((logp.detach() - micro.rollout_logprobs).abs() * mask).sum()) / num_tokens
        stats["tokens_read"] = float(self._read[0])
        stats["padding_frac"] = 1.0 - self._read[1] / max(self._read[0], 1)
        all_h = torch.cat(entropies)
        if all_h.numel():
            for q, v in zip(ENTROPY_PERCENTILES, torch.quantile(all_h, torch.tensor(ENTROPY_PERCENTILES) / 100.0)):
                stats[f"entropy_p{q}"] = float(v)
        clip = self.cfg.optim.grad_clip
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip if clip > 0 else math.inf)
        if torch.isfinite(grad_norm):
            self.optimizer.step()
            self._stepped = True
            stats["skipped_update"] = 0.0
        else:  # a non-finite gradient never reaches the weights
            stats["skipped_update"] = 1.0
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        stats["grad_norm"] = float(grad_norm)
        return stats
    # -- weights out ------------------------------------------------------------------------------------------
    def export_weights(self, dtype: str | None = None) -> dict[str, torch.Tensor]:
        """The policy's state dict on CPU (cast to the engines' dtype), for weight sync."""
        cast = getattr(torch, dtype) if dtype and dtype != "auto" else None
        return {
            k: (v.detach().to(cast) if cast is not None else v.detach()).cpu()
            for k, v in self.model.state_dict().items()
        }

    def nonfinite_parameters(self) -> list[str]:
        return [n for n, p in self.model.named_parameters() if not torch.isfinite(p).all()]

    def save(self, folder: str) -> None:
        """A save_pretrained safetensors folder (loadable anywhere) plus optimizer, scheduler and RNG state.
        Refuses to write non-finite weights."""
        bad = self.nonfinite_parameters()
        if bad:
            raise FloatingPointError(f"the policy has non-finite weights ({bad[:3]}...); not writing a checkpoint")
        path = Path(folder)
        self.model.save_pretrained(path / "model", safe_serialization=True)
        state = {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": {"torch": torch.get_rng_state(), "generator": self.generator.get_state()},
        }
        if torch.cuda.is_available():
            state["rng"]["cuda"] = torch.cuda.get_rng_state_all()
        torch.save(state, path / "learner_state.pt")

    def load_state(self, folder: str) -> None:
        """Optimizer, scheduler and RNG state from a checkpoint (the weights were loaded from its model/ folder).
        Tensors only: `weights_only=True` never unpickles code from the file."""
        state = torch.load(Path(folder) / "learner_state.pt", map_location="cpu", weights_only=True)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"]["torch"])
        self.generator.set_state(state["rng"]["generator"])
        if "cuda" in state["rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])

    def ready(self) -> bool:
        return True
