"""Shared-prompt packing: the rows of a micro-batch that share a prompt run through the model as one sequence.

A GRPO group is n responses to one prompt. Padded row by row, the model reads that prompt n times; packed, it reads
it once: one packed row is the prompt followed by the responses, each response attending to the prompt and to its own
earlier tokens only (a block-causal 4D mask), at the positions it has in its own row (position_ids), so every hidden
state, log-prob and gradient is the one the padded layout gives, to rounding. The prompt's activations collect the
gradient of every response that reads them, as they would summed over the n rows.

A pack holds at most `max_tokens` tokens (a longer sample gets a pack of its own), because attention over a packed
row costs its length squared. Rows without a known prompt length (Batch.prompt_lengths None) share nothing: each is
its own pack, which is the padded layout with the causal mask written out.

Varlen packing (pack_varlen, learner.varlen) is the other layout: every row of the micro-batch, whole, one after the
other in a single row with no padding and no mask, only position_ids that restart at 0 for each row. The attention
backend finds the rows from the positions (transformers: flash attention's varlen kernel takes cu_seqlens from them,
sdpa / eager / flex build the block-diagonal causal mask), so nothing is padding and no prompt is shared.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class Packed:
    input_ids: Tensor  # [R, L] long: packed rows, right-padded
    position_ids: Tensor  # [R, L] long: each token's position in its own (unpacked) row
    attention_mask: Tensor | None  # [R, 1, L, L] bool: True where query q may attend key k; when no row shares its
    # prompt, the input's own [B, T] padding mask (the rows are then the input's rows); None: varlen (pack_varlen)
    where: Tensor  # [B, T] long: flat index (r * L + l) of each unpacked token in the packed rows (-1: padding)
    real_tokens: int  # tokens of input_ids that are not padding

    @property
    def num_tokens(self) -> int:
        """Tokens the model reads (padding of the packed rows included)."""
        return self.input_ids.numel()

    @property
    def padding_frac(self) -> float:
        return 1.0 - self.real_tokens / max(self.num_tokens, 1)


def pack_shared_prompts(input_ids: Tensor, attention_mask: Tensor, prompt_lengths: Tensor | None,
                        max_tokens: int, pad_token_id: int = 0) -> Packed:
    """Pack right-padded rows [B, T]: rows with equal prompt tokens (their first prompt_lengths[i] tokens) share one
    copy of the prompt, followed by their remaining tokens, as long as the pack stays within `max_tokens`."""
    lengths = attention_mask.sum(-1).tolist()
    prompts = prompt_lengths.tolist() if prompt_lengths is not None else [0] * len(lengths)
    ids = input_ids.tolist()
    groups: dict[tuple, list[int]] = {}
    for i, (n, p) in enumerate(zip(lengths, prompts)):
        key = tuple(ids[i][:p]) if 0 < p < n else ("row", i)  # a row that is all prompt (or has none) packs alone
        groups.setdefault(key, []).append(i)
    packs: list[tuple[int, list[int]]] = []  # (shared prompt length, rows)
    for key, rows in groups.items():
        p = prompts[rows[0]] if key[0] != "row" else 0
        size = None
        for i in rows:
            extra = lengths[i] - p
            if size is None or size + extra > max_tokens:
                packs.append((p, [i]))
                size = p + extra
            else:
                packs[-1][1].append(i)
                size += extra
    if all(len(rows) == 1 for _, rows in packs):  # nothing shared: the padded layout itself, with its 2D mask, so
        # the attention backend keeps its fast causal paths (and builds no [L, L] mask per row)
        width = input_ids.shape[1]
        return Packed(input_ids, torch.arange(width).expand_as(input_ids).clone(), attention_mask,
                      torch.where(attention_mask > 0, torch.arange(input_ids.numel()).view_as(input_ids), -1),
                      sum(lengths))
    width = max(p + sum(lengths[i] - p for i in rows) for p, rows in packs)
    out_ids = torch.full((len(packs), width), pad_token_id, dtype=torch.long)
    positions = torch.zeros((len(packs), width), dtype=torch.long)
    segment = torch.full((len(packs), width), -1, dtype=torch.long)  # 0: the shared prompt, j + 1: member j, -1: pad
    where = torch.full(input_ids.shape, -1, dtype=torch.long)
    for r, (p, rows) in enumerate(packs):
        out_ids[r, :p] = input_ids[rows[0], :p]
        positions[r, :p] = torch.arange(p)
        segment[r, :p] = 0
        for i in rows:
            where[i, :p] = r * width + torch.arange(p)
        offset = p
        for j, i in enumerate(rows):
            n = lengths[i] - p
            out_ids[r, offset : offset + n] = input_ids[i, p : lengths[i]]
            positions[r, offset : offset + n] = torch.arange(p, lengths[i])
            segment[r, offset : offset + n] = j + 1
            where[i, p : lengths[i]] = r * width + offset + torch.arange(n)
            offset += n
    causal = torch.ones(width, width, dtype=torch.bool).tril()
    q, k = segment.unsqueeze(-1), segment.unsqueeze(-2)
    mask = causal & (k >= 0) & ((k == 0) | (k == q))
    mask |= torch.eye(width, dtype=torch.bool) & (q < 0)  # padding attends to itself: no all-masked row (NaN)
    return Packed(out_ids, positions, mask.unsqueeze(1), where, int((segment >= 0).sum()))


def pack_varlen(input_ids: Tensor, attention_mask: Tensor) -> Packed:
    """Right-padded rows [B, T] as one row [1, N] of their N real tokens, row after row, with position_ids
    0..n_i - 1 for row i and no attention mask (the backend reads the rows' boundaries off the positions)."""
    lengths = attention_mask.sum(-1)
    real = torch.arange(input_ids.shape[1]) < lengths.unsqueeze(-1)  # right padding: the first n_i tokens
    total = int(lengths.sum())
    where = torch.full(input_ids.shape, -1, dtype=torch.long)
    where[real] = torch.arange(total)
    positions = torch.arange(input_ids.shape[1]).expand_as(input_ids)[real]
    return Packed(input_ids[real].unsqueeze(0), positions.unsqueeze(0), None, where, total)
