"""The learner: an HF causal LM, AdamW and an LR schedule, updated by an algorithm-blind loop over micro-batches.

What the loss is comes from the registries in rl/core/losses.py, rl/core/kl.py and rl/core/entropy.py; this file only feeds them.
With learner.num_ranks > 1 each Ray actor of the group (rl/train/learner_group.py) holds one Learner, an FSDP2 shard of
the policy, and runs its share of each step's rows; one rank is the same code with no process group
(rl/train/distributed.py says how the step stays exact across ranks).
"""

from __future__ import annotations

import math
import os
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, get_scheduler

from rl.config.algorithm import (DivergenceConfig, KLConfig, PolicyLossConfig, RolloutCorrectionConfig,
                                  TokenWeightConfig)
from rl.config.learner import LearnerConfig
from rl.core.batch import Batch
from rl.core.entropy import quantile
from rl.core.fused_head import fused_logprobs_entropy
from rl.core.loss_terms import TermInputs, build_terms
from rl.core.rollout_correction import mismatch_sums
from rl.core.losses import POLICY_LOSSES, aggregate_loss, resolve_agg_mode
from rl.core.packing import pack_shared_prompts, pack_varlen, shared_prompt_blocks
from rl.models.attention import SHARED_PROMPT_ATTENTION
from rl.train.distributed import all_max, all_sum, full_tensor, gather_objects, shard, split_rows, world

ENTROPY_PERCENTILES = (10, 50, 90)


class PolicyForward(torch.nn.Module):
    """Token log-probs (and entropies) of a causal LM at given positions: the decoder, then the output layer fused
    with log-prob and entropy in chunks of `chunk` rows (rl/core/fused_head.py: the [tokens, vocab] logits are never
    built). The decoder runs under autocast when `autocast_dtype` is set; the head's matmuls in the weights' dtype,
    or with `head_autocast` in autocast_dtype too. One module, so that FSDP's root unit (the embeddings, final norm
    and head) is gathered around both."""

    def __init__(self, model: torch.nn.Module, autocast_dtype: torch.dtype | None, chunk: int,
                 head_autocast: bool = False):
        super().__init__()
        self.model, self.autocast_dtype, self.chunk = model, autocast_dtype, chunk
        self.head_dtype = autocast_dtype if head_autocast else None

    def forward(self, input_ids, position_ids, attention_mask, source, targets, with_entropy: bool, blocks=None):
        """source [N]: the flat decoder positions whose next token is targets [N]; blocks: the shared-prompt packs'
        blocks, for the block attention (rl/models/attention.py) in place of attention_mask."""
        device = input_ids.device.type
        extra = {} if blocks is None else {"shared_prompt_blocks": blocks}  # reaches each layer's attention function
        with torch.autocast(device, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None):
            hidden = self.model.get_decoder()(input_ids=input_ids, position_ids=position_ids,
                                              attention_mask=attention_mask, use_cache=False, **extra).last_hidden_state
        head = self.model.get_output_embeddings()
        return fused_logprobs_entropy(hidden.reshape(-1, hidden.shape[-1])[source], head.weight, head.bias, targets,
                                      self.chunk, with_entropy, self.head_dtype)


class Learner:
    def __init__(
        self,
        model_path: str,
        cfg: LearnerConfig,
        loss: PolicyLossConfig,
        kl: KLConfig | None,
        total_steps: int,
        max_response_tokens: int,
        seed: int = 0,
        ref_model_path: str | None = None,
        weights: TokenWeightConfig | None = None,
        divergence: DivergenceConfig | None = None,
        correction: RolloutCorrectionConfig | None = None,
    ):
        torch.manual_seed(seed)
        self.rank, self.world = world()  # (0, 1) without a process group
        torch.set_num_threads(cfg.num_threads or max(1, (os.cpu_count() or 1) // self.world))
        self.cfg, self.loss_cfg = cfg, loss
        self.terms = build_terms(cfg, kl, weights, divergence, correction)  # None: that term is off
        self.entropy_grad = any(t.entropy_grad for t in self.terms)  # the loss differentiates through H
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # a rank sees its GPU as cuda:0
        mixed = cfg.mixed_precision
        if mixed == "auto":  # a config built in code (the offline prepare steps), not resolved by the CLI or Trainer
            from rl.models.precision import detect

            mixed = detect()[0]
        self.autocast_dtype = getattr(torch, mixed) if mixed and mixed != "float32" else None
        dtype = getattr(torch, cfg.dtype)
        # with LoRA the base weights are always the original model's (a checkpoint's model/ folder holds the merged
        # weights; its adapter/ folder is loaded by load_state)
        base = (ref_model_path or model_path) if cfg.lora is not None else model_path
        # with several ranks the weights stay on the CPU until fully_shard moves each rank's shard to its device
        here = self.device if self.world == 1 else torch.device("cpu")
        # block attention for shared-prompt packs: sdpa on each block (rl/models/attention.py), plain sdpa elsewhere
        self.block_attention = cfg.block_attention  # with share_prompts and sdpa only (LearnerConfig.check)
        attn = SHARED_PROMPT_ATTENTION if self.block_attention else cfg.attn_implementation
        load = {"dtype": dtype, "attn_implementation": attn}
        self.model = AutoModelForCausalLM.from_pretrained(base, **load).to(here)
        if getattr(self.model.config, "final_logit_softcapping", None):
            raise ValueError("models with final_logit_softcapping (e.g. Gemma 2) are not supported by the learner yet")
        if type(self.model.get_output_embeddings()) is not torch.nn.Linear:
            raise ValueError(f"the learner's fused output layer needs a plain nn.Linear head; {model_path} has "
                             f"{type(self.model.get_output_embeddings()).__name__}")
        if cfg.gradient_checkpointing:
            self.model.gradient_checkpointing_enable()
        self._adapted: dict = {}  # LoRA: {base weight name: its adapter layer}, merged into what the weights out hold
        if cfg.lora is not None:
            self.model = _with_lora(self.model, cfg.lora, cfg.gradient_checkpointing)
            self._adapted = adapted_layers(self.model)
        self.ref_model = None
        if kl is not None and cfg.lora is None:  # the reference policy is loaded only when a KL term uses it (with
            # LoRA it is the base: the adapter disabled)
            ref = ref_model_path or model_path  # on resume the policy comes from the checkpoint, the reference not
            self.ref_model = AutoModelForCausalLM.from_pretrained(ref, **load).to(here).eval()
            self.ref_model.requires_grad_(False)
        # decoder + fused head as one module: what FSDP's root unit wraps (the head's weight is read directly)
        self.runner = PolicyForward(self.model, self.autocast_dtype, cfg.head_chunk_tokens, cfg.head_autocast)
        self.ref_runner = PolicyForward(self.ref_model, self.autocast_dtype, cfg.head_chunk_tokens,
                                        cfg.head_autocast) if self.ref_model is not None else None
        if self.world > 1:
            for runner in filter(None, (self.runner, self.ref_runner)):
                shard(runner, runner.model, self.autocast_dtype, cfg.offload)
        o = cfg.optim
        self.optimizer = torch.optim.AdamW(
            [p for p in self.model.parameters() if p.requires_grad], lr=o.lr, betas=tuple(o.betas), eps=o.eps, weight_decay=o.weight_decay
        )
        self.scheduler = get_scheduler(
            o.schedule, self.optimizer, num_warmup_steps=o.warmup_steps,
            num_training_steps=max(1, total_steps * cfg.ppo_epochs * cfg.mini_batches),
        )
        self.policy_loss = POLICY_LOSSES.get(loss.name)
        self.agg_mode = resolve_agg_mode(loss)  # loss.agg_mode, or the policy loss's own aggregation
        self.norm_length = loss.norm_length or max_response_tokens
        self.generator = torch.Generator().manual_seed(seed)
        self.stepped = False  # an optimizer step was taken in the current update() (the policy left the old one)
        self._read = [0, 0]  # tokens the decoder read in this optimizer step's forward passes, and the real ones

    # -- forward passes ---------------------------------------------------------------------------------------
    def _forward(self, runner: "PolicyForward", mb: Batch, with_entropy: bool,
                 count: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Token log-probs [B, T] aligned with input_ids (0 off the response), and optionally per-token entropy.

        The decoder runs under autocast when learner.mixed_precision is set (master weights stay in learner.dtype);
        the output layer runs in learner.dtype, only at positions that predict a response token, fused with the
        log-prob and entropy in chunks of learner.head_chunk_tokens rows (rl/core/fused_head.py: the [tokens, vocab]
        logits are never built). Rows that share a prompt go through the decoder packed, or with learner.varlen every
        row one after the other in one row (rl/core/packing.py); with learner.block_attention the packs' attention is
        computed block by block (shared_prompt_blocks, passed down to rl/models/attention.py) instead of over the dense
        mask.
        """
        ids = mb.input_ids
        rows, cols = torch.nonzero(mb.response_mask[:, 1:] > 0, as_tuple=True)  # position p predicts token p + 1
        if self.cfg.varlen:
            packed = pack_varlen(ids.cpu(), mb.attention_mask.cpu())
        else:
            packed = pack_shared_prompts(ids.cpu(), mb.attention_mask.cpu(), mb.prompt_lengths.cpu()
                                         if self.cfg.share_prompts and mb.prompt_lengths is not None else None,
                                         self.cfg.pack_max_tokens, dense_mask=not self.block_attention)
        mask = None if packed.attention_mask is None else packed.attention_mask.to(self.device)
        blocks = None
        if self.block_attention and packed.segments is not None:
            blocks = shared_prompt_blocks(packed.segments).to(self.device)
            # a 2D mask of ones, not None: transformers then neither reads packs off the restarting positions nor
            # builds an [R, 1, L, L] mask the blocks make needless (sdpa_mask returns None for an all-ones mask)
            mask = torch.ones(packed.input_ids.shape, dtype=torch.long, device=self.device)
        if torch.is_grad_enabled() and count:  # the update's forward: what the decoder read, for the step's metrics
            self._read[0] += packed.num_tokens
            self._read[1] += packed.real_tokens
        token_logp, token_h = runner(packed.input_ids.to(self.device), packed.position_ids.to(self.device),
                                     mask, packed.where.to(self.device)[rows, cols],
                                     ids[rows, cols + 1], with_entropy, blocks)
        if blocks is not None and not blocks.used:  # plain causal attention over a pack would be silently wrong
            raise RuntimeError(f"{type(self.model).__name__}'s decoder did not pass shared_prompt_blocks on to its "
                               "attention (it drops forward kwargs): set learner.block_attention=false")
        logp = torch.zeros(ids.shape, dtype=torch.float32, device=self.device)
        logp[rows, cols + 1] = token_logp.float()
        entropy = None
        if with_entropy:
            entropy = torch.zeros_like(logp)
            entropy[rows, cols + 1] = (token_h if self.entropy_grad else token_h.detach()).float()
        return logp, entropy

    @torch.no_grad()
    def compute_logprobs(self, batch: Batch, reference: bool = False) -> torch.Tensor:
        """Log-probs of the batch's tokens under the current (or reference) model, without gradient."""
        if reference and self.cfg.lora is not None:  # the base policy: the adapter off
            with self.model.disable_adapter():
                return self.compute_logprobs(batch)
        runner = self.ref_runner if reference else self.runner
        if runner is None:
            raise RuntimeError("reference log-probs asked for, but no reference model is loaded (no algorithm.kl)")
        micro = self._micro(batch)
        parts = [self._forward(runner, mb.to(self.device), with_entropy=False)[0].cpu() for _, mb in micro]
        return self._unsplit(parts, micro, batch)

    @torch.no_grad()
    def compute_logprobs_and_entropy(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-probs and full-distribution entropies [B, T] under the current model, without gradient."""
        micro = self._micro(batch)
        parts = [self._forward(self.runner, mb.to(self.device), with_entropy=True) for _, mb in micro]
        return (self._unsplit([p[0].cpu() for p in parts], micro, batch),
                self._unsplit([p[1].cpu() for p in parts], micro, batch))

    def _micro(self, batch: Batch) -> list[tuple[torch.Tensor | None, Batch]]:
        """This rank's micro-batches of similar length (at most micro_batch_size rows and max_tokens_per_micro_batch
        tokens), each trimmed to its longest row, with the batch rows each holds. Rows are taken group by group
        (learner.share_prompts) and in order of length, so little of a micro-batch is padding; the step's
        normalisers make the loss and gradient independent of how rows are grouped. With several ranks each takes
        its share of the rows (balanced by tokens), and a rank with fewer micro-batches than another gets fillers
        (rows None: a forward and backward that count for nothing), since FSDP's gathers are collective."""
        lengths = batch.attention_mask.sum(-1)
        mine = split_rows(lengths, batch.group_ids if self.cfg.share_prompts else None, self.world, self.rank)
        key = lengths
        if self.cfg.share_prompts:  # a group's rows together (they pack with one copy of their prompt), by length
            key = batch.group_ids * (batch.input_ids.shape[1] + 1) + key
        order = mine[torch.argsort(key[mine], stable=True)]
        micro = [(rows, batch.select(rows).trim()) for rows in self._split(order, lengths)]
        filler = batch.select(torch.argsort(lengths, stable=True)[:1]).trim()
        return micro + [(None, filler)] * (all_max(len(micro)) - len(micro))

    def _split(self, order: torch.Tensor, lengths: torch.Tensor) -> list[torch.Tensor]:
        """Consecutive runs of `order`: at most micro_batch_size rows, and, with learner.max_tokens_per_micro_batch,
        at most that many tokens counted as the micro-batch reads them (rows x its longest row; with learner.varlen
        the rows' own lengths, as nothing is padding); a row longer than the budget is a micro-batch of its own."""
        size, budget = self.cfg.micro_batch_size, self.cfg.max_tokens_per_micro_batch
        if not len(order):  # this rank's share of the batch is empty (fillers only)
            return []
        if budget is None:
            return list(order.split(size))
        out, start, longest, total = [], 0, 0, 0
        for i, n in enumerate(lengths[order].tolist()):
            longest, total = max(longest, n), total + n
            reads = total if self.cfg.varlen else (i - start + 1) * longest
            if i > start and (i - start == size or reads > budget):
                out.append(order[start:i])
                start, longest, total = i, n, n
        return out + [order[start:]] if len(order) else out

    @staticmethod
    def _unsplit(parts: list[torch.Tensor], micro: list[tuple[torch.Tensor | None, Batch]], batch: Batch) -> torch.Tensor:
        """The [B, T] tensor of the whole batch from every rank's micro-batches (fillers dropped)."""
        out = torch.zeros(batch.input_ids.shape, dtype=torch.float32)
        for p, (rows, _) in zip(parts, micro):
            if rows is not None:
                out[rows, : p.shape[1]] = p
        return all_sum(out)

    # -- the update -------------------------------------------------------------------------------------------
    def update(self, batch: Batch) -> dict[str, float]:
        """ppo_epochs x mini_batches optimizer steps on one rollout batch; returns averaged metrics."""
        cfg = self.cfg
        on_policy = cfg.ppo_epochs == 1 and cfg.mini_batches == 1
        batch = replace(batch)  # the terms fill (or narrow: a rejected token's mask) fields of this update's copy only
        for term in self.terms:  # what the loss terms read of the old and reference policies, without gradient
            term.prepare(self, batch)
        if batch.old_logprobs is None and not on_policy:
            batch.old_logprobs = self.compute_logprobs(batch)
        self.runner.train()
        sums: dict[str, float] = defaultdict(float)
        steps = 0
        self.stepped = False  # the policy still equals the behaviour policy (until the first optimizer step)
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

    def _optimizer_step(self, mb: Batch) -> dict[str, float]:
        # normalisers of the whole optimizer step, so micro-batching leaves loss and gradient unchanged
        rl_mask, aux_mask = mb.loss_masks()
        num_tokens = float(rl_mask.sum().clamp(min=1))
        num_seqs = float(max(int((rl_mask.sum(-1) > 0).sum()), 1))  # rows with a loss token (not those rejected)
        num_aux_tokens = float(aux_mask.sum()) if aux_mask is not None else 0.0
        for term in self.terms:
            term.start_step(self, mb, rl_mask)
        self.optimizer.zero_grad(set_to_none=True)
        stats: dict[str, float] = defaultdict(float)
        entropies = []
        self._read = [0, 0]  # tokens the decoder read (padding included), and of them real tokens
        for rows, micro in self._micro(mb):
            micro = micro.to(self.device)
            mask, aux = micro.loss_masks()
            logp, entropy = self._forward(self.runner, micro, with_entropy=True, count=rows is not None)
            if rows is None:  # a filler (another rank has more micro-batches): FSDP's collectives, no gradient
                (logp.sum() * 0.0 + (entropy.sum() * 0.0 if self.entropy_grad else 0.0)).backward()
                continue
            old = micro.old_logprobs if micro.old_logprobs is not None else logp.detach()
            out = self.policy_loss(logp, old, micro.advantages, mask, self.loss_cfg)
            x = TermInputs(micro, rows, logp, entropy, mask, aux, num_tokens, num_aux_tokens)
            token_loss = out.loss
            for term in self.terms:
                token_loss = term.per_token(token_loss, x, stats)
            loss = aggregate_loss(
                token_loss, mask, self.agg_mode,
                num_tokens=num_tokens, num_seqs=num_seqs, norm_length=self.norm_length,
            )
            for term in self.terms:
                loss = term.on_loss(loss, x, stats)
            if loss.requires_grad:  # else no loss token in this micro-batch (all masked): no gradient from it
                loss.backward()
            stats["loss"] += float(loss.detach())
            stats["entropy"] += float((entropy.detach() * mask).sum()) / num_tokens
            entropies.append(entropy.detach()[mask != 0].float().cpu())
            stats["clip_frac"] += float((out.clipped.float() * mask).sum()) / num_tokens
            stats["ratio_mean"] += float((out.ratio * mask).sum()) / num_tokens
            for k, v in mismatch_sums(old, micro.rollout_logprobs, mask).items():  # the sampler vs pi_old, over the loss's tokens
                stats[f"mismatch/{k}"] += v / num_tokens
        # (a rank whose share of this mini-batch is empty ran fillers only: no entropies of its own)
        stats, all_h, read = self._over_ranks(stats, torch.cat(entropies) if entropies else torch.empty(0), self._read)
        stats["tokens_read"] = float(read[0])
        stats["padding_frac"] = 1.0 - read[1] / max(read[0], 1)
        if all_h.numel():
            for q, v in zip(ENTROPY_PERCENTILES, quantile(all_h, [p / 100.0 for p in ENTROPY_PERCENTILES])):
                stats[f"entropy_p{q}"] = float(v)
        clip = self.cfg.optim.grad_clip
        params = [p for p in self.model.parameters() if p.requires_grad]
        if all(p.grad is None for p in params):  # every row of this mini-batch masked: zero gradient (Adam steps)
            for p in params:
                p.grad = torch.zeros_like(p)
        grad_norm = full_tensor(torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip if clip > 0 else math.inf))
        if torch.isfinite(grad_norm):
            self.optimizer.step()
            self.stepped = True
            stats["skipped_update"] = 0.0
        else:  # a non-finite gradient never reaches the weights
            stats["skipped_update"] = 1.0
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        stats["grad_norm"] = float(grad_norm)
        return stats

    def _over_ranks(self, stats: dict, entropies: torch.Tensor, read: list) -> tuple[dict, torch.Tensor, list]:
        """The step's metrics summed over ranks (each rank's are its share, the normalisers being global), every
        rank's loss-token entropies (the percentiles are of the whole step) and tokens read."""
        if self.world == 1:
            return stats, entropies, read
        parts = gather_objects((dict(stats), entropies, list(read)))
        total: dict[str, float] = defaultdict(float)
        for s, _, _ in parts:
            for k, v in s.items():
                total[k] += v
        return total, torch.cat([h for _, h, _ in parts]), [sum(r[i] for _, _, r in parts) for i in (0, 1)]
    # -- weights out ------------------------------------------------------------------------------------------
    def _gathered(self, weights: dict, cast: torch.dtype | None, gathered: list | None = None):
        """(name, tensor) of `weights`, one at a time on this rank's device, cast to `cast`; with LoRA each adapted
        weight merged as it comes. With several ranks each is gathered in turn: every rank iterates, in step.
        `gathered`: each name is appended once its gather ran."""
        for k, v in weights.items():
            v = self._whole(k, v)
            if gathered is not None:
                gathered.append(k)
            yield k, (v.to(cast) if cast is not None else v)

    def _whole(self, name: str, value: torch.Tensor) -> torch.Tensor:
        """One weight of `_weights_out` gathered whole (a collective with several ranks); with LoRA, an adapted
        weight plus its adapter's delta, alpha / r B A (peft's get_delta_weight, on the sharded A and B, gathered)."""
        value = full_tensor(value.detach())
        layer = self._adapted.get(name)
        if layer is None:
            return value
        with torch.no_grad():
            return value + full_tensor(layer.get_delta_weight(layer.active_adapters[0])).to(value.dtype)

    def export_weights(self, dtype: str | None = None) -> dict[str, torch.Tensor] | None:
        """The policy's state dict on CPU (cast to the engines' dtype), for weight sync. With several ranks each
        parameter is gathered in turn (every rank calls this) and rank 0 returns the dict, the others None."""
        out = {k: v.cpu() for k, v in self._gathered(*self._weights_out(dtype)) if self.rank == 0}
        return out if self.rank == 0 else None

    def _weights_out(self, dtype: str | None) -> tuple[dict, torch.dtype | None]:
        """The state dict the engines load (LoRA: the base's, under its own names; `_whole` merges each adapted
        weight) and the dtype to cast it to."""
        cast = getattr(torch, dtype) if dtype and dtype != "auto" else None
        return (lora_base_state_dict(self.model) if self.cfg.lora is not None else self.model.state_dict()), cast

    def weight_metadata(self, dtype: str | None = None) -> dict:
        """What export_weights returns, without the values: names, dtype names and shapes (global shapes)."""
        return self._metadata(*self._weights_out(dtype))

    @staticmethod
    def _metadata(weights: dict, cast: torch.dtype | None) -> dict:
        return {"names": list(weights), "dtype_names": [str(cast or v.dtype).removeprefix("torch.")
                                                          for v in weights.values()],
                "shapes": [list(v.shape) for v in weights.values()]}

    def broadcast_weights(self, address: str, port: int, world_size: int, dtype: str | None, bucket_bytes: int,
                          timeout_s: float, backend: str = "gloo") -> None:
        """Weight sync through vLLM's weight-transfer API: rank 0 joins the engines' transfer group as its rank 0 and
        streams the weights into it as they are gathered, over `backend` (rollout/weight_transfer.py:
        gloo's rendezvous and broadcasts give up after timeout_s); the other ranks take part in the gathers."""
        weights, cast = self._weights_out(dtype)
        gathered: list[str] = []
        stream = self._gathered(weights, cast, gathered)
        try:
            if self.rank == 0:
                from rollout.weight_transfer import TRANSPORTS

                transport = TRANSPORTS[backend]
                group = transport.join(address, port, world_size, timeout_s)
                try:
                    transport.send(group, stream, self._metadata(weights, cast), bucket_bytes)
                finally:
                    transport.leave(group)
        finally:  # every rank runs every gather, whatever happened on rank 0 (the others wait in the next one);
            # the rest directly, not through `stream`: a generator that raised yields nothing more
            if self.world > 1:
                for k in list(weights)[len(gathered):]:
                    self._whole(k, weights[k])

    def nonfinite_parameters(self) -> list[str]:
        local = [n for n, p in self.model.named_parameters()
                 if not torch.isfinite(p.to_local() if hasattr(p, "to_local") else p).all()]
        return sorted({n for names in gather_objects(local) for n in names})

    def save(self, folder: str) -> None:
        """A save_pretrained safetensors folder (loadable anywhere) plus optimizer, scheduler and RNG state.
        Refuses to write non-finite weights."""
        bad = self.nonfinite_parameters()
        if bad:
            raise FloatingPointError(f"the policy has non-finite weights ({bad[:3]}...); not writing a checkpoint")
        path = Path(folder)
        empty = not self.optimizer.state  # no step taken yet (none, or only skipped ones)
        self._save_model(path)
        if empty:  # torch's get_optimizer_state_dict made the state with a zero-lr step (step=1, zero moments);
            self.optimizer.state.clear()  # undone, so the next step is Adam's first, as on one rank
        state = {
            "optimizer_empty": empty,
            "scheduler": self.scheduler.state_dict(),
            "rng": {"torch": torch.get_rng_state(), "generator": self.generator.get_state()},
        }
        if self.world == 1:
            state["optimizer"] = self.optimizer.state_dict()
        if torch.cuda.is_available():
            state["rng"]["cuda"] = torch.cuda.get_rng_state_all()
        if self.rank == 0:  # the scheduler and RNG streams are the same on every rank
            torch.save(state, path / "learner_state.pt")

    def _save_model(self, path: Path) -> None:
        """model/: save_pretrained of the whole weights (LoRA: merged), written by rank 0, loadable anywhere; with
        LoRA also adapter/, PEFT's format; with several ranks optimizer/: torch.distributed.checkpoint (DCP), each
        rank its shard, loadable by any number of ranks (load_state reshards). Weights and adapter are gathered
        parameter by parameter."""
        lora = self.cfg.lora is not None
        weights = self.export_weights() if lora or self.world > 1 else None  # None: save_pretrained's own
        adapter = {n: full_tensor(p.detach()).cpu() for n, p in self.model.named_parameters()
                   if p.requires_grad} if lora else None  # LoRA's A and B
        if self.world > 1:
            import torch.distributed.checkpoint as dcp
            from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

            dcp.save({"optimizer": get_optimizer_state_dict(self.runner, self.optimizer)},
                     checkpoint_id=str(path / "optimizer"))
        # after the collectives: a rank-0 failure here (a full disk) reaches the driver, no rank waits for it
        if self.rank == 0:
            plain = self.model.get_base_model() if lora else self.model
            plain.save_pretrained(path / "model", state_dict=weights, safe_serialization=True)
            if lora:
                self.model.save_pretrained(path / "adapter", state_dict=adapter, safe_serialization=True)

    def load_state(self, folder: str) -> None:
        """Optimizer, scheduler and RNG state from a checkpoint (the weights were loaded from its model/ folder).
        Tensors only: `weights_only=True` never unpickles code from the file."""
        if self.cfg.lora is not None:  # the adapter's weights (the base is the original model's)
            self._load_adapter(Path(folder) / "adapter" / "adapter_model.safetensors")
        state = torch.load(Path(folder) / "learner_state.pt", map_location="cpu", weights_only=True)
        self._load_optimizer(Path(folder), state.get("optimizer"))
        if state.get("optimizer_empty"):  # (set_optimizer_state_dict, too, steps an empty optimizer to make its state)
            self.optimizer.state.clear()
        self.scheduler.load_state_dict(state["scheduler"])
        # the config's optimizer settings win over the checkpoint's (they differ only when resume_force=true let a
        # change through): the schedule continues from its step with the configured base lr
        o = self.cfg.optim
        self.scheduler.base_lrs = [o.lr for _ in self.optimizer.param_groups]
        for g, f in zip(self.optimizer.param_groups, self.scheduler.lr_lambdas):
            g.update(initial_lr=o.lr, lr=o.lr * f(self.scheduler.last_epoch), betas=tuple(o.betas), eps=o.eps,
                     weight_decay=o.weight_decay)
        self.scheduler._last_lr = [g["lr"] for g in self.optimizer.param_groups]
        torch.set_rng_state(state["rng"]["torch"])
        self.generator.set_state(state["rng"]["generator"])
        if "cuda" in state["rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])

    def _load_adapter(self, file: Path) -> None:
        """LoRA's A and B from a PEFT adapter file (its keys are the model's without the adapter's name), into the
        parameters whole or, with several ranks, into each rank's shards."""
        from safetensors.torch import load_file
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        saved = load_file(str(file))
        ours = {n: n.replace(f".{a}.", ".") for n, p in self.model.named_parameters() if p.requires_grad
                for a in self.model.active_adapters if f".{a}." in n}
        unknown, missing = sorted(set(saved) - set(ours.values())), sorted(set(ours.values()) - set(saved))
        if unknown or missing:
            raise ValueError(f"{file} does not fit learner.lora (rank, target_modules): "
                             f"unexpected {unknown[:3]}, missing {missing[:3]}")
        set_model_state_dict(self.runner, {f"model.{n}": saved[k] for n, k in ours.items()},
                             options=StateDictOptions(full_state_dict=True, strict=False))

    def _load_optimizer(self, folder: Path, whole: dict | None) -> None:
        """The optimizer state of a checkpoint written by any number of ranks: one rank's torch state dict
        (learner_state.pt), or the DCP shards of several (optimizer/), resharded to this group's ranks."""
        if whole is not None and self.world == 1:
            self.optimizer.load_state_dict(whole)
            return
        from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_optimizer_state_dict,
                                                             set_optimizer_state_dict)

        if whole is not None:  # one rank's state, by parameter position, to this group: by name, then sharded
            names = {id(p): n for n, p in self.runner.named_parameters()}
            order = [names[id(p)] for g in self.optimizer.param_groups for p in g["params"]]
            keyed = {"state": {order[i]: v for i, v in whole["state"].items()},
                     "param_groups": [g | {"params": [order[i] for i in g["params"]]} for g in whole["param_groups"]]}
            set_optimizer_state_dict(self.runner, self.optimizer, keyed, options=StateDictOptions(full_state_dict=True))
            return
        import torch.distributed.checkpoint as dcp

        if not (folder / "optimizer").is_dir():
            raise FileNotFoundError(f"{folder} has no optimizer state (neither learner_state.pt's nor optimizer/)")
        target = {"optimizer": get_optimizer_state_dict(self.runner, self.optimizer)}
        dcp.load(target, checkpoint_id=str(folder / "optimizer"))
        set_optimizer_state_dict(self.runner, self.optimizer, target["optimizer"])

    def ready(self) -> bool:
        return True


def _with_lora(model, cfg, gradient_checkpointing: bool):
    """The model with LoRA adapters (peft) on cfg.target_modules; only the adapters train."""
    from peft import LoraConfig as PeftLoraConfig, get_peft_model

    if gradient_checkpointing:  # checkpointed blocks need an input that requires grad when the embeddings are frozen
        model.enable_input_require_grads()
    targets = cfg.target_modules[0] if list(cfg.target_modules) == ["all-linear"] else list(cfg.target_modules)
    return get_peft_model(model, PeftLoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                                                target_modules=targets, task_type="CAUSAL_LM"))


def adapted_layers(model) -> dict:
    """{name of an adapted weight in the base model's state dict: its peft LoraLayer}."""
    from peft.tuners.lora import LoraLayer

    return {f"{name}.weight": m for name, m in model.get_base_model().named_modules()
            if isinstance(m, LoraLayer) and m.active_adapters and m.active_adapters[0] in m.lora_A}


def lora_base_state_dict(model) -> dict[str, torch.Tensor]:
    """The base model's state dict under its own names (peft's base_layer folded back, the adapters left out): what
    the engines and model/ hold once each adapted weight is merged (Learner._whole). The model's weights are never
    merged in place (merge/unmerge would round them)."""
    return {k.replace(".base_layer.", "."): v for k, v in model.get_base_model().state_dict().items()
            if ".lora_" not in k}


class LearnerClient:
    """The learner group's calls that methods and rollout strategies make (on the driver), waited for."""

    def __init__(self, group):
        self.group = group  # rl.train.learner_group.LearnerGroup

    def logprobs(self, batch: Batch, reference: bool = False) -> torch.Tensor:
        return self.group.run("compute_logprobs", batch, reference=reference)

    def entropy(self, samples: list, pad_id: int) -> torch.Tensor:
        """Full-distribution entropy [N, T] of rollout samples (rollout.base.Sample) under the current policy."""
        probe = Batch.from_samples(samples, range(len(samples)), pad_id)
        return self.group.run("compute_logprobs_and_entropy", probe)[1]
