"""Packing (rl/core/packing.py), shared-prompt and varlen: the layouts by hand, and on a real (tiny) model the same
log-probs, entropies and update as the padded layout."""

from __future__ import annotations

import re

import pytest
import torch

from rl.core.batch import Batch
from rl.config.algorithm import PolicyLossConfig
from rl.train.learner import Learner
from rl.config.learner import LearnerConfig, OptimConfig
from rl.core.packing import pack_shared_prompts, pack_varlen, shared_prompt_attention, shared_prompt_blocks


def test_rows_with_one_prompt_share_it_and_see_only_their_own_tokens():
    b = Batch.from_sequences([[1, 2, 3], [1, 2, 3], [7, 8]], [[4, 5], [6], [9]], [[0.0, 0.0], [0.0], [0.0]],
                             [0, 0, 1], pad_token_id=0)
    p = pack_shared_prompts(b.input_ids, b.attention_mask, b.prompt_lengths, max_tokens=64)
    assert p.input_ids.tolist() == [[1, 2, 3, 4, 5, 6], [7, 8, 9, 0, 0, 0]]
    assert p.position_ids.tolist() == [[0, 1, 2, 3, 4, 3], [0, 1, 2, 0, 0, 0]]
    m = p.attention_mask[:, 0].int().tolist()
    assert m[0] == [[1, 0, 0, 0, 0, 0],
                    [1, 1, 0, 0, 0, 0],
                    [1, 1, 1, 0, 0, 0],
                    [1, 1, 1, 1, 0, 0],
                    [1, 1, 1, 1, 1, 0],
                    [1, 1, 1, 0, 0, 1]]  # token 6 reads the prompt and itself, not the other response
    assert [r[:3] for r in m[1][:3]] == [[1, 0, 0], [1, 1, 0], [1, 1, 1]]
    assert all(m[1][q][q] == 1 for q in range(3, 6))  # padding attends to itself only among padding: never all-masked
    assert p.where.tolist() == [[0, 1, 2, 3, 4], [0, 1, 2, 5, -1], [6, 7, 8, -1, -1]]
    assert p.num_tokens == 12 and p.real_tokens == 9 and p.padding_frac == 0.25  # padded rows: 15 tokens, 9 real


def test_a_pack_stays_within_max_tokens_and_unknown_prompts_share_nothing():
    b = Batch.from_sequences([[1, 2, 3]] * 3, [[4, 5], [6, 7], [8]], [[0.0] * 2, [0.0] * 2, [0.0]], [0, 0, 0], 0)
    p = pack_shared_prompts(b.input_ids, b.attention_mask, b.prompt_lengths, max_tokens=7)
    assert p.input_ids.tolist() == [[1, 2, 3, 4, 5, 6, 7], [1, 2, 3, 8, 0, 0, 0]]
    for alone in (pack_shared_prompts(b.input_ids, b.attention_mask, None, max_tokens=64),
                  pack_shared_prompts(b.input_ids, b.attention_mask, b.prompt_lengths, max_tokens=4)):
        assert torch.equal(alone.input_ids, b.input_ids) and torch.equal(alone.attention_mask, b.attention_mask)
        assert alone.where.tolist() == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9], [10, 11, 12, 13, -1]]
        assert alone.real_tokens == 14


def test_varlen_puts_every_row_whole_in_one_row_without_padding():
    b = Batch.from_sequences([[1, 2, 3], [1, 2, 3], [7, 8]], [[4, 5], [6], [9]], [[0.0, 0.0], [0.0], [0.0]],
                             [0, 0, 1], pad_token_id=0)
    p = pack_varlen(b.input_ids, b.attention_mask)
    assert p.input_ids.tolist() == [[1, 2, 3, 4, 5, 1, 2, 3, 6, 7, 8, 9]]
    assert p.position_ids.tolist() == [[0, 1, 2, 3, 4, 0, 1, 2, 3, 0, 1, 2]]  # restarts: where transformers cuts rows
    assert p.attention_mask is None
    assert p.where.tolist() == [[0, 1, 2, 3, 4], [5, 6, 7, 8, -1], [9, 10, 11, -1, -1]]
    assert p.num_tokens == p.real_tokens == 12 and p.padding_frac == 0.0


def test_block_attention_equals_the_dense_mask_and_skips_padding():
    """shared_prompt_attention against sdpa over pack_shared_prompts' dense mask: two packs of one prompt (the second
    because of max_tokens), a prompt of one row, a row that is all prompt (a member with no prompt block), grouped-query
    heads (4 query heads on 2 key-value heads); zero at padding, and the same gradients."""
    b = Batch.from_sequences([[1, 2, 3]] * 3 + [[7, 8], [5]], [[4, 5], [6, 7, 9], [8], [9, 9, 9], []],
                             [[0.0] * 2, [0.0] * 3, [0.0], [0.0] * 3, []], [0, 0, 0, 1, 2], pad_token_id=0)
    dense = pack_shared_prompts(b.input_ids, b.attention_mask, b.prompt_lengths, max_tokens=8)
    lazy = pack_shared_prompts(b.input_ids, b.attention_mask, b.prompt_lengths, max_tokens=8, dense_mask=False)
    assert lazy.attention_mask is None and torch.equal(lazy.segments, dense.segments)
    assert torch.equal(lazy.input_ids, dense.input_ids) and torch.equal(lazy.where, dense.where)
    assert dense.segments.tolist() == [[0, 0, 0, 1, 1, 2, 2, 2], [0, 0, 0, 1, -1, -1, -1, -1],
                                       [0, 0, 1, 1, 1, -1, -1, -1],
                                       [1, -1, -1, -1, -1, -1, -1, -1]]  # all prompt: packs alone, as a member
    blocks = shared_prompt_blocks(dense.segments)
    assert blocks.member_prompt.tolist() == [0, 0, 1, 2, -1]
    assert blocks.longest_row() == 6  # prompt [1, 2, 3] + response [6, 7, 9]: the span a sliding window must cover
    R, L = dense.input_ids.shape
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(R, h, L, 8, generator=g, dtype=torch.float64, requires_grad=True) for h in (4, 2, 2))
    want = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=dense.attention_mask,
                                                            enable_gqa=True).transpose(1, 2)
    got = shared_prompt_attention(q, k, v, blocks)
    real = dense.segments >= 0
    assert torch.allclose(got[real], want[real], atol=1e-12) and not got[~real].any()
    w = torch.randn(got.shape, generator=g, dtype=torch.float64) * real[..., None, None]  # padding's output unused
    grads = [torch.autograd.grad((out * w).sum(), (q, k, v)) for out in (got, want)]
    for a, c in zip(*grads):
        assert torch.allclose(a, c, atol=1e-12)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the learner's mixed precision: sdpa computes in bf16
        got, want = (f(*(x.detach().float() for x in (q, k, v))) for f in (
            lambda *a: shared_prompt_attention(*a, blocks),
            lambda *a: torch.nn.functional.scaled_dot_product_attention(*a, attn_mask=dense.attention_mask,
                                                                        enable_gqa=True).transpose(1, 2)))
    assert got.dtype == want.dtype == torch.bfloat16
    assert torch.allclose(got[real].float(), want[real].float(), atol=2e-2)


def grouped_batch(seed: int = 0) -> Batch:
    """Two prompts with three responses each (a GRPO step in small), ragged lengths."""
    g = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(5, 400, (n,), generator=g).tolist() for n in (5, 3)]
    responses = [torch.randint(5, 400, (n,), generator=g).tolist() for n in (4, 2, 6, 3, 5, 1)]
    batch = Batch.from_sequences([prompts[i // 3] for i in range(6)], responses, [[-1.0] * len(r) for r in responses],
                                 [0, 0, 0, 1, 1, 1], pad_token_id=0)
    batch.advantages = torch.tensor([1.0, -0.5, 0.3, -1.0, 0.7, 0.2]).unsqueeze(-1) * batch.response_mask
    return batch


def learner(path: str, share: bool, micro: int = 6, **more) -> Learner:
    cfg = LearnerConfig(micro_batch_size=micro, share_prompts=share, entropy_coef=0.01,
                        optim=OptimConfig(lr=1e-3, grad_clip=0.0), num_threads=1, **more)
    out = Learner(path, cfg, PolicyLossConfig(), None, total_steps=1, max_response_tokens=8)
    out.model.to(torch.float64)
    return out


@pytest.mark.parametrize("layout,micro", [("shared blocks", 6), ("shared blocks", 2), ("shared mask", 6),
                                          ("shared mask", 2), ("varlen sdpa", 6), ("varlen sdpa", 2),
                                          ("varlen eager", 6)])
def test_packed_forward_and_update_equal_the_padded_ones(tiny_model_path, layout, micro):
    batch = grouped_batch()
    kind, how = layout.split()
    more = {"varlen": True, "attn_implementation": how} if kind == "varlen" else {"block_attention": how == "blocks"}
    packed = learner(tiny_model_path, kind == "shared", micro, **more)
    padded = learner(tiny_model_path, False, micro, attn_implementation=more.get("attn_implementation"))
    # shared blocks: the learner's own attention function (rl/models/attention.py), the others transformers'
    expected = "rlvr_shared_prompts" if layout == "shared blocks" else padded.model.config._attn_implementation
    assert packed.model.config._attn_implementation == expected
    for a, b in zip(packed.compute_logprobs_and_entropy(batch), padded.compute_logprobs_and_entropy(batch)):
        assert a.abs().sum() > 0
        assert torch.allclose(a, b, atol=1e-10), (a - b).abs().max()
    grads = {}
    for name, lrn in (("packed", packed), ("padded", padded)):  # the gradient each hands to AdamW
        step = lrn.optimizer.step
        lrn.optimizer.step = lambda name=name, lrn=lrn, step=step: (
            grads.__setitem__(name, [p.grad.clone() for p in lrn.model.parameters()]), step())
    ma, mb = packed.update(batch), padded.update(batch)
    assert (ma["padding_frac"] == 0.0) == layout.startswith("varlen") and mb["padding_frac"] > 0  # the entropy bonus sends a gradient through the head too
    # (log-probs and the loss are float32 whatever the model's dtype: the two sum rows in a different order)
    assert ma["loss"] == pytest.approx(mb["loss"], rel=1e-6) and ma["entropy"] == pytest.approx(mb["entropy"], rel=1e-6)
    scale = max(float(g.abs().max()) for g in grads["padded"])
    assert scale > 0
    for a, b in zip(grads["packed"], grads["padded"]):
        assert torch.allclose(a, b, atol=1e-6 * scale, rtol=1e-5)


def test_block_attention_builds_no_dense_mask_and_refuses_what_it_cannot_compute(tiny_model_path, monkeypatch):
    """The learner's block path hands its attention no [L, L] mask (transformers builds none from the 2D mask of
    ones); a decoder that does not pass the blocks on, or attention terms block attention does not compute (sinks,
    a soft-cap), are refused rather than run as plain causal attention over the packs."""
    from transformers import AttentionInterface

    from rl.models import attention

    lrn = learner(tiny_model_path, True, block_attention=True)
    seen = []

    def spy(module, query, key, value, attention_mask, **kwargs):
        seen.append((attention_mask, kwargs.get("shared_prompt_blocks") is not None))
        return attention._attention(module, query, key, value, attention_mask, **kwargs)

    try:
        AttentionInterface.register(attention.SHARED_PROMPT_ATTENTION, spy)
        lrn.compute_logprobs_and_entropy(grouped_batch())
        assert seen and all(mask is None and has_blocks for mask, has_blocks in seen)

        def drops_the_blocks(module, query, key, value, attention_mask, shared_prompt_blocks=None, **kwargs):
            return attention._attention(module, query, key, value, attention_mask, **kwargs)

        AttentionInterface.register(attention.SHARED_PROMPT_ATTENTION, drops_the_blocks)
        with pytest.raises(RuntimeError, match="did not pass shared_prompt_blocks on.*learner.block_attention=false"):
            lrn.compute_logprobs_and_entropy(grouped_batch())
    finally:
        AttentionInterface.register(attention.SHARED_PROMPT_ATTENTION, attention._attention)
    q = torch.zeros(1, 2, 3, 4)
    for term in ("s_aux", "softcap"):
        with pytest.raises(ValueError, match=f"takes {term}, which block attention does not compute"):
            attention._attention(torch.nn.Linear(1, 1), q, q, q, None, **{term: 1.0})


@pytest.mark.parametrize("override, words", [
    ("learner.share_prompts=false", "learner.share_prompts=false (nothing is packed)"),
    ("learner.attn_implementation=eager", "learner.attn_implementation=eager"),
])
def test_block_attention_is_refused_where_it_would_be_ignored(override, words):
    from rl.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=re.escape(words) + ".*set learner.block_attention=false"):
        load_config("recipes/quickstart.yaml", ["learner.block_attention=true", override])
