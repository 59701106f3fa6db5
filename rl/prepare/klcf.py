"""`rlvr klcf-prepare`: KLCF's checklists: the atomic claims of k base-model answers that the knowledge source supports
(deduplicated), per question, in a JSONL of {"prompt", "checklist"} that the klcf reward reads."""

from __future__ import annotations

import sys
from pathlib import Path

from rl.files import write_jsonl
from rl.prepare.sampling import mean_or_zero, sample_initial_policy


def klcf_prepare(cfg, k: int, out: Path, knowledge: dict, verifier: str = "lexical",
                 verifier_model: str | None = None, support_threshold: float | None = None,
                 max_claims: int = 16) -> dict:
    """KLCF checklists: the atomic claims of k base-model answers per question that the knowledge source supports
    (question's pages), deduplicated (normalised text), at most max_claims; one {"prompt", "checklist"} line per
    training question."""
    from rewards.knowrl import FactChecker, atomic_facts, page_titles
    from rewards.qa import normalize_answer

    s = sample_initial_policy(cfg, k, "klcf-prepare: sampling the base model", score=False)
    checker = FactChecker(knowledge, verifier, verifier_model, support_threshold)
    out_rows, sizes = [], []
    for i, group in enumerate(s.groups):
        claims, seen = [], set()
        for x in group:
            for c in atomic_facts(x.text):
                if normalize_answer(c) not in seen:
                    seen.add(normalize_answer(c))
                    claims.append(c)
        titles = page_titles(s.rows[i].get("title"))
        supported = checker.supported(claims, titles) if claims else []
        checklist = [c for c, ok in zip(claims, supported) if ok][:max_claims]
        sizes.append(len(checklist))
        out_rows.append({"prompt": s.rows[i]["prompt"], "checklist": checklist})
    write_jsonl(out, out_rows)
    stats = {"questions": len(out_rows), "mean_checklist": mean_or_zero(sizes),
             "empty_checklists": sum(n == 0 for n in sizes)}
    print(f"[klcf-prepare] {stats['questions']} questions, k={k}: {stats['mean_checklist']:.2f} supported claims per "
          f"question ({stats['empty_checklists']} with none), written to {out}", file=sys.stderr)
    return stats
