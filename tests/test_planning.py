"""HICRA (rl/methods/hicra.py): the advantage boost (golden values, alpha = 0, the tensor really changes, input
untouched), phrase matching, token character spans on the real SmolLM2 tokenizer, semantic entropy, strategic grams
(the cluster-level document frequency with a stub embedder, then real all-MiniLM-L6-v2 embeddings) and the detector
(masks, metrics, refit schedule, checkpoint state)."""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import replace

import numpy as np
import pytest
import torch

from rl.config.algorithm import DEFAULT_PHRASES, HicraConfig
from rl.methods.hicra import (
    MiniLMEmbedder, PlanningDetector, StrategicGrams, dense_mask, hicra_advantages,
    phrase_matches, phrase_spans, semantic_entropy, token_char_spans, tokens_in_spans, word_ngrams,
)


# --- the advantage boost ---------------------------------------------------------------------------------------------

def test_boost_golden_values_and_alpha_zero():
    a = torch.tensor([[1.0, -1.0, 0.5]])
    m = torch.tensor([[1, 1, 0]])
    assert hicra_advantages(a, m, 0.2)[0].tolist() == pytest.approx([1.2, -0.8, 0.5])  # A + 0.2 |A| on planning
    assert hicra_advantages(a, m.bool(), 0.2)[0].tolist() == pytest.approx([1.2, -0.8, 0.5])
    assert torch.equal(hicra_advantages(a, m, 0.0), a)
    a2 = torch.tensor([[-2.0, 3.0, 0.0]])
    assert torch.equal(hicra_advantages(a2, torch.ones(1, 3), 0.5), a2 * (1 + 0.5 * torch.sign(a2)))  # A (1 + a sgn A)
    with pytest.raises(ValueError, match="planning_mask"):
        hicra_advantages(a, torch.ones(1, 2), 0.2)


def test_boost_changes_exactly_the_planning_entries_and_not_its_input():
    """The double-indexing trap (x[m1][m2] *= c edits a copy): the returned tensor must differ from the input exactly
    at the planning tokens, which dense_mask places at the response positions of each row."""
    response_mask = torch.tensor([[0, 0, 1, 1, 1, 0], [0, 1, 1, 0, 0, 0]], dtype=torch.float32)
    adv = torch.tensor([[0, 0, 2.0, 2.0, 2.0, 0], [0, -1.0, -1.0, 0, 0, 0]])
    before = adv.clone()
    mask = dense_mask(response_mask, [[False, True, False], [True, True]])
    assert mask.tolist() == [[0, 0, 0, 1, 0, 0], [0, 1, 1, 0, 0, 0]]
    out = hicra_advantages(adv, mask, 0.5)
    assert torch.equal(adv, before)  # input untouched
    assert (out != adv).nonzero().tolist() == [[0, 3], [1, 1], [1, 2]]
    assert out[0, 3] == 3.0 and out[1, 1] == -0.5 and out[1, 2] == -0.5
    with pytest.raises(ValueError, match="row 1"):
        dense_mask(response_mask, [[False, True, False], [True]])


# --- phrases, token spans, entropy -----------------------------------------------------------------------------------

def test_phrase_spans_are_case_insensitive_at_word_boundaries():
    text = "But wait, let me check. But waiting is fine; LET ME\nCHECK again. Rebut wait. Let’s verify: step 10, step 1"
    phrases = ["but wait", "let me check", "let's verify", "step 1"]
    assert [text[a:b] for a, b in phrase_spans(text, phrases)] == [
        "But wait", "let me check", "LET ME\nCHECK", "Let’s verify", "step 1"]
    assert [p for _, _, p in phrase_matches(text, phrases)] == ["but wait", "let me check", "let me check",
                                                               "let's verify", "step 1"]
    assert phrase_spans("first, we add", ["first,"]) == [(0, 6)] and phrase_spans("firstly", ["first"]) == []
    assert 18 <= len(DEFAULT_PHRASES) <= 25 and phrase_spans("So the answer is 4.", DEFAULT_PHRASES) == [(0, 16)]


def test_tokens_in_spans_is_character_overlap():
    tokens = [(0, 3), (3, 4), (4, 9), (9, 9), (9, 12)]
    assert tokens_in_spans(tokens, [(3, 5)]) == [False, True, True, False, False]
    assert tokens_in_spans(tokens, [(0, 1, 7), (11, 12, 7)]) == [True, False, False, False, True]  # extra fields ok
    assert tokens_in_spans(tokens, []) == [False] * 5 and tokens_in_spans([], [(0, 4)]) == []
    assert tokens_in_spans(tokens, [(9, 9)]) == [False] * 5  # empty spans cover nothing


@pytest.fixture(scope="module")
def tokenizer(smollm2_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_path)


def test_phrase_maps_to_exactly_the_tokens_covering_it(tokenizer):
    text = "First, add the apples. Let me check the sum: 3 + 4 = 7."
    ids = tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    spans = token_char_spans(tokenizer, ids)
    assert len(spans) == len(ids) and tokenizer.decode(ids, skip_special_tokens=True) == text
    assert "".join(text[a:b] for a, b in spans) == text and spans[-1] == (len(text), len(text))  # eos: no characters
    flags = tokens_in_spans(spans, phrase_spans(text, ["let me check"]))
    assert tokenizer.decode([t for t, f in zip(ids, flags) if f]) == " Let me check"
    start = text.index("Let")
    assert flags == [a < start + 12 and start < b for a, b in spans]
    with_special = token_char_spans(tokenizer, ids, skip_special_tokens=False)
    assert with_special[-1] == (len(text), len(tokenizer.decode(ids, skip_special_tokens=False)))


def test_token_spans_tile_non_ascii_text(tokenizer):
    """Byte-level BPE splits é, 😀 and 日 over tokens; the spans still tile the decoded text in order."""
    text = "Café 😀 naïve — but wait, 日本 is fine"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    spans = token_char_spans(tokenizer, ids)
    assert len(spans) == len(ids) and spans[0][0] == 0 and spans[-1][1] == len(text)
    assert all(a <= b == c for (a, b), (c, _) in zip(spans, spans[1:]))
    flags = tokens_in_spans(spans, phrase_spans(text, ["but wait"]))
    assert tokenizer.decode([t for t, f in zip(ids, flags) if f]) == " but wait"


def test_semantic_entropy_golden_values():
    assert semantic_entropy([1, 1]) == pytest.approx(math.log(2))
    assert semantic_entropy([4]) == 0.0 and semantic_entropy([]) == 0.0 and semantic_entropy([0, 0]) == 0.0
    assert semantic_entropy(Counter({"a": 1, "b": 1, "c": 2})) == pytest.approx(1.5 * math.log(2))
    assert semantic_entropy({3: 1, 5: 3}) == pytest.approx(-(0.25 * math.log(0.25) + 0.75 * math.log(0.75)))


# --- strategic grams -------------------------------------------------------------------------------------------------

FILLERS = ["red", "blue", "green", "amber", "violet", "ochre", "teal", "coral", "ivory", "olive"]
# 10 responses: "let me check it" in 0-3, its paraphrase "let me verify it" in 4-7, "apples cost three" in 0-5
PARAPHRASED = [("apples cost three. " if i < 6 else "") + f"{FILLERS[i]}s are {FILLERS[i]}. "
               + ("let me check it." if i < 4 else "let me verify it." if i < 8 else "") for i in range(10)]


def concept_embedder(merge_paraphrases: bool):
    """A stub embedder: n-grams with 'check' (and 'verify' when merged) share one vector, 'apples' another; every
    other n-gram gets its own."""
    seen: dict[str, int] = {}

    def embed(grams):
        out = np.zeros((len(grams), 64), dtype=np.float32)
        for i, g in enumerate(grams):
            key = ("check" if "check" in g or (merge_paraphrases and "verify" in g) else "apples" if "apples" in g
                   else g)
            out[i, seen.setdefault(key, len(seen))] = 1.0
        return out

    return embed


def test_document_frequency_counts_the_cluster_not_the_ngram():
    """'apples cost three' is in 6 responses, 'let me check' and 'let me verify' in 4 each. Embedded apart, the apples
    cluster has the highest document frequency; embedded together the paraphrase cluster is in 8 responses and wins."""
    cfg = HicraConfig(planning="strategic_grams", ngram_min=3, ngram_max=3, num_clusters=100, top_frac=0.2)
    apart = StrategicGrams(cfg, concept_embedder(merge_paraphrases=False)).fit(PARAPHRASED)
    assert set(apart.cluster_of) == {"apples cost three"}  # 5 n-grams in >= 2 responses -> 5 clusters, keep 1
    merged = StrategicGrams(replace(cfg, num_clusters=2, top_frac=0.5),  # 2 distinct points: 2 clusters, keep 1
                            concept_embedder(merge_paraphrases=True)).fit(PARAPHRASED)
    assert set(merged.cluster_of) == {"let me check", "me check it", "let me verify", "me verify it"}
    assert len(set(merged.cluster_of.values())) == 1
    text = "So, LET ME verify it now."
    assert [(text[a:b], c) for a, b, c in merged.spans(text)] == [("LET ME verify", merged.cluster_of["let me verify"]),
                                                                  ("ME verify it", merged.cluster_of["me verify it"])]
    assert StrategicGrams(cfg, concept_embedder(False)).fit(["one two three", "four five six"]).cluster_of == {}
    assert [g for g, _, _ in word_ngrams("Let's check x-axis, now!", 2, 3)] == [
        "let's check", "check x-axis", "x-axis now", "let's check x-axis", "check x-axis now"]


@pytest.fixture(scope="module")
def minilm():
    return MiniLMEmbedder()


def test_minilm_embeddings_are_normalised_cached_and_semantic(minilm):
    e = minilm(["let me check the answer", "let me verify the result", "purple elephants dance nightly"])
    assert e.shape == (3, 384) and np.allclose(np.linalg.norm(e, axis=1), 1, atol=1e-5)
    assert e[0] @ e[1] > e[0] @ e[2] + 0.3  # a paraphrase is nearer than an unrelated phrase
    assert "let me check the answer" in minilm.cache and np.array_equal(minilm(["let me check the answer"])[0], e[0])
    assert minilm([]).shape == (0, 384)


def test_strategic_grams_are_the_ones_many_responses_share(minilm):
    topics = ["apples cost three coins", "trains leave the station", "rabbits eat fresh carrots",
              "rivers flow into seas", "pianos have many keys", "volcanoes erupt hot lava", "bakers knead soft dough",
              "comets orbit distant stars", "green turtles swim slowly", "purple elephants dance nightly"]
    texts = [t + (". Let me check the answer." if i < 8 else ".") for i, t in enumerate(topics)]  # in 8 of 10
    cfg = HicraConfig(planning="strategic_grams", num_clusters=20, top_frac=0.1, min_doc_freq=1)  # cluster every n-gram
    grams = StrategicGrams(cfg, minilm).fit(texts)
    shared = {"let me check", "me check the", "check the answer", "let me check the", "me check the answer",
              "let me check the answer"}
    assert shared <= set(grams.cluster_of)
    assert not {"green turtles swim", "purple elephants dance", "turtles swim slowly"} & set(grams.cluster_of)
    default = StrategicGrams(HicraConfig(planning="strategic_grams", num_clusters=20), minilm).fit(texts)
    assert default.cluster_of.keys() <= shared  # by default only n-grams of >= 2 responses are clustered


# --- the detector ----------------------------------------------------------------------------------------------------

def test_detector_masks_metrics_refits_and_state(tokenizer, minilm):
    texts = [f"Step one: add {i} and 2. Let me check the answer. The answer is {i + 2}." for i in range(6)]
    responses = [tokenizer(t, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id] for t in texts]
    cfg = HicraConfig(alpha=0.2, planning="strategic_grams", num_clusters=10, refit_every=3)
    det = PlanningDetector(cfg, seed=0, embed=minilm)
    masks, metrics = det(texts, responses, tokenizer, step=1)
    assert [len(m) for m in masks] == [len(r) for r in responses] and not any(m[-1] for m in masks)  # eos never
    assert 0 < metrics["hicra/planning_frac"] < 1 and metrics["hicra/semantic_entropy"] >= 0
    assert metrics["hicra/num_strategic_grams"] == len(det.grams.cluster_of) > 0
    assert "let me check" in det.grams.cluster_of and det.fitted_at == 1

    restored = PlanningDetector(cfg, seed=0)  # no embedder: the restored grams need none until a refit
    restored.load_state_dict(json.loads(json.dumps(det.state_dict())))
    assert restored(None, responses, tokenizer, step=3) == det(None, responses, tokenizer, step=3)  # no refit before 4
    assert det.fitted_at == 1 and restored.fitted_at == 1

    other = ["Alternatively, we could try a different approach here."] * 3  # refit at step 4 on these texts
    det(other, responses, tokenizer, step=4)
    assert det.fitted_at == 4 and "we could try" in det.grams.cluster_of and "let me check" not in det.grams.cluster_of


def test_phrase_detector_counts_phrases(tokenizer):
    texts = ["Hmm, let me check. But wait, let me check again.", "The sum is 4.", "Alternatively, add them."]
    responses = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    det = PlanningDetector(HicraConfig(alpha=0.2, phrases=["let me check", "but wait", "alternatively"]))
    masks, metrics = det(None, responses, tokenizer, step=1)
    assert [len(m) for m in masks] == [len(r) for r in responses] and not any(masks[1])
    n_flagged = sum(map(sum, masks))
    assert metrics["hicra/planning_frac"] == pytest.approx(n_flagged / sum(map(len, masks)))
    assert metrics["hicra/semantic_entropy"] == pytest.approx(semantic_entropy([2, 1, 1]))  # check x2, wait, altern.
    assert metrics["hicra/num_strategic_grams"] == 0.0 and det.state_dict() == {"fitted_at": None, "cluster_of": None}
    with pytest.raises(ValueError, match="planning"):
        PlanningDetector(HicraConfig(planning="nope"))


@pytest.mark.integration
def test_hicra_run_logs_its_metrics_and_checkpoints_its_grams(ray_cluster, tiny_model_path, tmp_path):
    import json

    from rl.config import load_config
    from rl.train.trainer import train
    from tests.resume_harness import tiny_overrides

    overrides = tiny_overrides(tiny_model_path, tmp_path / "run", steps=2) + [
        "algorithm.hicra.alpha=0.2", "algorithm.hicra.planning=strategic_grams", "algorithm.hicra.num_clusters=8",
        "algorithm.hicra.min_doc_freq=1",  # a random tiny model rarely repeats an n-gram
        "rewards=[{fn: 'tests.reward_fixtures:length_parity'}]", "trainer.eval_at_start=false",
    ]
    train(load_config("recipes/quickstart.yaml", overrides))
    steps = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    hicra = [s for s in steps if "hicra/planning_frac" in s]
    assert len(hicra) == 2 and all(s["hicra/num_strategic_grams"] > 0 for s in hicra)
    state = json.loads((tmp_path / "run" / "checkpoints" / "step_000002" / "trainer_state.json").read_text())
    assert state["hicra"]["fitted_at"] == 1 and state["hicra"]["cluster_of"]
