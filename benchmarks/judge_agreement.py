"""How far to trust an LLM grader (rewards/judge.py) before paying for it in a run: its verdicts on cases whose truth
is known, from the knowrl questions.

- judge: for N questions, the gold answer itself (or a second alias, when the row has one) must be judged correct,
  another question's gold answer wrong.
- verifier: a question-answer passage ("Q: ... A: ...", the CPU recipes' knowledge source) must support the claim
  "The answer to '<question>' is <gold>" and not the same claim with another question's answer.

Prints accuracy, yes-rate and unparsed replies per task, and writes OUT (default
benchmarks/results/judge_agreement.md).

  .venv/bin/python benchmarks/judge_agreement.py --model smollm2-135m-instruct --n 100
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

from rl.data.sources import resolve_data_file

REPO = Path(__file__).resolve().parents[1]
KNOWRL = Path(resolve_data_file("knowrl/train.json", "the knowrl questions (RLVR_DATA_DIR)"))  # the data mirror's copy


def cases(n: int, seed: int) -> list[tuple[dict, dict]]:
    rows = json.loads(KNOWRL.read_text())
    rng = random.Random(seed)
    picked = rng.sample(range(len(rows)), 2 * n)
    return [(rows[a], rows[b]) for a, b in zip(picked[:n], picked[n:])]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--engine", default="vllm", choices=["vllm", "hf"])
    p.add_argument("--n", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "judge_agreement.md")
    args = p.parse_args()

    from rewards.judge import LLM, LLMJudge, LLMVerifier
    from rewards.qa import gold_aliases

    llm = LLM({"model": args.model, "engine": args.engine, "max_model_len": 1024})
    pairs = cases(args.n, args.seed)
    rows = []

    def measure(task: str, verdicts: list[bool], truth: list[bool], unparsed: int, seconds: float) -> None:
        acc = sum(v == t for v, t in zip(verdicts, truth)) / len(truth)
        rows.append((task, len(truth), acc, sum(verdicts) / len(verdicts), unparsed, seconds))

    judge = LLMJudge(llm)
    golds = [gold_aliases(a["answers"]) for a, _ in pairs]
    right = [g[-1] for g in golds]  # the last alias (the first when there is only one)
    wrong = [gold_aliases(b["answers"])[0] for _, b in pairs]
    questions = [a["question"] for a, _ in pairs] * 2
    before, t0 = llm.unparsed, time.time()
    verdicts = judge(questions, right + wrong, golds + golds)
    measure("judge", verdicts, [True] * args.n + [False] * args.n, llm.unparsed - before, time.time() - t0)

    verify = LLMVerifier(llm)
    passages = [f"Q: {a['question']} A: {g[0]}" for (a, _), g in zip(pairs, golds)] * 2
    claims = [f"The answer to '{a['question']}' is {x}." for (a, _), x in zip(pairs * 2, right + wrong)]
    before, t0 = llm.unparsed, time.time()
    verdicts = [bool(v) for v in verify(claims, passages)]
    measure("verifier", verdicts, [True] * args.n + [False] * args.n, llm.unparsed - before, time.time() - t0)

    lines = [f"# LLM grader agreement: {args.model} ({args.engine}), {args.n} knowrl questions, seed {args.seed}", "",
             f"Command: `.venv/bin/python benchmarks/judge_agreement.py --model {args.model} --engine {args.engine} "
             f"--n {args.n}`. Half the cases are true, half false: chance is 0.50 accuracy.", "",
             "| task | cases | accuracy | yes rate | unparsed | seconds |", "|---|---|---|---|---|---|"]
    lines += [f"| {t} | {c} | {a:.2f} | {y:.2f} | {u} | {s:.0f} |" for t, c, a, y, u, s in rows]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
