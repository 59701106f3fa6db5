"""HICRA (hierarchy-aware credit assignment): a larger advantage on planning tokens, and how planning tokens are found.

    A'_t = A_t + alpha |A_t|   on planning tokens (= A_t (1 + alpha sign A_t)),   A'_t = A_t elsewhere;

alpha = 0 leaves the advantages unchanged (the paper uses 0.2). Planning tokens are the response tokens whose
characters overlap
- a phrase of a curated list ("but wait", "let me check", ...; `planning=phrases`), matched case-insensitively at word
  boundaries, or
- a strategic gram (`planning=strategic_grams`): the word n-grams (ngram_min..ngram_max words, lower-cased) of a corpus
  of responses are embedded (all-MiniLM-L6-v2: mean pooling over tokens, L2-normalised) and clustered with k-means
  (num_clusters, at most the number of distinct n-grams); a cluster's document frequency is the number of distinct
  responses that contain an n-gram of it, and the n-grams of the top `top_frac` clusters by document frequency are the
  strategic grams. The corpus is the first call's responses, refitted every `refit_every` steps ([derived]: the paper
  fits once on a corpus of solutions). Only n-grams seen in at least `min_doc_freq` responses are clustered
  ([derived]: an n-gram of a single response is content, not a recurring move). After fitting, strategic grams are
  found by exact n-gram lookup, so detection costs no embedding.

Semantic entropy of a batch: H = -sum_g p_g log p_g, p_g = count_g / sum_g' count_g', over the occurrence counts of
strategic-gram clusters (or of phrases); 0 when nothing occurs.

Pure functions on tensors, strings and token lists (no Ray, no vLLM); the trainer calls PlanningDetector, dense_mask
and hicra_advantages.
"""

from __future__ import annotations

import math
import re
import warnings
from collections import Counter
from dataclasses import replace
from functools import lru_cache
from typing import Callable, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from rl.config.algorithm import PLANNING, HicraConfig
from rl.models.embeddings import MiniLMEmbedder
from rl.methods.base import Method

_WORD = re.compile(r"\w+(?:['’-]\w+)*")  # a word: letters/digits, with inner apostrophes or hyphens (let's, x-axis)

Embedder = Callable[[Sequence[str]], np.ndarray]  # texts -> [N, D] float32, one row per text


def hicra_advantages(advantages: Tensor, planning_mask: Tensor, alpha: float) -> Tensor:
    """[B, T] -> [B, T]: A + alpha |A| where planning_mask, A elsewhere. A new tensor; the input is not modified."""
    if planning_mask.shape != advantages.shape:
        raise ValueError(f"planning_mask {tuple(planning_mask.shape)} != advantages {tuple(advantages.shape)}")
    return torch.where(planning_mask.bool(), advantages + alpha * advantages.abs(), advantages)


def dense_mask(response_mask: Tensor, token_masks: Sequence[Sequence[bool]]) -> Tensor:
    """[B, T] float mask from one list per row over that row's response tokens (the positions where response_mask > 0,
    in order)."""
    out = torch.zeros(response_mask.shape, dtype=torch.float32, device=response_mask.device)
    for i, m in enumerate(token_masks):
        cols = (response_mask[i] > 0).nonzero().flatten()
        if len(cols) != len(m):
            raise ValueError(f"row {i}: {len(m)} planning flags for {len(cols)} response tokens")
        out[i, cols] = torch.tensor([float(x) for x in m], device=out.device)
    return out


@lru_cache(maxsize=64)
def _phrase_patterns(phrases: tuple[str, ...]) -> tuple[tuple[str, re.Pattern], ...]:
    """One regex per phrase: its words separated by any whitespace, ' matching ’ too, not inside a longer word."""
    out = []
    for p in phrases:
        parts = [re.escape(w).replace("'", "['’]") for w in p.split()]
        if parts:
            out.append((p, re.compile(r"(?<!\w)" + r"\s+".join(parts) + r"(?!\w)", re.IGNORECASE)))
    return tuple(out)


def phrase_matches(text: str, phrases: Sequence[str]) -> list[tuple[int, int, str]]:
    """Every occurrence of every phrase, case-insensitive, at word boundaries: (start, end, phrase), by position."""
    found = [(m.start(), m.end(), p) for p, rx in _phrase_patterns(tuple(phrases)) for m in rx.finditer(text)]
    return sorted(found, key=lambda s: (s[0], s[1]))


def phrase_spans(text: str, phrases: Sequence[str]) -> list[tuple[int, int]]:
    """Character spans [start, end) of the phrases' occurrences in the text (phrase_matches without the phrase)."""
    return [(a, b) for a, b, _ in phrase_matches(text, phrases)]


def token_char_spans(tokenizer, token_ids: Sequence[int], skip_special_tokens: bool = True) -> list[tuple[int, int]]:
    """Each token's character span [start, end) in text = tokenizer.decode(token_ids, skip_special_tokens=...)
    (skipped special tokens get empty spans). The spans tile the text in order. A token is decoded alone when that
    piece continues the text (byte-level BPE); otherwise (a partial UTF-8 character, SentencePiece's leading space) its
    end is the length of the decoded prefix ids[:i+1]; a token that ends inside a character gets an empty span and the
    token completing the character gets the character."""
    ids = list(token_ids)
    text = tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)
    pieces = tokenizer.batch_decode([[t] for t in ids], skip_special_tokens=skip_special_tokens)
    spans, pos = [], 0
    for i, piece in enumerate(pieces):
        if "\ufffd" not in piece and text.startswith(piece, pos):
            end = pos + len(piece)
        else:
            prefix = tokenizer.decode(ids[: i + 1], skip_special_tokens=skip_special_tokens)
            end = max(pos, len(prefix)) if text.startswith(prefix) else pos
        spans.append((pos, end))
        pos = end
    if spans and pos < len(text):  # decode not prefix-consistent (e.g. space clean-up): the rest goes to the last token
        spans[-1] = (spans[-1][0], len(text))
    return spans


def tokens_in_spans(token_spans: Sequence[tuple[int, int]], spans: Sequence[tuple]) -> list[bool]:
    """A token is a planning token when its characters [a, b) overlap any span [start, end) (spans may carry more
    fields, e.g. a cluster id). Empty token spans never overlap. O(tokens + spans + characters)."""
    if not token_spans:
        return []
    n = max(max(b for _, b in token_spans), max((s[1] for s in spans), default=0))
    edges = np.zeros(n + 1, dtype=np.int64)
    for s in spans:
        if s[1] > s[0]:
            edges[s[0]] += 1
            edges[s[1]] -= 1
    covered = np.concatenate([[0], np.cumsum(np.cumsum(edges)[:n] > 0)])  # covered[c]: covered characters before c
    a, b = np.array(token_spans, dtype=np.int64).T
    return ((covered[b] - covered[a]) > 0).tolist()


def semantic_entropy(counts: Sequence[int] | Mapping[object, int]) -> float:
    """H = -sum_g p_g log p_g with p_g = count_g / sum counts (nats); 0 without occurrences."""
    values = [c for c in (counts.values() if isinstance(counts, Mapping) else counts) if c > 0]
    total = sum(values)
    return -sum(c / total * math.log(c / total) for c in values) if total else 0.0


def word_ngrams(text: str, n_min: int, n_max: int) -> list[tuple[str, int, int]]:
    """Every word n-gram (n_min..n_max words) of the text: (its lower-cased words joined by spaces, start, end)."""
    w = [(m.group().lower(), m.start(), m.end()) for m in _WORD.finditer(text)]
    return [(" ".join(x[0] for x in w[i : i + n]), w[i][1], w[i + n - 1][2])
            for n in range(n_min, n_max + 1) for i in range(len(w) - n + 1)]


class StrategicGrams:
    """fit(texts) -> self: the word n-grams (ngram_min..ngram_max words) of the texts that occur in >= min_doc_freq
    texts (at most max_ngrams, the most frequent first) are embedded and clustered by k-means (k = min(num_clusters,
    n-grams)); df(c) = #texts containing an n-gram of cluster c; the ceil(top_frac k) clusters of highest df are
    strategic, and `cluster_of` maps each of their n-grams to its cluster. spans(text) -> [(start, end, cluster_id)]
    of the strategic grams occurring in a text (exact lower-cased n-gram lookup)."""

    def __init__(self, cfg: HicraConfig, embed: Embedder | None = None):
        self.cfg = cfg
        self.embed = embed  # None: MiniLMEmbedder(cfg.embedding_model), made on the first fit
        self.cluster_of: dict[str, int] = {}

    def fit(self, texts: Sequence[str]) -> StrategicGrams:
        from sklearn.cluster import KMeans

        cfg = self.cfg
        docs = [{g for g, _, _ in word_ngrams(t, cfg.ngram_min, cfg.ngram_max)} for t in texts]
        df = Counter(g for d in docs for g in d)
        grams = sorted((g for g in df if df[g] >= cfg.min_doc_freq), key=lambda g: (-df[g], g))[: cfg.max_ngrams]
        self.cluster_of = {}
        if not grams:
            return self
        k = min(cfg.num_clusters, len(grams))
        if k > 1:
            if self.embed is None:
                self.embed = MiniLMEmbedder(cfg.embedding_model)
            with warnings.catch_warnings():  # fewer distinct points than k: k-means says so, and still labels them
                warnings.simplefilter("ignore")
                labels = KMeans(n_clusters=k, n_init=1, random_state=cfg.seed).fit_predict(self.embed(grams)).tolist()
        else:
            labels = [0] * len(grams)
        label = dict(zip(grams, labels))
        cluster_df = Counter(c for d in docs for c in {label[g] for g in d if g in label})
        keep = set(sorted(cluster_df, key=lambda c: (-cluster_df[c], c))[: max(1, math.ceil(cfg.top_frac * k))])
        self.cluster_of = {g: c for g, c in label.items() if c in keep}
        return self

    def spans(self, text: str) -> list[tuple[int, int, int]]:
        """(start, end, cluster_id) of every strategic-gram occurrence in the text."""
        return [(a, b, self.cluster_of[g]) for g, a, b in word_ngrams(text, self.cfg.ngram_min, self.cfg.ngram_max)
                if g in self.cluster_of]


class PlanningDetector:
    """Planning-token flags for a batch of responses, and the batch's HICRA metrics.

    __call__(texts, response_token_ids, tokenizer, step) -> (masks, metrics): masks[i][t] says whether response i's
    token t is a planning token (one entry per token id). Phrases and strategic grams are found in the decode of the
    token ids (token_char_spans, skip_special_tokens=True), so the flags line up with the tokens; `texts` (None: those
    decodes) are what the strategic grams are fitted on: on the first call, and again when step - fitted_at >=
    refit_every > 0. Metrics: hicra/planning_frac (planning tokens / response tokens), hicra/semantic_entropy (over
    the occurrence counts of this batch's strategic-gram clusters, or phrases) and hicra/num_strategic_grams (the
    fitted n-grams; 0 for phrases). state_dict() is JSON-able and goes into checkpoints, so a resumed run keeps its
    grams."""

    def __init__(self, cfg: HicraConfig, seed: int | None = None, embed: Embedder | None = None):
        if cfg.planning not in PLANNING:
            raise ValueError(f"algorithm.hicra.planning={cfg.planning!r}; choose one of {list(PLANNING)}")
        self.cfg = cfg if seed is None else replace(cfg, seed=seed)
        self.embed = embed
        self.grams: StrategicGrams | None = None
        self.fitted_at: int | None = None

    def _due(self, step: int) -> bool:
        return self.fitted_at is None or (self.cfg.refit_every > 0 and step - self.fitted_at >= self.cfg.refit_every)

    def __call__(self, texts: Sequence[str] | None, response_token_ids: Sequence[Sequence[int]], tokenizer,
                 step: int) -> tuple[list[list[bool]], dict[str, float]]:
        token_spans = [token_char_spans(tokenizer, ids) for ids in response_token_ids]
        decoded = [tokenizer.decode(list(ids), skip_special_tokens=True) for ids in response_token_ids]
        if self.cfg.planning == "strategic_grams":
            if self._due(step):
                self.grams = StrategicGrams(self.cfg, self.embed).fit(decoded if texts is None else texts)
                self.embed, self.fitted_at = self.grams.embed, step  # one embedder (and its cache) across refits
            found = [self.grams.spans(t) for t in decoded]
        else:
            found = [phrase_matches(t, self.cfg.phrases) for t in decoded]
        masks = [tokens_in_spans(ts, spans) for ts, spans in zip(token_spans, found)]
        n = sum(len(m) for m in masks)
        return masks, {
            "hicra/planning_frac": sum(sum(m) for m in masks) / n if n else 0.0,
            "hicra/semantic_entropy": semantic_entropy(Counter(s[2] for spans in found for s in spans)),
            "hicra/num_strategic_grams": float(len(self.grams.cluster_of)) if self.grams is not None else 0.0,
        }

    def state_dict(self) -> dict:
        return {"fitted_at": self.fitted_at, "cluster_of": self.grams.cluster_of if self.grams is not None else None}

    def load_state_dict(self, state: dict) -> None:
        self.fitted_at = state.get("fitted_at")
        if state.get("cluster_of") is not None:
            self.grams = StrategicGrams(self.cfg, self.embed)
            self.grams.cluster_of = {g: int(c) for g, c in state["cluster_of"].items()}


# -- in the training loop ---------------------------------------------------------------------------------------------


class Hicra(Method):
    """HICRA: after the estimator, A' = A + alpha |A| on the planning tokens of each response, the planning tokens
    found in the decoded responses (fitted on them, refitted every refit_every steps; the fit is checkpointed)."""

    name = "hicra"

    def __init__(self, cfg: HicraConfig, seed: int, tokenizer):
        self.cfg, self.tokenizer = cfg, tokenizer
        self.detector = PlanningDetector(cfg, seed)

    def shape_advantages(self, batch, step: int, metrics: dict) -> None:
        # rows with no loss token (overlong.mask_truncated took them out) are neither fitted on nor flagged
        live = [i for i in range(len(batch)) if bool((batch.response_mask[i] > 0).any())]
        responses = [batch.input_ids[i][batch.response_mask[i] > 0].tolist() for i in live]
        found_flags, found = self.detector(None, responses, self.tokenizer, step)
        flags: list[list[bool]] = [[] for _ in range(len(batch))]
        for i, f in zip(live, found_flags):
            flags[i] = f
        batch.advantages = hicra_advantages(batch.advantages, dense_mask(batch.response_mask, flags), self.cfg.alpha)
        metrics |= found

    def state_dict(self) -> dict:
        return self.detector.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.detector.load_state_dict(state)


def build(cfg, ctx) -> Method | None:
    hc = cfg.algorithm.hicra
    return Hicra(hc, cfg.seed, ctx.tokenizer) if hc is not None else None
