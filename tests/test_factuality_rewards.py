"""The factuality rewards' pure pieces: answer matching, refusals, KnowRL's format, facts and fact score (golden
values computed by hand beside each test, from the formula it names), and the whole KnowRL reward on a small knowledge source."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from rewards.knowrl import FactChecker, KnowRL, LexicalVerifier, atomic_facts, fact_score, knowrl_format_ok, page_titles
from rewards.qa import answer_correct, gold_aliases, is_refusal, normalize_answer, tag_content


@pytest.mark.parametrize("pred, gold, judge, ok", [
    ("Clive Anderson", "Clive Anderson", "exact", True),
    ("clive anderson.", "Clive Anderson", "exact", True),
    ("It was Clive Anderson", "Clive Anderson", "exact", False),
    ("It was Clive Anderson", "Clive Anderson", "contains", True),
    ("3 seasons", "three seasons", "contains", True),
    ("The Beatles", "Beatles", "exact", True),  # articles dropped
    ("Anderson", "Clive Anderson", "contains", False),  # a part of the gold is not the gold
    ("Clive Andersonville", "Clive Anderson", "contains", False),  # whole words only
    ("", "x", "contains", False), (None, "x", "contains", False),
    ("Paris", ["Lyon", "Paris"], "exact", True), ("Paris", "Lyon; Paris", "exact", True),
    ("a very long answer that happens to mention Paris somewhere among many other words here", "Paris", "contains",
     False),  # at most max_extra_words more than the gold
])
def test_answer_correct(pred, gold, judge, ok):
    assert answer_correct(pred, gold, judge) is ok


def test_normalisation_and_aliases():
    assert normalize_answer("The  Twenty-One  Pilots!") == "20 1 pilots"
    assert normalize_answer("Don’t Stop") == "dont stop"
    assert gold_aliases("a; b | c") == ["a", "b", "c"] and gold_aliases(None) == [] and gold_aliases(["x", ""]) == ["x"]


@pytest.mark.parametrize("text, refused", [
    ("I don't know.", True), ("I DON’T KNOW", True), ("I'm not sure about this", True), ("unknown", True),
    ("The Unknown Soldier", False), ("Clive Anderson", False), ("", False), (None, False),
])
def test_refusals(text, refused):
    assert is_refusal(text) is refused


def test_tags_and_format():
    good = "<think>Paris is in France.</think><answer>Paris</answer>"
    assert knowrl_format_ok(good) and knowrl_format_ok(f"  {good}\n")
    for bad in ["Paris", "<answer>Paris</answer>", "<think>x</think>", good + " extra", "pre " + good,
                "<think>a</think><answer>b</answer><answer>c</answer>", "<think><think>a</think><answer>b</answer>",
                "", None]:
        assert not knowrl_format_ok(bad), bad
    assert tag_content(good, "answer") == "Paris" and tag_content("<answer> </answer>", "answer") == ""
    assert tag_content("<answer>unclosed", "answer") is None and tag_content(None, "answer") is None
    assert tag_content("<answer>a</answer> then <answer>b</answer>", "answer") == "b"  # the last one


def test_atomic_facts():
    text = ("Hinterland is a Welsh crime drama; it premiered in 2013. Was it on Netflix? It ran for three series, "
            "and each series had four episodes.\n- Tom Mathias plays the lead\nOk.")
    assert atomic_facts(text) == ["Hinterland is a Welsh crime drama", "it premiered in 2013",
                                  "It ran for three series", "each series had four episodes",
                                  "Tom Mathias plays the lead"]
    assert atomic_facts("") == [] and atomic_facts(None) == [] and len(atomic_facts("a b c. " * 50, max_facts=7)) == 7


def test_fact_score_golden_values():
    # KnowRL's fact score: mean(supported) * (1 if n > 10 else exp(1 - 10 / n)); 4 of 5 supported: 0.8 exp(-1).
    assert fact_score([True, True, True, True, False]) == pytest.approx(0.8 * math.exp(-1))  # 0.2943
    assert fact_score([True, True, True, True, False]) == pytest.approx(0.2943, abs=1e-4)
    assert fact_score([]) == 0.0
    assert fact_score([True] * 10) == pytest.approx(1.0)  # n = 10: exp(0)
    assert fact_score([True] * 11 + [False]) == pytest.approx(11 / 12)  # n > 10: no length penalty
    assert fact_score([True]) == pytest.approx(math.exp(-9))


def test_lexical_verifier():
    v = LexicalVerifier()
    probs = v(["Hinterland has three seasons on Netflix", "Hinterland has five seasons", "the of and"],
              ["Q: How many seasons of Hinterland are on Netflix? A: three seasons."] * 3)
    assert probs[0] == pytest.approx(1.0) and probs[1] == pytest.approx(2 / 3) and probs[2] == 0.0


def test_knowrl_without_fact_score():
    r = KnowRL(fact_score_when="never")
    golds = ["Clive Anderson"] * 5
    out = r(None, ["<think>hmm</think><answer>Clive Anderson</answer>",  # 1 + 2
                   "<think>hmm</think><answer>I don't know</answer>",  # 1 + 1
                   "<think>hmm</think><answer>Drew Carey</answer>",  # 1 - 1
                   "Clive Anderson",  # no format, no answer tag: -1 - 1
                   "<think>hmm</think><answer></answer>"], golds, title=[None] * 5)  # empty answer: wrong
    assert [o["reward"] for o in out] == [3.0, 2.0, 0.0, -2.0, 0.0]
    assert [o["refused"] for o in out] == [0.0, 1.0, 0.0, 0.0, 0.0] and out[0]["fact_score"] is None
    with pytest.raises(ValueError, match="fact_score_when"):
        KnowRL(fact_score_when="sometimes")
    with pytest.raises(ValueError, match="kwargs.knowledge"):
        KnowRL()  # the fact score needs a knowledge source


def test_page_titles():
    assert page_titles("A; B ;;C") == ["A", "B", "C"] and page_titles(None) == [] and page_titles(["x", " "]) == ["x"]


def test_final_answer_and_confidence():
    from rewards.qa import final_answer, parse_confidence

    assert final_answer("<answer>Paris</answer>") == "Paris"
    assert final_answer("Thinking...\nThe answer is: Paris\nConfidence: 90%") == "Paris"
    assert final_answer("Paris\nConfidence: 0.9") == "Paris" and final_answer("  ") is None and final_answer(None) is None
    assert parse_confidence("Confidence: 80%") == 0.8 and parse_confidence("confidence = 0.35") == 0.35
    assert parse_confidence("Confidence: 70") == 0.7 and parse_confidence("no number") is None
    assert parse_confidence("Confidence: 250%") is None and parse_confidence(None) is None


def test_abstention_reward():
    from rewards.abstention import abstention_reward

    out = abstention_reward(None, ["<answer>Paris</answer> Confidence: 90%", "<answer>I don't know</answer>",
                                   "<answer>Lyon</answer>", ""], ["Paris"] * 4)
    assert [o["reward"] for o in out] == [1.0, 0.0, -1.0, -1.0] and out[0]["confidence"] == 0.9
    assert [o["refused"] for o in out] == [0.0, 1.0, 0.0, 0.0]
    assert abstention_reward(None, ["I don't know"], ["x"], correct=2.0, abstain=0.5, wrong=0.0)[0]["reward"] == 0.5
    with pytest.raises(ValueError, match="correct > abstain > wrong"):
        abstention_reward(None, ["x"], ["x"], abstain=1.5)


def test_calibration_metrics_by_hand():
    from rl.core.calibration import auroc, brier_score, calibration_metrics, expected_calibration_error

    conf, ok = [0.9, 0.9, 0.2, 0.6], [True, False, False, True]
    # bins of 0.1: {0.9: acc 0.5, conf 0.9, weight 0.5}, {0.2: acc 0, w 0.25}, {0.6: acc 1, w 0.25}
    assert expected_calibration_error(conf, ok) == pytest.approx(0.5 * 0.4 + 0.25 * 0.2 + 0.25 * 0.4)
    assert brier_score(conf, ok) == pytest.approx((0.01 + 0.81 + 0.04 + 0.16) / 4)
    assert auroc(conf, ok) == pytest.approx((0.5 + 1.0 + 0.0 + 1.0) / 4)  # pairs (correct, wrong), ties 1/2
    assert auroc([0.5, 0.6], [True, True]) is None and expected_calibration_error([], []) == 0.0
    assert expected_calibration_error([1.0, 0.0], [True, False]) == 0.0  # perfect, with conf = 1.0 in the last bin
    m = calibration_metrics([0.9, None, 0.1, None], [True, False, False, False], [False, True, False, False])
    assert m["idk_rate"] == 0.25 and m["confidence_missing"] == 0.5 and m["brier"] == pytest.approx(0.01)


FIXTURE = "tests/data/knowledge_fixture.jsonl"


def test_knowrl_fact_score_on_a_knowledge_source(tmp_path):
    """A wrong answer whose thinking states 5 facts of which the Paris page supports 4: 1 - 1 + 0.8 e^-1."""
    knowledge = {"passages": FIXTURE, "cache_dir": str(tmp_path)}
    thinking = ("Paris is the capital of France. Paris lies on the river Seine. The Eiffel Tower was completed in 1889. "
                "The Eiffel Tower stands on the Champ de Mars. Paris was founded by the Romans in 1066.")
    completion = f"<think>{thinking}</think><answer>Lyon</answer>"
    r = KnowRL(knowledge=knowledge)
    (out,) = r(None, [completion], ["Paris"], title=["Paris"])
    assert out["facts"] == 5 and out["supported"] == pytest.approx(0.8) and out["correct"] == 0.0
    assert out["fact_score"] == pytest.approx(0.2943, abs=1e-4) and out["reward"] == pytest.approx(-0.7057 + 1.0, abs=1e-4)
    # the authors' code: no fact score for a correct answer or a refusal; the paper: always
    right = completion.replace("Lyon", "Paris")
    assert r(None, [right], ["Paris"], title=["Paris"])[0]["fact_score"] is None
    always = KnowRL(knowledge=knowledge, fact_score_when="always")(None, [right], ["Paris"], title=["Paris"])[0]
    assert always["reward"] == pytest.approx(3.0 + 0.2943, abs=1e-4)
    # a page that is not in the store supports nothing; no page at all searches the whole store
    assert r(None, [completion], ["Paris"], title=["No Such Page"])[0]["fact_score"] == 0.0
    assert r(None, [completion], ["Paris"], title=[None])[0]["fact_score"] == pytest.approx(0.2943, abs=1e-4)


@pytest.mark.parametrize("completion", ["", "<think></think><answer></answer>", "<think>" + "word " * 20000,
                                        "<answer>\u00e9\u00e8\u4e2d\u6587 \U0001F600</answer>", "<think>a</think><answer>",
                                        "</think></answer><think>", None])
def test_knowrl_defined_on_malformed_output(tmp_path, completion):
    r = KnowRL(knowledge={"passages": FIXTURE, "cache_dir": str(tmp_path)})
    (out,) = r(None, [completion or ""], ["Paris"], title=["Paris; Mount Everest"])
    assert math.isfinite(out["reward"]) and out["format"] in (-1.0, 1.0)


def test_ikea_reward_golden_values():
    from rewards.ikea import ikea_reward, ikea_value

    # IKEA's reward: correct -> 1 + 0.6 (1 - min(searches, 3) / 3), so 1.6, 1.4, 1.2, 1.0, 1.0 for 0, 1, 2, 3, 5
    # searches; wrong -> 0.05 with a search, 0 without; bad format -> -1.

    assert [ikea_value(True, rt, True) for rt in (0, 1, 2, 3, 5)] == pytest.approx([1.6, 1.4, 1.2, 1.0, 1.0])
    assert ikea_value(False, 1, True) == 0.05 and ikea_value(False, 0, True) == 0.0 and ikea_value(True, 0, False) == -1
    info = "\n<information>\n(1) Q: who? A: <answer>Decoy</answer> </search>\n</information>\n"
    completions = [
        "<answer>Paris</answer>",  # 1.6
        "<search>capital of France</search>" + info + "<answer>Paris</answer>",  # 1.4: the info's tags do not count
        "<search>a</search>" + info + "<search>b</search>" + info + "<answer>Lyon</answer>",  # wrong, searched
        "<answer>Lyon</answer>",  # wrong, no search
        "<search>unclosed <answer>Paris</answer>",  # format
        "Paris",  # no answer tag
        "<search>a</search>" + info,  # searched, never answered
    ]
    out = ikea_reward(None, completions, ["Paris"] * len(completions))
    assert [o["reward"] for o in out] == pytest.approx([1.6, 1.4, 0.05, 0.0, -1.0, -1.0, -1.0])
    assert [o["searches"] for o in out] == [0, 1, 2, 0, 0, 0, 1]


def test_klcf_recall_precision_and_total(tmp_path):
    from rewards.klcf import KLCF, klcf_recall

    assert klcf_recall(3, 1, 4) == 0.5 and klcf_recall(0, 0, 0) == 0.0 and klcf_recall(0, 2, 2) == -1.0
    r = KLCF(knowledge={"passages": FIXTURE, "cache_dir": str(tmp_path)})
    checklist = ["Paris is the capital of France", "The Eiffel Tower was completed in 1889",
                 "Paris lies on the river Seine"]
    completion = ("<think>Paris is the capital of France. The Eiffel Tower was completed in 1889. "
                  "Paris was founded by the Romans in 1066.</think><answer>Paris</answer>")
    (out,) = r(None, [completion], ["Paris"], checklist=[checklist], title=["Paris"])
    assert out["recall"] == pytest.approx(2 / 3) and out["claims"] == 3 and out["correct"] == 1.0
    # precision: the mean of the best lexical support of each claim (1, 1, and 1/4 for the Roman founding)
    assert out["precision"] == pytest.approx((1 + 1 + 0.25) / 3)
    assert out["reward"] == pytest.approx(2 / 3 + 0.75 + 0.1)
    (empty,) = r(None, [""], ["Paris"], checklist=[[]], title=[None])
    assert empty["reward"] == 0.0 and empty["recall"] == 0.0 and empty["precision"] == 0.0
    # the checklists file of klcf-prepare, by prompt
    (tmp_path / "c.jsonl").write_text(json.dumps({"prompt": "q?", "checklist": checklist}) + "\n")
    from_file = KLCF(knowledge={"passages": FIXTURE, "cache_dir": str(tmp_path)}, checklists=str(tmp_path / "c.jsonl"))
    assert from_file(["q?"], [completion], ["Paris"], title=["Paris"])[0] == out
    assert from_file(["other"], [completion], ["Paris"], title=["Paris"])[0]["checklist"] == 0
    (tmp_path / "bad.jsonl").write_text('{"prompt": "q?"}\n')
    with pytest.raises(ValueError, match="bad.jsonl' line 1"):
        KLCF(knowledge={"passages": FIXTURE, "cache_dir": str(tmp_path)}, checklists=str(tmp_path / "bad.jsonl"))


def test_armed_reshapes_around_a_threshold_that_moves_between_steps():
    from rewards.armed import ARMed, reshape

    assert reshape(0.7, 0.7, 10.0) == 0.5 and reshape(0.8, 0.7, 10.0) == pytest.approx(1 / (1 + math.exp(-1)))
    r = ARMed(k=10.0, quantile=0.5)  # the real all-MiniLM-L6-v2 embeddings
    golds = ["Daphne du Maurier"] * 3
    first = r(None, ["<answer>Daphne du Maurier</answer>", "<answer>du Maurier</answer>", "<answer>a potato</answer>"],
              golds, trainer_step=[1] * 3)
    s = [o["semantic"] for o in first]
    assert s[0] == pytest.approx(1.0, abs=1e-4) and s[0] > s[1] > s[2]  # the semantic score orders the answers
    assert [o["tau"] for o in first] == [0.5] * 3 and [o["correct"] for o in first] == [1.0, 0.0, 0.0]
    assert first[1]["reward"] == pytest.approx(reshape(s[1], 0.5, 10.0))
    again = r(None, ["<answer>du Maurier</answer>"], golds[:1], trainer_step=[1])  # same step: tau unchanged
    assert again[0]["tau"] == 0.5
    state = r.state_dict()
    nxt = r(None, ["<answer>du Maurier</answer>"], golds[:1], trainer_step=[2])[0]  # step 2: tau = median of step 1
    assert nxt["tau"] == pytest.approx(float(np.median(s + [again[0]["semantic"]])))
    other = ARMed(k=10.0, quantile=0.5, embed=r.embed)
    other.load_state_dict(state)  # a resumed run scores the same
    assert other(None, ["<answer>du Maurier</answer>"], golds[:1], trainer_step=[2])[0] == nxt


@pytest.mark.parametrize("reply,verdict", [("Yes.", True), ("no, it is not", False), ("  YES", True), ("Nope", None),
                                           ("yesterday", None), ("", None), ("The answer: no. Yes would be wrong", False)])
def test_llm_yes_no_replies_are_parsed_strictly(reply, verdict):
    from rewards.judge import parse_yes_no

    assert parse_yes_no(reply) is verdict


def test_llm_fact_lines_drop_bullets_numbers_and_fragments():
    from rewards.judge import parse_fact_lines

    reply = "1. Paris is the capital of France.\n- The Seine flows through Paris\n\n* ok\n2) Rome is in Italy."
    assert parse_fact_lines(reply) == ["Paris is the capital of France.", "The Seine flows through Paris",
                                       "Rome is in Italy."]
    assert parse_fact_lines(reply, max_facts=1) == ["Paris is the capital of France."]


def test_fact_checking_many_answers_at_once_equals_one_by_one(tmp_path):
    checker = FactChecker({"passages": FIXTURE, "cache_dir": str(tmp_path)})
    facts = [["Paris is the capital of France", "The Eiffel Tower was completed in 1889"], [],
             ["Mount Everest is the highest mountain"]]
    titles = [["Paris"], ["Paris"], []]
    many = checker.probabilities_many(facts, titles)
    assert [m.tolist() for m in many] == [checker.probabilities(f, t).tolist() for f, t in zip(facts, titles)]


@pytest.mark.parametrize("kwargs", [{"judge": "llm"}, {"verifier": "llm"}, {"fact_extraction": "llm"}])
def test_llm_options_without_a_model_fail_with_the_key(kwargs, tmp_path):
    with pytest.raises(ValueError, match="needs kwargs.llm"):
        KnowRL(knowledge={"passages": FIXTURE, "cache_dir": str(tmp_path)}, **kwargs)
