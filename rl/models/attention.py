"""The learner's attention for shared-prompt packs, registered with transformers as an attention implementation.

transformers calls a registered attention function with each layer's query, key and value and passes the decoder's
extra keyword arguments through to it. A forward given `shared_prompt_blocks` (rl/core/packing.py) computes the
attention of shared-prompt packs block by block (shared_prompt_attention), never over the masked-out blocks of the
[L, L] mask; any other forward (rows that share nothing: a 2D padding mask) is plain sdpa. The policy and the
reference are loaded with it and both get the blocks. Only attention that sdpa over a mask expresses is taken: a
model whose attention has sinks, a logit soft-cap or a position bias is refused, and the learner refuses a forward
whose decoder did not pass the blocks on (rl/train/learner.py).
"""

from __future__ import annotations

from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from rl.core.packing import shared_prompt_attention

SHARED_PROMPT_ATTENTION = "rlvr_shared_prompts"  # the name the learner loads its models with


UNSUPPORTED = ("s_aux", "sinks", "softcap", "position_bias")  # attention terms neither path below computes


def _attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling: float | None = None,
               shared_prompt_blocks=None, **kwargs):
    given = [k for k in UNSUPPORTED if kwargs.get(k) is not None]
    if given:
        raise ValueError(f"{type(module).__name__}'s attention takes {', '.join(given)}, which block attention does "
                         "not compute: set learner.block_attention=false")
    if shared_prompt_blocks is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    if dropout:
        raise ValueError(f"{type(module).__name__} has attention dropout {dropout}: shared-prompt attention has none; "
                         "set learner.block_attention=false")
    window = kwargs.get("sliding_window")
    if window is not None and query.shape[2] > window and shared_prompt_blocks.longest_row() > window:
        raise ValueError(f"a packed sample of {shared_prompt_blocks.longest_row()} tokens (its prompt and response) "
                         f"is longer than the model's sliding window ({window}): set learner.block_attention=false")
    shared_prompt_blocks.used = True  # the learner checks that the blocks reached the attention
    return shared_prompt_attention(query, key, value, shared_prompt_blocks, scaling), None


AttentionInterface.register(SHARED_PROMPT_ATTENTION, _attention)
AttentionMaskInterface.register(SHARED_PROMPT_ATTENTION, sdpa_mask)  # the 2D padding masks of forwards without blocks
