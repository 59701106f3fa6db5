"""The KL penalty in the reward (algorithm.kl.in_reward): r_i - coef * sum_t KL_t(pi || pi_ref) over the response,
before the advantage (rl/core/kl.py), instead of a KL term in the loss. The policy's log-probs it computes are kept
on the batch as the behaviour policy's, so the learner does not compute them again."""

from __future__ import annotations

from rl.core.kl import kl_penalized_rewards, kl_penalty
from rl.methods.base import Context, Method


class KLInReward(Method):
    name = "kl_in_reward"

    def __init__(self, cfg, ctx: Context):
        self.cfg, self.ctx = cfg, ctx

    def shape_rewards(self, batch, rewards, metrics):
        learner = self.ctx.learner
        batch.old_logprobs = learner.logprobs(batch)
        batch.ref_logprobs = learner.logprobs(batch, reference=True)
        kl = kl_penalty(batch.old_logprobs, batch.ref_logprobs, self.cfg.estimator) * batch.response_mask
        metrics["kl_in_reward"] = float(kl.sum() / batch.response_mask.sum().clamp(min=1))
        return kl_penalized_rewards(rewards, kl, batch.response_mask, self.cfg.coef)


def build(cfg, ctx) -> Method | None:
    kl = cfg.algorithm.kl
    return KLInReward(kl, ctx) if kl is not None and kl.in_reward else None
