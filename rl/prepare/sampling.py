"""Offline steps that sample the starting model before training (one loop, three uses):

- `rlvr dph-prepare` (rl/methods/dph.py): pi0's correct samples and log-probs for DPH-RL's divergence term;
- `rlvr ikea-prepare`: IKEA's knowledge-boundary data: a question is *known* when any of k answers without search is
  correct (pass rate > 0), *unknown* when none is; the training file keeps both halves in equal numbers (1:1);
- `rlvr adaptthink-prepare`: AdaptThink's R_ref, the starting model's accuracy per problem over k Thinking samples
  (forced as in training), as a JSONL of {"prompt", "r_ref"} that the adaptthink reward reads;
- `rlvr klcf-prepare`: KLCF's checklists: the atomic claims of k base-model answers that the knowledge source
  supports (deduplicated), per question, in a JSONL of {"prompt", "checklist"} that the klcf reward reads.

ikea-prepare writes a data file (the source rows' own columns plus `known`, `pass_rate`) to train on.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np


@dataclass
class InitialSamples:
    rows: object  # datasets.Dataset: the training rows (with "prompt" and "answer")
    groups: list  # per row: its k samples (rollout.base.Sample)
    scores: list  # per row: the recipe's rewards on them (rewards.RewardOutput), or None when not scored
    model_path: str
    tokenizer: object


def sample_initial_policy(cfg, k: int, desc: str, score: bool = True, chunk: int = 64,
                          rollout: Callable | None = None) -> InitialSamples:
    """The recipe's model answers every training question k times on a rollout fleet (the recipe's sampling, plain
    generation: no search, no CURE, unless `rollout(generate, tokenizer, prompts, sampling, seeds)` generates),
    seeded per question; with `score`, the recipe's rewards score every answer."""
    from tqdm.auto import tqdm
    from transformers import AutoTokenizer

    from rewards import RewardManager
    from rl.data.prompts import load_prompts, sample_seed
    from rl.models.resolve import resolve_model_path
    from rl.cluster import start_ray
    from rollout.fleet import RolloutFleet

    model_path = resolve_model_path(cfg.model.path)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    rows, prompts, _ = load_prompts(cfg.data.train, "data.train", cfg.data, tokenizer)
    rewards = RewardManager(cfg.rewards, cfg.reward_policy) if score else None
    start_ray(cfg.ray)
    fleet = RolloutFleet(cfg.rollout, model_path, seed=cfg.seed)
    sampling = replace(cfg.rollout.sampling, n=k)
    groups, scores = [], []
    try:
        for start in tqdm(range(0, len(prompts), chunk), desc=desc, file=sys.stderr):
            idx = list(range(start, min(start + chunk, len(prompts))))
            args = ([prompts[i] for i in idx], sampling, [sample_seed(cfg.seed, 0, i, 0) for i in idx])
            part = rollout(fleet.generate, tokenizer, *args) if rollout is not None else fleet.generate(*args)
            groups += part
            if rewards is None:
                scores += [None] * len(part)
                continue
            flat = [i for i, g in zip(idx, part) for _ in g]
            columns = {c: [rows[i][c] for i in flat] for c in rows.column_names if c != "prompt"}
            out = rewards([rows[i]["prompt"] for i in flat], [x.text for g in part for x in g], columns)
            bounds = np.cumsum([0] + [len(g) for g in part]).tolist()
            scores += [out.select(slice(lo, hi)) for lo, hi in zip(bounds, bounds[1:])]
    finally:
        fleet.shutdown()
        if rewards is not None:
            rewards.shutdown()
    return InitialSamples(rows, groups, scores, model_path, tokenizer)


def write_rows(path: Path, rows: list[dict]) -> None:
    """JSONL, written to a temporary file and renamed: a crash never leaves half a data file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    tmp.replace(path)


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
        passed.append(sum(correct) / max(1, len(group)))
    known = [i for i, p in enumerate(passed) if p > 0]
    unknown = [i for i, p in enumerate(passed) if p == 0]
    rng = np.random.default_rng(cfg.seed)
    m = min(len(known), len(unknown))
    keep = [(i, True) for i in rng.permutation(known)[:m].tolist()] + [(i, False) for i in rng.permutation(unknown)[:m].tolist()]
    keep = [keep[j] for j in rng.permutation(len(keep)).tolist()]
    write_rows(out, [_source_row(s.rows, i) | {"known": known_, "pass_rate": passed[i]} for i, known_ in keep])
    stats = {"questions": len(passed), "known": len(known), "unknown": len(unknown), "written": len(keep),
             "mean_pass_rate": float(np.mean(passed)) if passed else 0.0}
    print(f"[ikea-prepare] {stats['questions']} questions, k={k}: {stats['known']} known (pass rate > 0), "
          f"{stats['unknown']} unknown; {stats['written']} written 1:1 to {out}", file=sys.stderr)
    return stats


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
    write_rows(out, out_rows)
    stats = {"questions": len(out_rows), "mean_checklist": float(np.mean(sizes)) if sizes else 0.0,
             "empty_checklists": sum(n == 0 for n in sizes)}
    print(f"[klcf-prepare] {stats['questions']} questions, k={k}: {stats['mean_checklist']:.2f} supported claims per "
          f"question ({stats['empty_checklists']} with none), written to {out}", file=sys.stderr)
    return stats


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
        refs.append(sum(acc) / max(1, len(acc)))
    write_rows(out, [{"prompt": s.rows[i]["prompt"], "r_ref": r} for i, r in enumerate(refs)])
    lengths = [len(x.response_ids) for g in s.groups for x in g]
    stats = {"problems": len(refs), "mean_r_ref": float(np.mean(refs)) if refs else 0.0,
             "solved_never": sum(r == 0 for r in refs), "mean_tokens": float(np.mean(lengths)) if lengths else 0.0}
    print(f"[adaptthink-prepare] {stats['problems']} problems, k={k}: mean R_ref {stats['mean_r_ref']:.3f} "
          f"({stats['solved_never']} never solved), {stats['mean_tokens']:.0f} tokens per Thinking answer; "
          f"written to {out}", file=sys.stderr)
    return stats
