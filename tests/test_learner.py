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


def grads_after_one_step(path: str, micro: int, agg: str, **learner_kw) -> dict[str, torch.Tensor]:
    cfg = LearnerConfig(micro_batch_size=micro, optim=OptimConfig(lr=1e-3, grad_clip=0.0), num_threads=1, **learner_kw)
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


@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-sum-norm"])
def test_a_token_budget_per_micro_batch_does_not_change_the_update(tiny_model_path, agg):
    full = grads_after_one_step(tiny_model_path, micro=6, agg=agg)
    budget = grads_after_one_step(tiny_model_path, micro=6, agg=agg, max_tokens_per_micro_batch=16)
    for k in full:
        assert torch.allclose(full[k], budget[k], atol=1e-9, rtol=1e-6), k


@pytest.mark.parametrize("share_prompts", [True, False])
def test_micro_batches_keep_to_the_token_budget(tiny_model_path, share_prompts):
    """Rows x longest row <= the budget (a row longer than the budget alone), every row exactly once."""
    cfg = LearnerConfig(micro_batch_size=4, max_tokens_per_micro_batch=20, share_prompts=share_prompts, num_threads=1)
    learner = Learner(tiny_model_path, cfg, PolicyLossConfig(), None, total_steps=1, max_response_tokens=8)
    batch = make_batch()
    micro = learner._micro(batch)
    assert sorted(r for rows, _ in micro for r in rows.tolist()) == list(range(len(batch)))
    for rows, mb in micro:
        assert len(rows) <= 4 and (len(rows) == 1 or mb.input_ids.numel() <= 20), (rows, mb.input_ids.shape)
    assert len(micro) > 2  # the budget, not the 4 rows, split it (6 rows of 6-10 tokens)


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


# -- the multi-epoch / multi-mini-batch update and the entropy bonus, against hand-built expectations -------------------
def _token_logprobs(model, batch: Batch) -> torch.Tensor:
    """log pi(x_t | x_<t) [B, T] at each response token's position (0 elsewhere), from one full forward pass."""
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits[:, :-1].double()
    lp = torch.log_softmax(logits, -1).gather(-1, batch.input_ids[:, 1:, None]).squeeze(-1)
    return torch.cat([torch.zeros(len(lp), 1, dtype=lp.dtype), lp], 1) * batch.response_mask


def _float64_learner(path, **learner_kw) -> Learner:
    cfg = LearnerConfig(micro_batch_size=6, optim=OptimConfig(lr=1e-3, grad_clip=0.0), num_threads=1, **learner_kw)
    learner = Learner(path, cfg, PolicyLossConfig(clip_low=0.2, clip_high=0.2), None, total_steps=1,
                      max_response_tokens=8, seed=3)
    learner.model.to(torch.float64)
    return learner


def test_two_epochs_of_two_mini_batches_equal_a_hand_built_ppo_loop(tiny_model_path):
    """ppo_epochs=2 x mini_batches=2 is: old log-probs computed once, before any step; per epoch a permutation of the
    rows from the learner's own generator (seeded with the run's seed), cut into 2 mini-batches; per mini-batch one
    AdamW step on L = sum_t max(-A rho, -A clip(rho, 0.8, 1.2)) / (its response tokens), rho = exp(logp - logp_old).
    The same loop written here with plain torch on a copy of the model gives the same weights."""
    import copy

    learner = _float64_learner(tiny_model_path, ppo_epochs=2, mini_batches=2)
    model = copy.deepcopy(learner.model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    batch = make_batch()
    with torch.no_grad():
        old = _token_logprobs(model, batch)
    generator = torch.Generator().manual_seed(3)
    for _ in range(2):
        for rows in torch.randperm(len(batch), generator=generator).chunk(2):
            mask, adv = batch.response_mask[rows].double(), batch.advantages[rows].double()
            rho = torch.exp(_token_logprobs(model, batch)[rows] - old[rows])
            loss = (torch.max(-adv * rho, -adv * rho.clamp(0.8, 1.2)) * mask).sum() / mask.sum()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    before = {k: v.clone() for k, v in learner.model.state_dict().items()}
    metrics = learner.update(batch)
    assert metrics["clip_frac"] > 0  # lr 1e-3 moves rho out of [0.8, 1.2] on some tokens by the last mini-batch
    # the learner computes log-probs in float32 (rl/core/entropy.py): equal up to that rounding, which Adam's
    # normalised steps carry into the weights at about 0.2% of a step here; another permutation of the rows gives
    # differences of more than 100% of a step
    got, want = learner.model.state_dict(), model.state_dict()
    for k in want:
        moved = float((want[k] - before[k]).abs().max())
        assert moved > 0 and float((got[k] - want[k]).abs().max()) <= 0.02 * moved, k


def test_one_epoch_one_mini_batch_equals_the_update_from_recomputed_old_logprobs(tiny_model_path):
    """The on-policy path (ppo_epochs = mini_batches = 1: rho = exp(logp - sg(logp)) = 1) takes the same step as the
    general one given old log-probs computed from the same weights."""
    on_policy, general = _float64_learner(tiny_model_path), _float64_learner(tiny_model_path)
    batch = make_batch()
    on_policy.update(batch)
    batch = make_batch()
    batch.old_logprobs = general.compute_logprobs(batch)
    general.update(batch)
    a, b = on_policy.model.state_dict(), general.model.state_dict()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-12, rtol=1e-10), k


def _grads_of_the_step(learner: Learner, batch: Batch) -> dict[str, torch.Tensor]:
    """The gradient the learner's optimizer step receives (recorded just before AdamW applies it)."""
    seen = {}
    step = learner.optimizer.step

    def record(*args, **kwargs):
        seen.update({n: p.grad.detach().clone() for n, p in learner.model.named_parameters() if p.grad is not None})
        return step(*args, **kwargs)

    learner.optimizer.step = record
    learner.update(batch)
    return seen


def test_the_entropy_bonus_adds_minus_coef_times_the_gradient_of_the_mean_token_entropy(tiny_model_path):
    """learner.entropy_coef = c: L = L_pg - c * sum_t H_t / N over the N response tokens, H_t the entropy of the full
    next-token distribution, so grad(c) - grad(0) = -c * grad(sum_t H_t / N), computed here from the logits."""
    import copy

    c = 0.5
    plain, bonus = _float64_learner(tiny_model_path), _float64_learner(tiny_model_path, entropy_coef=c)
    model = copy.deepcopy(plain.model)
    batch = make_batch()
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits[:, :-1].double()
    logp = torch.log_softmax(logits, -1)
    entropy = -(logp.exp() * logp).sum(-1)  # [B, T-1]: of the distribution that predicts token t+1
    mask = batch.response_mask[:, 1:].double()
    (entropy * mask).sum().div(mask.sum()).backward()
    g_plain, g_bonus = _grads_of_the_step(plain, batch), _grads_of_the_step(bonus, make_batch())
    assert g_plain.keys() == g_bonus.keys() and g_plain
    for name, p in model.named_parameters():
        # equal up to the float32 rounding of the learner's entropies (rl/core/entropy.py): < 1e-4 of the term
        want = -c * p.grad
        assert float((g_bonus[name] - g_plain[name] - want).abs().max()) <= 1e-3 * float(want.abs().max()), name
