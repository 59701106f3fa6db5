"""Shared-prompt packing: the rows of a micro-batch that share a prompt run through the model as one sequence.

A GRPO group is n responses to one prompt. Padded row by row, the model reads that prompt n times; packed, it reads
it once: one packed row is the prompt followed by the responses, each response attending to the prompt and to its own
earlier tokens only (a block-causal 4D mask), at the positions it has in its own row (position_ids), so every hidden
state, log-prob and gradient is the one the padded layout gives, to rounding. The prompt's activations collect the
gradient of every response that reads them, as they would summed over the n rows.

A pack holds at most `max_tokens` tokens (a longer sample gets a pack of its own), because attention over a packed
row costs its length squared. Rows without a known prompt length (Batch.prompt_lengths None) share nothing: each is
its own pack, which is the padded layout with the causal mask written out.

Most of a pack's [L, L] mask is masked out (a member reads the prompt and itself, not the other members), so the
learner computes a pack's attention block by block instead (shared_prompt_attention, learner.block_attention): the
prompt causally, then every member of every pack in one batched call over its prompt's keys and its own. Attention
then costs sum(P^2 + N_m (P + N_m)) rather than L^2 per pack; the values are the dense mask's, to rounding.

Varlen packing (pack_varlen, learner.varlen) is the other layout: every row of the micro-batch, whole, one after the
other in a single row with no padding and no mask, only position_ids that restart at 0 for each row. The attention
backend finds the rows from the positions (transformers: flash attention's varlen kernel takes cu_seqlens from them,
sdpa / eager / flex build the block-diagonal causal mask), so nothing is padding and no prompt is shared.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class Packed:
    input_ids: Tensor  # [R, L] long: packed rows, right-padded
    position_ids: Tensor  # [R, L] long: each token's position in its own (unpacked) row
    attention_mask: Tensor | None  # [R, 1, L, L] bool: True where query q may attend key k; when no row shares its
    # prompt, the input's own [B, T] padding mask (the rows are then the input's rows); None: varlen (pack_varlen),
    # or shared prompts without the dense mask (dense_mask=False: the attention reads `segments` instead)
    where: Tensor  # [B, T] long: flat index (r * L + l) of each unpacked token in the packed rows (-1: padding)
    real_tokens: int  # tokens of input_ids that are not padding
    segments: Tensor | None = None  # [R, L] long when rows share a prompt: 0 the prompt, j + 1 member j, -1 padding

    @property
    def num_tokens(self) -> int:
        """Tokens the model reads (padding of the packed rows included)."""
        return self.input_ids.numel()

    @property
    def padding_frac(self) -> float:
        return 1.0 - self.real_tokens / max(self.num_tokens, 1)


def pack_shared_prompts(input_ids: Tensor, attention_mask: Tensor, prompt_lengths: Tensor | None,
                        max_tokens: int, pad_token_id: int = 0, dense_mask: bool = True) -> Packed:
    """Pack right-padded rows [B, T]: rows with equal prompt tokens (their first prompt_lengths[i] tokens) share one
    copy of the prompt, followed by their remaining tokens, as long as the pack stays within `max_tokens`. The packs'
    block-causal mask is built as a dense [R, 1, L, L] tensor, or with dense_mask=False left to `segments`
    (shared_prompt_attention computes the blocks directly)."""
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
    real = int((segment >= 0).sum())
    if not dense_mask:
        return Packed(out_ids, positions, None, where, real, segment)
    causal = torch.ones(width, width, dtype=torch.bool).tril()
    q, k = segment.unsqueeze(-1), segment.unsqueeze(-2)
    mask = causal & (k >= 0) & ((k == 0) | (k == q))
    mask |= torch.eye(width, dtype=torch.bool) & (q < 0)  # padding attends to itself: no all-masked row (NaN)
    return Packed(out_ids, positions, mask.unsqueeze(1), where, real, segment)


@dataclass
class SharedPromptBlocks:
    """Where the blocks of shared-prompt packs lie in the flat [R * L] tokens of the packed rows: each pack's prompt
    (padded to the longest, P) and each member's own tokens (padded to the longest member, N)."""

    prompt_index: Tensor  # [Rp, P] long: flat index of prompt token t of each pack that has a prompt (0: padding)
    prompt_valid: Tensor  # [Rp, P] bool
    member_prompt: Tensor  # [M] long: each member's pack in prompt_index's rows (-1: its pack has no prompt)
    member_index: Tensor  # [M, N] long: flat index of each member's token t (0: padding)
    member_valid: Tensor  # [M, N] bool

    used: bool = False  # set by the attention that read them (rl/models/attention.py)

    def to(self, device) -> "SharedPromptBlocks":
        return SharedPromptBlocks(*(getattr(self, f.name).to(device) for f in dataclasses.fields(self)
                                    if f.name != "used"))

    def longest_row(self) -> int:
        """Tokens of the longest sample (its prompt and its own tokens): the span its attention covers."""
        prompts = self.prompt_valid.sum(-1)
        prompt = prompts[self.member_prompt.clamp(min=0)] * (self.member_prompt >= 0) if prompts.numel() else 0
        lengths = torch.cat([prompt + self.member_valid.sum(-1), self.prompt_valid.sum(-1)])
        return int(lengths.max()) if lengths.numel() else 0


def shared_prompt_blocks(segments: Tensor) -> SharedPromptBlocks:
    """The blocks of the packs `segments` [R, L] (Packed.segments) describes."""
    R, L = segments.shape
    flat = torch.arange(R * L).view(R, L)

    def ragged(rows: list[Tensor]) -> tuple[Tensor, Tensor]:
        width = max((len(r) for r in rows), default=0)
        index = torch.zeros((len(rows), width), dtype=torch.long)
        valid = torch.zeros((len(rows), width), dtype=torch.bool)
        for i, r in enumerate(rows):
            index[i, : len(r)], valid[i, : len(r)] = r, True
        return index, valid

    prompts, members, member_prompt = [], [], []
    for r in range(R):
        has_prompt = bool((segments[r] == 0).any())
        if has_prompt:
            prompts.append(flat[r][segments[r] == 0])
        for j in range(1, int(segments[r].max()) + 1):
            members.append(flat[r][segments[r] == j])
            member_prompt.append(len(prompts) - 1 if has_prompt else -1)
    return SharedPromptBlocks(*ragged(prompts), torch.tensor(member_prompt, dtype=torch.long), *ragged(members))


def shared_prompt_attention(query: Tensor, key: Tensor, value: Tensor, blocks: SharedPromptBlocks,
                            scale: float | None = None) -> Tensor:
    """Attention of shared-prompt packs computed block by block, never over the masked-out blocks.

    query [R, H, L, D], key and value [R, Hkv, L, D] (Hkv divides H: grouped-query attention) of packed rows whose
    dense mask (pack_shared_prompts) lets a prompt token read the prompt causally and a member token read the whole
    prompt and its own member causally. The same attention as that mask gives, by two batched calls:
        prompt p:  softmax(q_p K_p^T * scale, causal) V_p
        member m:  softmax(q_m [K_p; K_m]^T * scale, all of p, causal in m) [V_p; V_m]
    so the cost is sum(P^2) + sum(N_m (P + N_m)) instead of sum(L^2). Returns [R, L, H, D] (transformers' attention
    output layout), zero at padding."""
    R, H, L, D = query.shape
    flat = [x.transpose(1, 2).reshape(R * L, x.shape[1], D) for x in (query, key, value)]  # [R * L, heads, D]
    b = blocks
    parts = []  # (flat indices, their outputs)

    def gather(index: Tensor) -> list[Tensor]:  # [n, T] -> q, k, v [n, heads, T, D]
        return [x[index].transpose(1, 2) for x in flat]

    def attend(q: Tensor, k: Tensor, v: Tensor, mask: Tensor) -> Tensor:
        if q.is_cuda and k.shape[1] != q.shape[1]:  # CUDA's sdpa takes enable_gqa with a mask only in its math kernel
            k, v = (x.repeat_interleave(q.shape[1] // k.shape[1], dim=1) for x in (k, v))
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale,
                                                                enable_gqa=not q.is_cuda)

    if b.prompt_index.numel():
        q, k, v = gather(b.prompt_index)
        P = b.prompt_index.shape[1]
        mask = torch.ones(P, P, dtype=torch.bool, device=query.device).tril() & b.prompt_valid[:, None, None, :]
        o = attend(q, k, v, mask).transpose(1, 2)  # [Rp, P, H, D]
        parts.append((b.prompt_index[b.prompt_valid], o[b.prompt_valid]))
    if b.member_index.numel():
        M, N = b.member_index.shape
        q, k, v = gather(b.member_index)
        mask = torch.ones(N, N, dtype=torch.bool, device=query.device).tril() & b.member_valid[:, None, None, :]
        if b.prompt_index.numel():  # the member's prompt first: keys [prompt; member]
            own = b.member_prompt.clamp(min=0)
            _, kp, vp = gather(b.prompt_index[own])
            k, v = torch.cat([kp, k], dim=2), torch.cat([vp, v], dim=2)
            sees = b.prompt_valid[own] & (b.member_prompt >= 0)[:, None]  # [M, P]
            mask = torch.cat([sees[:, None, None, :].expand(M, 1, N, sees.shape[1]), mask], dim=-1)
        o = attend(q, k, v, mask).transpose(1, 2)  # [M, N, H, D]
        parts.append((b.member_index[b.member_valid], o[b.member_valid]))
    # sdpa's dtype (under autocast its compute dtype, which may differ from query's)
    out = query.new_zeros((R * L, H, D), dtype=parts[0][1].dtype if parts else query.dtype)
    for index, o in parts:
        out = out.index_put((index,), o)
    return out.view(R, L, H, D)


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
