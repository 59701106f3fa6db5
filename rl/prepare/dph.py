"""`rlvr dph-prepare`: DPH-RL's offline step. Sample pi0 k times per training question, split the questions into the
mastered set D_pef and the rest D_exp, and store pi0's correct samples on D_pef with their log-probs under pi0
(rl/methods/dph.py: DPHData, the folder's layout, and how training uses it)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from rl.core.batch import Batch
from rl.methods.dph import DPHData
from rl.models.chat import pad_token_id
from rl.prepare.sampling import pass_rate, sample_initial_policy


def split_questions(correct: list[list[bool]], threshold: float) -> tuple[list[int], list[int]]:
    """(D_pef rows: at least `threshold` of the attempts correct, D_exp rows: the rest)."""
    frac = [pass_rate(c) for c in correct]
    perfect = [i for i, f in enumerate(frac) if f >= threshold - 1e-12]
    return perfect, [i for i, f in enumerate(frac) if f < threshold - 1e-12]


def prepare(cfg, chunk: int = 64) -> dict:
    """`rlvr dph-prepare`: sample pi0 (the recipe's model) prepare_k times per training question on the rollout
    fleet, score them with the recipe's rewards (a sample is correct when its total reward is at least
    algorithm.divergence.correct_reward), split, score pi0's log-probs of the kept samples on a learner, and write
    algorithm.divergence.data. Returns the split statistics."""
    from rl.config.algorithm import PolicyLossConfig
    from rl.train.learner_group import LearnerGroup

    dv = cfg.algorithm.divergence
    if dv is None or dv.data is None:
        raise ValueError("dph-prepare needs algorithm.divergence.data: give the folder to write (the training recipe "
                         "reads it)")
    pi0 = sample_initial_policy(cfg, dv.prepare_k, "dph-prepare: sampling pi0", chunk=chunk)
    model_path, tokenizer, s = pi0.model_path, pi0.tokenizer, cfg.rollout.sampling
    pad_id = pad_token_id(tokenizer)
    correct: list[list[bool]] = []
    kept: list[tuple[int, object]] = []  # (row, sample) of pi0's correct answers
    for i, (group, out) in enumerate(zip(pi0.groups, pi0.scores)):
        mine = ((out.total >= dv.correct_reward) & ~out.failed).tolist()
        correct.append(mine)
        kept.extend((i, x) for x, good in zip(group, mine) if good)
    perfect, exp = split_questions(correct, dv.perfect_threshold)
    perfect_set = set(perfect)
    kept = [(i, x) for i, x in kept if i in perfect_set]
    learner = LearnerGroup(cfg.learner, model_path, cfg.learner, PolicyLossConfig(), None, total_steps=1,
                           max_response_tokens=s.max_tokens)
    init_logprobs: list[list[float]] = []
    try:
        for start in range(0, len(kept), chunk):
            part = [x for _, x in kept[start : start + chunk]]
            b = Batch.from_sequences([x.prompt_ids for x in part], [x.response_ids for x in part],
                                     [x.logprobs for x in part], list(range(len(part))), pad_id)
            lp = learner.run("compute_logprobs", b)
            init_logprobs.extend(lp[j][b.response_mask[j] > 0].tolist() for j in range(len(part)))
    finally:
        learner.shutdown()
    accuracy = [pass_rate(c) for c in correct]
    meta = {
        "model": cfg.model.path, "train_source": cfg.data.train.source, "num_rows": len(pi0.groups),
        "k": dv.prepare_k, "perfect_threshold": dv.perfect_threshold, "seed": cfg.seed,
        "temperature": s.temperature, "max_tokens": s.max_tokens,
        "perfect_rows": perfect, "exp_rows": exp, "accuracy": accuracy,
        "num_samples": len(kept), "pi0_accuracy": float(np.mean(accuracy)),
    }
    DPHData([x.prompt_ids for _, x in kept], [x.response_ids for _, x in kept], init_logprobs,
            [i for i, _ in kept], meta).save(Path(dv.data))
    stats = {"questions": len(pi0.groups), "perfect": len(perfect), "explore": len(exp), "samples": len(kept),
             "pi0_accuracy": meta["pi0_accuracy"]}
    print(f"[dph-prepare] {stats['questions']} questions: {stats['perfect']} mastered (D_pef, >= "
          f"{dv.perfect_threshold:.0%} of {dv.prepare_k} correct; {stats['samples']} samples kept), {stats['explore']} "
          f"to explore (D_exp); pi0 accuracy {stats['pi0_accuracy']:.3f}. Written to {dv.data}", file=sys.stderr)
    return stats
