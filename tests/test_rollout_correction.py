"""Rollout correction (TIS, MIS, IcePop) against hand-computed values, and in the learner's update."""

from __future__ import annotations

import math

import pytest
import torch

from rl.config import ConfigError
from rl.config.algorithm import PolicyLossConfig, RolloutCorrectionConfig
from rl.config.learner import LearnerConfig, OptimConfig
from rl.core.rollout_correction import mismatch_sums, rollout_correction
from rl.train.learner import Learner
from tests.test_learner import make_batch

LN2 = math.log(2)
# row 0: rho = (2, 1/2, 4) on three loss tokens; row 1: rho = (1, 3) and a padding token (masked, rho 100)
OLD = torch.tensor([[LN2, -LN2, 2 * LN2], [0.0, math.log(3), math.log(100)]])
ROLLOUT = torch.zeros(2, 3)
MASK = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])


def test_tis_truncates_each_token_at_the_cap():
    c = rollout_correction(OLD, ROLLOUT, MASK, "tis", cap=2.0)
    assert torch.allclose(c.weights, torch.tensor([[2.0, 0.5, 2.0], [1.0, 2.0, 0.0]]))
    assert c.keep.tolist() == [[1, 1, 1], [1, 1, 1]]
    assert c.truncated.tolist() == [[0, 0, 1], [0, 1, 0]]  # 2 is not cut, 4 and 3 are; padding is no token


def test_seq_tis_weights_a_row_by_its_truncated_sequence_ratio():
    # rho_0 = 2 * 1/2 * 4 = 4 -> 3 (cap); rho_1 = 1 * 3 = 3 (the padding token is not in the product)
    c = rollout_correction(OLD, ROLLOUT, MASK, "seq_tis", cap=3.5)
    assert torch.allclose(c.weights, torch.tensor([[3.5, 3.5, 3.5], [3.0, 3.0, 0.0]]))
    assert c.truncated.tolist() == [[1, 1, 1], [0, 0, 0]] and bool((c.keep == 1).all())


def test_mis_rejects_rows_whose_sequence_ratio_leaves_the_band():
    c = rollout_correction(OLD, ROLLOUT, MASK, "mis", cap=3.5)  # rho_0 = 4 > 3.5: row 0 out; rho_1 = 3 kept
    assert c.keep.tolist() == [[0, 0, 0], [1, 1, 1]]
    assert torch.allclose(c.weights, torch.tensor([[0.0, 0.0, 0.0], [3.0, 3.0, 0.0]]))
    low = rollout_correction(OLD, ROLLOUT, MASK, "mis", cap=5.0, low=3.5)  # now row 1 is below the band
    assert low.keep.tolist() == [[1, 1, 1], [0, 0, 1]]  # (the padding token stays 1: nothing to reject there)
    assert torch.allclose(low.weights, torch.tensor([[4.0, 4.0, 4.0], [0.0, 0.0, 0.0]]))


def test_icepop_rejects_tokens_outside_the_band_and_keeps_the_ratio_of_the_others():
    c = rollout_correction(OLD, ROLLOUT, MASK, "icepop", cap=3.0, low=0.75)  # 1/2 < 0.75 and 4 > 3: rejected
    assert c.keep.tolist() == [[1, 0, 0], [1, 1, 1]]
    assert torch.allclose(c.weights, torch.tensor([[2.0, 0.0, 0.0], [1.0, 3.0, 0.0]]))
    assert not c.truncated.any()


def test_equal_log_probs_weigh_one_and_show_no_mismatch():
    for name in ("tis", "seq_tis", "mis", "icepop", "none"):
        c = rollout_correction(OLD, OLD, MASK, name, cap=2.0)
        assert torch.equal(c.weights, MASK) and bool((c.keep == 1).all()), name
    assert mismatch_sums(OLD, OLD, MASK) == {"abs_log_ratio": 0.0, "kl": 0.0}


def test_none_weighs_every_loss_token_one_whatever_the_mismatch():
    c = rollout_correction(OLD, ROLLOUT, MASK, "none", cap=2.0)
    assert torch.equal(c.weights, MASK) and bool((c.keep == 1).all()) and not c.truncated.any()


def test_mismatch_sums():
    # tokens' log rho: ln2, -ln2, 2 ln2, 0, ln3 (the padding token is not counted)
    s = mismatch_sums(OLD, ROLLOUT, MASK)
    assert s["abs_log_ratio"] == pytest.approx(4 * LN2 + math.log(3))
    # k3 = rho - 1 - log rho, summed: an estimate of KL(mu || pi_old) per token after dividing by the count
    want = sum(r - 1 - math.log(r) for r in (2, 0.5, 4, 1, 3))
    assert s["kl"] == pytest.approx(want, rel=1e-6)


@pytest.mark.parametrize("kw, problem", [
    (dict(name="nope"), "choose one of"),
    (dict(cap=0.0), "cap=0.0 must be > 0"),
    (dict(name="icepop", low=5.0, cap=2.0), "low=5.0 must be in [0, cap=2.0)"),
    (dict(name="tis", low=0.5), "read by mis and icepop only"),
])
def test_bad_sections_name_the_key(kw, problem):
    with pytest.raises(ConfigError, match=r"algorithm\.rollout_correction\.") as e:
        RolloutCorrectionConfig(**kw).check("algorithm.rollout_correction")
    assert problem in str(e.value)


# -- in the learner ----------------------------------------------------------------------------------------------

def _update(path: str, batch, correction=None, loss=None) -> tuple[dict, dict[str, torch.Tensor]]:
    cfg = LearnerConfig(micro_batch_size=2, optim=OptimConfig(lr=1e-3, grad_clip=0.0), num_threads=1)
    learner = Learner(path, cfg, loss or PolicyLossConfig(), None, total_steps=1, max_response_tokens=8,
                      correction=correction)
    learner.model.to(torch.float64)  # Adam's first step is about sign(g): float32 noise would flip tiny entries
    before = {k: v.clone() for k, v in learner.model.state_dict().items()}
    metrics = learner.update(batch)
    return metrics, {k: learner.model.state_dict()[k] - before[k] for k in before}


def _sampled_by_the_learner(path: str):
    """make_batch() with rollout log-probs equal to the learner's own (no mismatch)."""
    batch = make_batch()
    learner = Learner(path, LearnerConfig(num_threads=1), PolicyLossConfig(), None, 1, 8)
    learner.model.to(torch.float64)
    batch.rollout_logprobs = learner.compute_logprobs(batch) * batch.response_mask
    return batch


def _close(a: dict, b: dict) -> bool:
    return all(torch.allclose(a[k], b[k], atol=1e-7, rtol=1e-5) for k in a)


def test_without_mismatch_a_correction_leaves_the_update_unchanged(tiny_model_path):
    plain, d_plain = _update(tiny_model_path, _sampled_by_the_learner(tiny_model_path))
    assert plain["mismatch/abs_log_ratio"] == pytest.approx(0.0, abs=1e-6)
    for name in ("tis", "mis"):
        m, d = _update(tiny_model_path, _sampled_by_the_learner(tiny_model_path), RolloutCorrectionConfig(name=name))
        assert m["rollout_correction/weight_mean"] == pytest.approx(1.0, abs=1e-5), name
        assert m["rollout_correction/rejected_frac"] == 0.0 and m["rollout_correction/truncated_frac"] == 0.0
        assert _close(d, d_plain), name


def test_icepop_update_equals_the_update_without_the_rejected_row(tiny_model_path):
    """Row 0's sampler put 4x less mass on its tokens than the learner: IcePop (band [0.5, 2]) rejects them, so the
    update equals one where row 0 is not in the loss (the token-mean's denominator included)."""
    batch = _sampled_by_the_learner(tiny_model_path)
    batch.rollout_logprobs[0] -= 2 * LN2 * batch.response_mask[0]
    m, d = _update(tiny_model_path, batch, RolloutCorrectionConfig(name="icepop", cap=2.0, low=0.5))
    rows0 = float(batch.response_mask[0].sum()) / float(batch.response_mask.sum())
    assert m["rollout_correction/rejected_frac"] == pytest.approx(rows0)
    assert m["mismatch/abs_log_ratio"] < 1e-6  # (over the tokens the loss kept)

    without = _sampled_by_the_learner(tiny_model_path)
    without.response_mask[0] = 0
    _, d_without = _update(tiny_model_path, without)
    assert _close(d, d_without)
    _, d_plain = _update(tiny_model_path, _sampled_by_the_learner(tiny_model_path))
    assert not _close(d, d_plain)  # the rejection did change the update


def test_a_row_mis_rejects_leaves_the_sequence_mean_as_if_it_were_not_in_the_batch(tiny_model_path):
    """seq-mean-token-mean averages over the rows with a loss token: a row MIS rejects (rho_0 = 16 > 2) is not
    counted, so the loss equals that of the batch without the row (not 5/6 of it)."""
    batch = _sampled_by_the_learner(tiny_model_path)
    batch.rollout_logprobs[0] -= 4 * LN2 * batch.response_mask[0] / batch.response_mask[0].sum()
    seq_mean = PolicyLossConfig(agg_mode="seq-mean-token-mean")
    m, _ = _update(tiny_model_path, batch, RolloutCorrectionConfig(name="mis", cap=2.0), loss=seq_mean)
    rest = _sampled_by_the_learner(tiny_model_path).select([1, 2, 3, 4, 5])
    rest, _ = _update(tiny_model_path, rest, loss=seq_mean)
    assert m["rollout_correction/rejected_frac"] > 0 and rest["loss"] != 0
    assert m["loss"] == pytest.approx(rest["loss"], rel=1e-6)


def test_tis_scales_a_token_by_its_truncated_ratio(tiny_model_path):
    """rho = 1.5 on every loss token (below the cap): TIS's loss is 1.5x the plain one (the loss is linear in w)."""
    batch = _sampled_by_the_learner(tiny_model_path)
    batch.rollout_logprobs -= math.log(1.5) * batch.response_mask
    m, _ = _update(tiny_model_path, batch, RolloutCorrectionConfig(name="tis", cap=2.0))
    assert m["rollout_correction/weight_mean"] == pytest.approx(1.5, rel=1e-4)
    assert m["mismatch/kl"] == pytest.approx(1.5 - 1 - math.log(1.5), rel=1e-3)
    plain, _ = _update(tiny_model_path, _sampled_by_the_learner(tiny_model_path))
    assert plain["loss"] != 0 and m["loss"] == pytest.approx(1.5 * plain["loss"], rel=1e-4)
    capped, _ = _update(tiny_model_path, batch, RolloutCorrectionConfig(name="tis", cap=1.2))
    assert capped["loss"] == pytest.approx(1.2 * plain["loss"], rel=1e-4)
    assert capped["rollout_correction/truncated_frac"] == pytest.approx(1.0)
