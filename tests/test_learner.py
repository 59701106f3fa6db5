"""The learner on a real (tiny) HF model: micro-batching leaves the update unchanged; a step moves the policy."""

from __future__ import annotations

import pytest
import torch

from rl.core.batch import Batch
from rl.config.algorithm import KLConfig, PolicyLossConfig
from rl.train.learner import Learner
from rl.config.learner import LearnerConfig, OptimConfig


def make_batch(seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(5, 400, (int(n),), generator=g).tolist() for n in (3, 5, 4, 6, 2, 5)]
    responses = [torch.randint(5, 400, (int(n),), generator=g).tolist() for n in (4, 2, 6, 3, 5, 1)]
    logprobs = [[-1.0] * len(r) for r in responses]
    batch = Batch.from_sequences(prompts, responses, logprobs, [0, 0, 0, 1, 1, 1], pad_token_id=0)
    batch.advantages = torch.tensor([1.0, -0.5, 0.3, -1.0, 0.7, 0.2]).unsqueeze(-1) * batch.response_mask
    return batch


def grads_after_one_step(path: str, micro: int, agg: str) -> dict[str, torch.Tensor]:
    cfg = LearnerConfig(micro_batch_size=micro, optim=OptimConfig(lr=1e-3, grad_clip=0.0), num_threads=1)
    learner = Learner(path, cfg, PolicyLossConfig(agg_mode=agg), None, total_steps=1, max_response_tokens=8)
    learner.model.to(torch.float64)
    before = {k: v.clone() for k, v in learner.model.state_dict().items()}
    metrics = learner.update(make_batch())
    assert metrics["skipped_update"] == 0.0 and metrics["grad_norm"] > 0
    return {k: learner.model.state_dict()[k] - before[k] for k in before}


@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"])
def test_micro_batching_does_not_change_the_update(tiny_model_path, agg):
    full = grads_after_one_step(tiny_model_path, micro=6, agg=agg)
    split = grads_after_one_step(tiny_model_path, micro=2, agg=agg)
    moved = sum(float(d.abs().sum()) for d in full.values())
    assert moved > 0
    for k in full:
        assert torch.allclose(full[k], split[k], atol=1e-9, rtol=1e-6), k


def test_positive_advantage_raises_its_tokens_logprob(tiny_model_path):
    cfg = LearnerConfig(micro_batch_size=4, optim=OptimConfig(lr=1e-2), num_threads=1)
    learner = Learner(tiny_model_path, cfg, PolicyLossConfig(), None, total_steps=3, max_response_tokens=8)
    batch = make_batch()
    batch.advantages = batch.response_mask.clone()  # every response token is good
    before = learner.compute_logprobs(batch)
    for _ in range(3):
        learner.update(batch)
    after = learner.compute_logprobs(batch)
    m = batch.response_mask.bool()
    assert (after[m] - before[m]).mean() > 0


def test_reference_model_only_with_kl(tiny_model_path):
    cfg = LearnerConfig(num_threads=1)
    plain = Learner(tiny_model_path, cfg, PolicyLossConfig(), None, total_steps=1, max_response_tokens=8)
    assert plain.ref_model is None
    with_kl = Learner(tiny_model_path, cfg, PolicyLossConfig(), KLConfig(coef=0.1), total_steps=1, max_response_tokens=8)
    metrics = with_kl.update(make_batch())
    assert with_kl.ref_model is not None and "kl" in metrics
    assert metrics["kl"] == pytest.approx(0.0, abs=1e-6)  # first step: policy == reference on these tokens


def test_bf16_autocast_logprobs_stay_close_to_float32(tiny_model_path):
    batch = make_batch()
    exact = Learner(tiny_model_path, LearnerConfig(num_threads=1), PolicyLossConfig(), None, 1, 8)
    mixed = Learner(tiny_model_path, LearnerConfig(num_threads=1, mixed_precision="bfloat16"), PolicyLossConfig(),
                    None, 1, 8)
    m = batch.response_mask.bool()
    a, b = exact.compute_logprobs(batch)[m], mixed.compute_logprobs(batch)[m]
    assert not torch.equal(a, b)  # autocast really ran in bf16
    assert (a - b).abs().max() < 0.1
    assert mixed.update(batch)["skipped_update"] == 0.0
    assert next(mixed.model.parameters()).dtype == torch.float32  # master weights stay float32


def test_response_only_output_layer_matches_the_full_forward(tiny_model_path):
    """The learner runs the output layer only where a response token is predicted; the numbers equal a full pass."""
    learner = Learner(tiny_model_path, LearnerConfig(num_threads=1), PolicyLossConfig(), None, 1, 8)
    batch = make_batch()
    with torch.no_grad():
        logits = learner.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits[:, :-1]
    full = torch.log_softmax(logits.float(), -1).gather(-1, batch.input_ids[:, 1:, None]).squeeze(-1)
    m = batch.response_mask[:, 1:].bool()
    got = learner.compute_logprobs(batch)
    assert torch.allclose(got[:, 1:][m], full[m], atol=1e-5)
    assert (got[:, 1:][~m] == 0).all()
