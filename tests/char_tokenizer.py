"""A character-level tokenizer (id = code point): enough for unit tests of a rollout's token bookkeeping."""


class CharTokenizer:
    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return [ord(c) for c in text]
