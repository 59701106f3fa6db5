"""`rlvr ikea-prepare`: IKEA's knowledge-boundary data: a question is *known* when any of k answers without search is
correct (pass rate > 0), *unknown* when none is; the training file keeps both halves in equal numbers (1:1) and the
source rows' own columns plus `known`, `pass_rate`."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from rl.files import write_jsonl
from rl.prepare.sampling import mean_or_zero, pass_rate, sample_initial_policy


def _source_row(rows, i: int) -> dict:
    """Row i as the data source had it (without the prompt and answer columns rlvr adds)."""
    return {k: v for k, v in rows[i].items() if k not in ("prompt", "answer")}


def ikea_prepare(cfg, k: int, out: Path) -> dict:
    """Knowledge-boundary data for IKEA: pass rate over k answers without search (short-answer grading against the
    gold), known = pass rate > 0; both halves cut to the smaller one's size (seeded), shuffled; column `known`."""
    from rl.eval.evaluate import grade

    s = sample_initial_policy(cfg, k, "ikea-prepare: sampling without search", score=False)
    passed = []
    for i, group in enumerate(s.groups):
        correct, _ = grade("short_answer", [x.text for x in group], [s.rows[i]["answer"]] * len(group))
        passed.append(pass_rate(correct))
    known = [i for i, p in enumerate(passed) if p > 0]
    unknown = [i for i, p in enumerate(passed) if p == 0]
    rng = np.random.default_rng(cfg.seed)
    m = min(len(known), len(unknown))
    keep = [(i, True) for i in rng.permutation(known)[:m].tolist()] + [(i, False) for i in rng.permutation(unknown)[:m].tolist()]
    keep = [keep[j] for j in rng.permutation(len(keep)).tolist()]
    write_jsonl(out, [_source_row(s.rows, i) | {"known": known_, "pass_rate": passed[i]} for i, known_ in keep])
    stats = {"questions": len(passed), "known": len(known), "unknown": len(unknown), "written": len(keep),
             "mean_pass_rate": mean_or_zero(passed)}
    print(f"[ikea-prepare] {stats['questions']} questions, k={k}: {stats['known']} known (pass rate > 0), "
          f"{stats['unknown']} unknown; {stats['written']} written 1:1 to {out}", file=sys.stderr)
    return stats
