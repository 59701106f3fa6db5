"""The learner's attention for shared-prompt packs, registered with transformers as an attention implementation.

transformers calls a registered attention function with each layer's query, key and value and passes the decoder's
extra keyword arguments through to it. A forward given `shared_prompt_blocks` (rl/core/packing.py) computes the
attention of shared-prompt packs block by block (shared_prompt_attention), never over the masked-out blocks of the
[L, L] mask; any other forward (rows that share nothing, a 2D padding mask; the reference model's) is plain sdpa.
"""

from __future__ import annotations

from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from rl.core.packing import shared_prompt_attention

SHARED_PROMPT_ATTENTION = "rlvr_shared_prompts"  # the name the learner loads its models with


def _attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling: float | None = None,
               shared_prompt_blocks=None, **kwargs):
    if shared_prompt_blocks is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    if dropout:
        raise ValueError(f"{type(module).__name__} has attention dropout {dropout}: shared-prompt attention has none; "
                         "set learner.block_attention=false")
    window = kwargs.get("sliding_window")
    if window is not None and query.shape[2] > window:
        raise ValueError(f"a packed row of {query.shape[2]} tokens is longer than the model's sliding window "
                         f"({window}): set learner.pack_max_tokens <= {window}")
    return shared_prompt_attention(query, key, value, shared_prompt_blocks, scaling), None


AttentionInterface.register(SHARED_PROMPT_ATTENTION, _attention)
AttentionMaskInterface.register(SHARED_PROMPT_ATTENTION, sdpa_mask)  # the masks of forwards without blocks
