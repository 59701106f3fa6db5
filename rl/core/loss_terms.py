"""Terms the learner composes with the policy loss, in this order (each only when its config turns it on):

    l_t  = policy_loss_t(ratio_t, A_t)                      the registered policy loss (rl/core/losses.py)
    l_t *= w_t                                              token weights: STEER, 80/20 (rl/core/token_weights.py)
    l_t *= w^IS_t                                           rollout correction: TIS, MIS (rl/core/rollout_correction.py)
    l_t += beta * KL_t(pi || pi_ref)                        the KL penalty in the loss (rl/core/kl.py)
    l_t -= c * H_t                                          the entropy bonus
    L    = aggregate(l, mask)  + eta * D_f(pi0 || pi)       DPH-RL's f-divergence on pi0's rows (rl/core/divergences.py)

A term reads what it needs from `TermInputs` and returns the changed loss; its `prepare` fills the batch fields it
reads before the update (without gradient), `start_step` what it computes once per optimizer step. The learner runs
the terms LOSS_TERMS builds and knows none of them. A new term is one class plus one line in LOSS_TERMS.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from rl.core.divergences import f_divergence_loss
from rl.core.kl import kl_penalty
from rl.core.rollout_correction import REJECTING, rollout_correction
from rl.core.token_weights import TokenStats, token_weights


@dataclass
class TermInputs:
    """One micro-batch's pieces of the loss, on the learner's device."""

    micro: object  # the micro-batch (rl.core.batch.Batch)
    rows: Tensor  # its rows in the optimizer step's batch
    logp: Tensor  # [B, T] current policy log-probs (with gradient)
    entropy: Tensor  # [B, T] full-distribution entropy
    mask: Tensor  # [B, T] tokens of the policy loss
    aux_mask: Tensor | None  # [B, T] tokens of rows that only a term's own loss reads (pi0's samples), or None
    num_tokens: float  # policy-loss tokens in the optimizer step
    num_aux_tokens: float  # aux tokens in the optimizer step


class Term:
    name = ""
    entropy_grad = False  # the loss differentiates through the entropy

    def prepare(self, learner, batch) -> None:
        pass

    def start_step(self, learner, mb, mask: Tensor) -> None:
        pass

    def per_token(self, token_loss: Tensor, x: TermInputs, stats: dict) -> Tensor:
        return token_loss

    def on_loss(self, loss: Tensor, x: TermInputs, stats: dict) -> Tensor:
        return loss


class TokenWeights(Term):
    """l_t * w_t, w = the product of the configured methods' weights; the statistics they read come from the old
    policy (its entropy, computed before the update) and, with scope=batch, from the whole optimizer step."""

    name = "token_weights"

    def __init__(self, cfg):
        self.cfg, self.step_weights = cfg, None

    def prepare(self, learner, batch) -> None:
        if batch.old_entropy is None:
            batch.old_logprobs, batch.old_entropy = learner.compute_logprobs_and_entropy(batch)

    def start_step(self, learner, mb, mask) -> None:
        self.step_weights = None
        if self.cfg.scope == "batch":
            logp = mb.old_logprobs if not learner.stepped else learner.compute_logprobs(mb)
            self.step_weights = token_weights(TokenStats(logp, mb.old_logprobs, mb.old_entropy, mb.advantages, mask),
                                              self.cfg)

    def per_token(self, token_loss, x, stats):
        mb, mask = x.micro, x.mask
        if self.step_weights is not None:
            weights = self.step_weights[x.rows, : mb.input_ids.shape[1]]
        else:  # scope=micro (the STEER authors' code)
            weights = token_weights(TokenStats(x.logp, mb.old_logprobs, mb.old_entropy, mb.advantages, mask), self.cfg)
        weights = weights.to(token_loss.device)
        stats["token_weight/mean"] += float((weights * mask).sum()) / x.num_tokens
        stats["token_weight/reweighted_frac"] += float(((weights != 1) & (mask != 0)).sum()) / x.num_tokens
        stats["token_weight/masked_frac"] += float(((weights == 0) & (mask != 0)).sum()) / x.num_tokens
        return token_loss * weights


class RolloutCorrection(Term):
    """l_t * w_t, the importance weight of the sampler/learner mismatch rho_t = pi_old(y_t) / mu(y_t); a rejecting
    correction (mis, icepop) takes its rejected tokens out of the batch's response_mask before the update, so they
    leave the loss and its normalisers. A rejecting correction needs pi_old's log-probs before the update (one
    forward pass without gradient when nothing else needs them); tis and seq_tis on the on-policy path (one epoch,
    one mini-batch) read them off the update's own forward pass, detached, as the policy loss does."""

    name = "rollout_correction"

    def __init__(self, cfg):
        self.cfg, self.rejected_frac = cfg, 0.0

    def _correction(self, old, rollout, mask):
        return rollout_correction(old, rollout, mask, self.cfg.name, self.cfg.cap, self.cfg.low)

    def prepare(self, learner, batch) -> None:
        self.rejected_frac = 0.0
        if self.cfg.name not in REJECTING:
            return
        if batch.old_logprobs is None:
            batch.old_logprobs = learner.compute_logprobs(batch)
        rl_mask = batch.loss_masks()[0]
        keep = self._correction(batch.old_logprobs, batch.rollout_logprobs, rl_mask).keep
        self.rejected_frac = float(((1 - keep) * rl_mask).sum() / rl_mask.sum().clamp(min=1))
        batch.response_mask = batch.response_mask * keep

    def per_token(self, token_loss, x, stats):
        mb, mask = x.micro, x.mask
        old = mb.old_logprobs if mb.old_logprobs is not None else x.logp.detach()  # (on-policy: this pass is pi_old)
        c = self._correction(old, mb.rollout_logprobs, mask)
        w = c.weights.to(token_loss.device)
        stats["rollout_correction/weight_mean"] += float((w * mask).sum()) / x.num_tokens
        stats["rollout_correction/truncated_frac"] += float((c.truncated * mask).sum()) / x.num_tokens
        # the kept tokens of the step's micro-batches sum to num_tokens: this adds up to the batch's rejected_frac
        stats["rollout_correction/rejected_frac"] += self.rejected_frac * float(mask.sum()) / x.num_tokens
        return token_loss * w


class KLPenalty(Term):
    """l_t + beta * KL_t(pi || pi_ref), the estimator from the registry; pi_ref's log-probs come before the update."""

    name = "kl"

    def __init__(self, cfg):
        self.cfg = cfg

    def prepare(self, learner, batch) -> None:
        if batch.ref_logprobs is None:
            batch.ref_logprobs = learner.compute_logprobs(batch, reference=True)

    def per_token(self, token_loss, x, stats):
        kl = kl_penalty(x.logp, x.micro.ref_logprobs, self.cfg.estimator) * x.mask
        stats["kl"] += float(kl.detach().sum()) / x.num_tokens
        return token_loss + self.cfg.coef * kl


class EntropyBonus(Term):
    """l_t - c * H_t (the gradient flows through the entropy)."""

    name = "entropy_bonus"
    entropy_grad = True

    def __init__(self, coef: float):
        self.coef = coef

    def per_token(self, token_loss, x, stats):
        return token_loss - self.coef * x.entropy * x.mask


class FDivergence(Term):
    """DPH-RL: L + eta * sum_t f(pi/pi0) over pi0's own samples (the aux rows), token-mean over the optimizer step."""

    name = "divergence"

    def __init__(self, cfg):
        self.cfg = cfg

    def on_loss(self, loss, x, stats):
        if x.aux_mask is None or x.num_aux_tokens <= 0:
            return loss
        div = f_divergence_loss(x.logp, x.micro.init_logprobs, x.aux_mask, self.cfg, x.num_aux_tokens)
        stats["divergence"] += float(div.detach())
        return loss + self.cfg.eta * div


LOSS_TERMS = {  # name -> build(learner cfg, the algorithm's sections by name; None: off) -> Term | None, in the order
    # they apply
    "token_weights": lambda lc, s: TokenWeights(s["token_weights"]) if s["token_weights"] is not None else None,
    "rollout_correction": lambda lc, s: RolloutCorrection(s["rollout_correction"])
    if s["rollout_correction"] is not None else None,
    "kl": lambda lc, s: KLPenalty(s["kl"]) if s["kl"] is not None and not s["kl"].in_reward else None,
    "entropy_bonus": lambda lc, s: EntropyBonus(lc.entropy_coef) if lc.entropy_coef > 0 else None,
    "divergence": lambda lc, s: FDivergence(s["divergence"]) if s["divergence"] is not None else None,
}


def build_terms(learner_cfg, kl=None, token_weights=None, divergence=None, rollout_correction=None) -> list[Term]:
    sections = {"kl": kl, "token_weights": token_weights, "divergence": divergence,
                "rollout_correction": rollout_correction}
    return [t for build in LOSS_TERMS.values() if (t := build(learner_cfg, sections)) is not None]
