"""Chat prompts: a tokenizer's chat template applied to user texts (training prompts, judge prompts)."""

from __future__ import annotations

from collections.abc import Sequence


def render_prompts(tokenizer, user_texts: list[str], system_prompt: str | None,
                   few_shot: Sequence = ()) -> list[list[int]]:
    """Token ids of each user text wrapped in the tokenizer's chat template, after the system prompt and the few-shot
    examples (earlier user/assistant turns), ready for the assistant's turn."""
    name = getattr(tokenizer, "name_or_path", "") or "the model"
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            f"the tokenizer of {name} has no chat template; set one (add chat_template.jinja, or chat_template in "
            "tokenizer_config.json, to the model.path folder, or set tokenizer.chat_template) or use an instruct "
            "model that has one"
        )
    if not user_texts:
        return []
    head = [{"role": "system", "content": system_prompt}] if system_prompt else []
    for ex in few_shot:
        head += [{"role": "user", "content": ex.user}, {"role": "assistant", "content": ex.assistant}]
    conversations = [head + [{"role": "user", "content": t}] for t in user_texts]
    try:
        texts = tokenizer.apply_chat_template(conversations, tokenize=False, add_generation_prompt=True)
    except Exception as e:  # a Jinja syntax error, or the template's own raise_exception(...)
        hint = " or unset data.system_prompt (some templates take no system message)" if system_prompt else ""
        raise ValueError(
            f"the chat template of {name} failed ({type(e).__name__}: {e}); fix the template (chat_template.jinja "
            f"or chat_template in tokenizer_config.json in the model.path folder){hint}"
        ) from e
    # the template writes the special tokens itself, as apply_chat_template(tokenize=True) does
    return [list(ids) for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"]]


def pad_token_id(tokenizer) -> int:
    """The tokenizer's pad token id, or its end-of-sequence id when it has no pad token."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
