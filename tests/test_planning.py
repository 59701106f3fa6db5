"""HICRA: the advantage boost (golden values, alpha = 0, the tensor really changes), planning-token detection from
phrases and from strategic grams (real SmolLM2 tokenizer, real MiniLM embeddings), semantic entropy."""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch

from rl.planning import (
    HicraConfig, PlanningDetector, StrategicGrams, dense_mask, hicra_advantages, minilm_embedder, ngrams, phrase_spans,
    semantic_entropy, token_char_spans, tokens_in_spans,
)


def test_boost_golden_values_and_alpha_zero():
    a = torch.tensor([[1.0, -1.0, 0.5, -2.0]])
    m = torch.tensor([[1.0, 1.0, 0.0, 1.0]])
    assert hicra_advantages(a, m, 0.2)[0].tolist() == pytest.approx([1.2, -0.8, 0.5, -1.6])
    assert torch.equal(hicra_advantages(a, m, 0.0), a)


def test_boost_changes_the_tensor_the_trainer_uses_and_not_its_input():
    """The double-indexing trap (x[m1][m2] *= c edits a copy): the result must differ exactly on planning tokens."""
    response_mask = torch.tensor([[0, 0, 1, 1, 1, 0], [0, 1, 1, 0, 0, 0]], dtype=torch.float32)
    adv = torch.tensor([[0, 0, 2.0, 2.0, 2.0, 0], [0, -1.0, -1.0, 0, 0, 0]])
    before = adv.clone()
    mask = dense_mask(response_mask, [[False, True, False], [True, True]])
    out = hicra_advantages(adv, mask, 0.5)
    assert torch.equal(adv, before)  # input untouched
    changed = (out != adv).nonzero().tolist()
    assert changed == [[0, 3], [1, 1], [1, 2]]
    assert out[0, 3] == 3.0 and out[1, 1] == -0.5
    with pytest.raises(ValueError, match="row 1"):
        dense_mask(response_mask, [[False, True, False], [True]])


def test_phrase_spans_are_case_insensitive_at_word_boundaries():
    text = "But wait, let me check. But waiting is fine; LET ME CHECK again."
    spans = phrase_spans(text, ["but wait", "let me check"])
    assert sorted(text[a:b] for a, b, _ in spans) == ["But wait", "LET ME CHECK", "let me check"]


def test_semantic_entropy_golden_values():
    assert semantic_entropy([1, 1]) == pytest.approx(math.log(2))
    assert semantic_entropy([4]) == 0.0 and semantic_entropy([]) == 0.0
    assert semantic_entropy(Counter({"a": 1, "b": 1, "c": 2})) == pytest.approx(1.5 * math.log(2))


@pytest.fixture(scope="module")
def tokenizer(smollm2_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_path)


def test_phrase_maps_to_exactly_the_tokens_covering_it(tokenizer):
    text = "First, add the apples. Let me check the sum: 3 + 4 = 7."
    ids = tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    full, spans = token_char_spans(tokenizer, ids)
    assert full == text and len(spans) == len(ids) and spans[-1][0] == spans[-1][1]  # eos: no characters
    flags = tokens_in_spans(spans, phrase_spans(full, ["let me check"]))
    picked = tokenizer.decode([t for t, f in zip(ids, flags) if f])
    assert picked.strip() == "Let me check"


def test_strategic_grams_are_the_ones_many_responses_share():
    topics = ["apples cost three coins", "trains leave the station", "rabbits eat fresh carrots", "rivers flow into seas",
              "pianos have many keys", "volcanoes erupt hot lava", "bakers knead soft dough", "comets orbit distant stars",
              "green turtles swim slowly", "purple elephants dance nightly"]
    texts = [t + (". Let me check the answer." if i < 8 else ".") for i, t in enumerate(topics)]
    cfg = HicraConfig(planning="strategic_grams", num_clusters=20, top_frac=0.1, ngram_min=3, ngram_max=3)
    grams = StrategicGrams(cfg, minilm_embedder(), seed=0).fit(texts)
    assert {"let me check", "me check the", "check the answer"} & set(grams.cluster_of)  # in 8 of 10 responses
    assert "green turtles swim" not in grams.cluster_of and "purple elephants dance" not in grams.cluster_of
    assert {g for g, _, _ in ngrams("Let me check it", 3, 3)} == {"let me check", "me check it"}


def test_detector_flags_one_entry_per_token_and_keeps_its_grams_across_resume(tokenizer):
    texts = [f"Step one: add {i} and 2. Let me check the answer. The answer is {i + 2}." for i in range(6)]
    responses = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    cfg = HicraConfig(alpha=0.2, planning="strategic_grams", num_clusters=10, refit_every=3)
    det = PlanningDetector(cfg, seed=0)
    masks, metrics = det(responses, tokenizer, step=1)
    assert [len(m) for m in masks] == [len(r) for r in responses]
    assert 0 < metrics["hicra/planning_frac"] < 1 and metrics["hicra/semantic_entropy"] >= 0
    assert metrics["hicra/num_strategic_grams"] > 0
    restored = PlanningDetector(cfg, seed=0)
    restored.load_state_dict(det.state_dict())
    assert restored(responses, tokenizer, step=2)[0] == det(responses, tokenizer, step=2)[0]  # no refit before step 4
    phrases = PlanningDetector(HicraConfig(alpha=0.2), seed=0)
    pmasks, pm = phrases(responses, tokenizer, step=1)
    assert any(any(m) for m in pmasks) and pm["hicra/num_strategic_grams"] == 0.0


@pytest.mark.integration
def test_hicra_run_logs_its_metrics_and_checkpoints_its_grams(ray_cluster, tiny_model_path, tmp_path):
    import json

    from rl.config import load_config
    from rl.trainer import train
    from tests.resume_harness import tiny_overrides

    overrides = tiny_overrides(tiny_model_path, tmp_path / "run", steps=2) + [
        "algorithm.hicra.alpha=0.2", "algorithm.hicra.planning=strategic_grams", "algorithm.hicra.num_clusters=8",
        "rewards=[{fn: 'tests.reward_fixtures:length_parity'}]", "trainer.eval_at_start=false",
    ]
    train(load_config("recipes/quickstart.yaml", overrides))
    steps = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    hicra = [s for s in steps if "hicra/planning_frac" in s]
    assert len(hicra) == 2 and all(s["hicra/num_strategic_grams"] > 0 for s in hicra)
    state = json.loads((tmp_path / "run" / "checkpoints" / "step_000002" / "trainer_state.json").read_text())
    assert state["hicra"]["fitted_at"] == 1 and state["hicra"]["cluster_of"]
