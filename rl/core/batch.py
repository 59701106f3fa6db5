"""The one batch type carried through a training step: generate -> score -> advantage -> update.

Tensors are [B, T] over prompt + response tokens, right-padded. Log-prob columns are aligned with the tokens:
`logprobs[:, t]` is log p(input_ids[:, t] | input_ids[:, :t]); prompt and padding positions hold 0 and are excluded
by `response_mask`.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Sequence

import torch


@dataclass
class Batch:
    input_ids: torch.Tensor  # [B, T] long
    attention_mask: torch.Tensor  # [B, T] long, 1 on prompt and response tokens
    response_mask: torch.Tensor  # [B, T] float, 1 on response tokens that count in the loss
    group_ids: torch.Tensor  # [B] long, samples of one prompt share an id
    rollout_logprobs: torch.Tensor  # [B, T] log-probs reported by the rollout engine
    rewards: torch.Tensor | None = None  # [B] total reward (after shaping)
    advantages: torch.Tensor | None = None  # [B, T]
    old_logprobs: torch.Tensor | None = None  # [B, T] behaviour policy, recomputed by the learner
    ref_logprobs: torch.Tensor | None = None  # [B, T] reference policy, when a KL term is used
    old_entropy: torch.Tensor | None = None  # [B, T] behaviour policy's full-distribution entropy (token weights)
    init_logprobs: torch.Tensor | None = None  # [B, T] the initial policy's log-probs of its own samples (DPH-RL)
    divergence_mask: torch.Tensor | None = None  # [B] float, 1: a sample of the initial policy, for the divergence
    # term only (DPH-RL); 0: an RL sample, for the policy loss only
    prompt_lengths: torch.Tensor | None = None  # [B] long, tokens of each row's prompt (rows with equal prompts are
    # packed with one copy of it: rl/core/packing.py); None: unknown, nothing is shared
    prefix_lengths: torch.Tensor | None = None  # [B] long, CURE: tokens of the answer that sit in the prompt (a
    # continuation's reused prefix); they count in the answer's length but not in the loss

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    @property
    def response_lengths(self) -> torch.Tensor:
        return self.response_mask.sum(-1)

    @property
    def answer_lengths(self) -> torch.Tensor:
        """Length of each whole answer: its response tokens plus a CURE continuation's reused prefix."""
        lengths = self.response_lengths
        return lengths + self.prefix_lengths.to(lengths.dtype) if self.prefix_lengths is not None else lengths

    def loss_masks(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The policy-loss mask, and the mask of the rows only a loss term reads (divergence_mask: pi0's samples)."""
        if self.divergence_mask is None:
            return self.response_mask, None
        d = self.divergence_mask.to(self.response_mask.dtype).unsqueeze(-1)
        return self.response_mask * (1 - d), self.response_mask * d

    def select(self, index: torch.Tensor | Sequence[int]) -> "Batch":
        """Rows `index` of every tensor field."""
        index = torch.as_tensor(index, dtype=torch.long)
        return replace(self, **{f.name: v[index] for f in fields(self) if (v := getattr(self, f.name)) is not None})

    def to(self, device: torch.device | str) -> "Batch":
        return replace(self, **{f.name: v.to(device) for f in fields(self) if (v := getattr(self, f.name)) is not None})

    def trim(self) -> "Batch":
        """Drop trailing columns that are padding in every row."""
        width = int(self.attention_mask.sum(-1).max().item()) if len(self) else 0
        return replace(
            self, **{f.name: v[:, :width] for f in fields(self) if (v := getattr(self, f.name)) is not None and v.dim() == 2}
        )

    @classmethod
    def concat(cls, batches: Sequence["Batch"]) -> "Batch":
        """Rows of all batches, right-padded to the widest; a field set in some batches only is 0 in the others
        (pad token 0 in input_ids)."""
        width = max(b.input_ids.shape[1] for b in batches)
        out = {}
        for f in fields(cls):
            values = [getattr(b, f.name) for b in batches]
            if all(v is None for v in values):
                out[f.name] = None
                continue
            like = next(v for v in values if v is not None)
            parts = []
            for b, v in zip(batches, values):
                if v is None:
                    v = like.new_zeros(len(b)) if like.dim() == 1 else like.new_zeros((len(b), width))
                if v.dim() == 2 and v.shape[1] < width:
                    v = torch.nn.functional.pad(v, (0, width - v.shape[1]))
                parts.append(v)
            out[f.name] = torch.cat(parts)
        return cls(**out)

    @classmethod
    def from_samples(cls, samples: Sequence, group_ids: Sequence[int], pad_token_id: int) -> "Batch":
        """The batch of rollout samples (anything with prompt_ids, response_ids, logprobs, and optionally loss_mask
        and prefix_len, as rollout.base.Sample): from_sequences on their fields, prefix_lengths when some sample
        continues another's reused prefix (CURE)."""
        b = cls.from_sequences([s.prompt_ids for s in samples], [s.response_ids for s in samples],
                               [s.logprobs for s in samples], group_ids, pad_token_id,
                               [getattr(s, "loss_mask", None) for s in samples])
        prefix = [getattr(s, "prefix_len", 0) for s in samples]
        if any(prefix):
            b.prefix_lengths = torch.tensor(prefix, dtype=torch.long)
        return b

    @classmethod
    def from_sequences(
        cls,
        prompts: Sequence[Sequence[int]],
        responses: Sequence[Sequence[int]],
        logprobs: Sequence[Sequence[float]],
        group_ids: Sequence[int],
        pad_token_id: int,
        loss_masks: Sequence[Sequence[int] | None] | None = None,
    ) -> "Batch":
        """Pack prompt/response token lists (one entry per sample) into right-padded tensors; `loss_masks[i]` (0/1 per
        response token, None: all 1) takes tokens the environment wrote out of response_mask."""
        width = max(len(p) + len(r) for p, r in zip(prompts, responses))
        n = len(prompts)
        input_ids = torch.full((n, width), pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((n, width), dtype=torch.long)
        response_mask = torch.zeros((n, width), dtype=torch.float32)
        rollout_logprobs = torch.zeros((n, width), dtype=torch.float32)
        for i, (p, r, lp) in enumerate(zip(prompts, responses, logprobs)):
            lp_, lr_ = len(p), len(r)
            input_ids[i, : lp_ + lr_] = torch.tensor(list(p) + list(r), dtype=torch.long)
            attention_mask[i, : lp_ + lr_] = 1
            mask = loss_masks[i] if loss_masks is not None and loss_masks[i] is not None else [1.0] * lr_
            response_mask[i, lp_ : lp_ + lr_] = torch.tensor(list(mask), dtype=torch.float32)
            rollout_logprobs[i, lp_ : lp_ + lr_] = torch.tensor(list(lp), dtype=torch.float32)
        return cls(
            input_ids=input_ids,
            attention_mask=attention_mask,
            response_mask=response_mask,
            group_ids=torch.as_tensor(list(group_ids), dtype=torch.long),
            rollout_logprobs=rollout_logprobs,
            prompt_lengths=torch.tensor([len(p) for p in prompts], dtype=torch.long),
        )
