"""`rlvr adaptthink-prepare`: AdaptThink's R_ref, the starting model's accuracy per problem over k Thinking samples
(forced as in training), as a JSONL of {"prompt", "r_ref"} that the adaptthink reward reads."""

from __future__ import annotations

import sys
from pathlib import Path

from rl.files import write_jsonl
from rl.prepare.sampling import mean_or_zero, pass_rate, sample_initial_policy


def adaptthink_prepare(cfg, k: int, out: Path) -> dict:
    """R_ref per training problem: math-verify accuracy of k Thinking samples (rollout.adaptive_thinking's forced
    Thinking prefix and limit); one {"prompt", "r_ref"} line per problem."""
    from functools import partial

    from rewards.answers import math_verify_reward
    from rollout.adaptive import adaptive_rollout

    thinking = cfg.rollout.adaptive_thinking
    s = sample_initial_policy(cfg, k, "adaptthink-prepare: Thinking samples", score=False,
                              rollout=partial(adaptive_rollout, cfg=thinking, nothinking_frac=0.0))
    refs = []
    for i, group in enumerate(s.groups):
        acc = math_verify_reward(None, [x.text for x in group], [s.rows[i]["answer"]] * len(group))
        refs.append(pass_rate(acc))
    write_jsonl(out, [{"prompt": s.rows[i]["prompt"], "r_ref": r} for i, r in enumerate(refs)])
    lengths = [len(x.response_ids) for g in s.groups for x in g]
    stats = {"problems": len(refs), "mean_r_ref": mean_or_zero(refs),
             "solved_never": sum(r == 0 for r in refs), "mean_tokens": mean_or_zero(lengths)}
    print(f"[adaptthink-prepare] {stats['problems']} problems, k={k}: mean R_ref {stats['mean_r_ref']:.3f} "
          f"({stats['solved_never']} never solved), {stats['mean_tokens']:.0f} tokens per Thinking answer; "
          f"written to {out}", file=sys.stderr)
    return stats
