"""The quickstart over several seeds: how often `make train`'s run improves held-out accuracy, and by how much.

One 24-step run is one draw from a noisy process (bf16 rounding and a 2-thread learner already send two runs of one
commit down different trajectories by step 5), so a single run's end accuracy says little. This runs the quickstart
recipe once per seed and arm, one run at a time, and prints a table per run and a summary per arm.

    .venv/bin/python benchmarks/quickstart_seeds.py --seeds 0 1 2 3 [--arm dense= --arm blocks=learner.block_attention=true]
        [--out benchmarks/results/quickstart_seeds.md] [key=value ...]   # the trailing overrides go to every run

An arm is NAME=OVERRIDES (comma-separated key=value, may be empty). Runs go to runs/quickstart_seeds/ARM_seedN; a run
whose results.json is already there is read, not rerun, so an interrupted sweep continues where it stopped.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from arms import REPO  # noqa: E402
from run_report import machine  # noqa: E402


def run(arm: str, overrides: list[str], seed: int, root: Path) -> dict:
    out = root / f"{arm}_seed{seed}"
    if not (out / "results.json").exists():
        cmd = [str(REPO / ".venv" / "bin" / "rlvr"), "train", "recipes/quickstart.yaml", f"seed={seed}",
               f"output_dir={out}", "resume=none", "logging.progress=false", *overrides]
        print(f"{arm} seed {seed}: {' '.join(cmd[2:])}", flush=True)
        t0 = time.time()
        with open(root / f"{arm}_seed{seed}.log", "w") as log:
            rc = subprocess.run(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT).returncode
        if rc != 0:
            raise SystemExit(f"{arm} seed {seed} failed (rc {rc}); see {root / f'{arm}_seed{seed}.log'}")
        print(f"  {time.time() - t0:.0f} s", flush=True)
    steps = [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "time/step" in r]
    results = json.loads((out / "results.json").read_text())
    last = steps[-4:]  # the last few steps, so one step's draw does not decide it
    return {
        "arm": arm, "seed": seed,
        "start": results["start"]["heldout"]["accuracy"], "end": results["end"]["heldout"]["accuracy"],
        "reward_last4": statistics.mean(r["reward/mean"] for r in last),
        "length_last4": statistics.mean(r["response_length/mean"] for r in last),
        "truncated_last4": statistics.mean(r.get("response_length/truncated", float("nan")) for r in last),
        "learn_s": sum(r.get("time/learn", 0.0) for r in steps),
        "step_s": sum(r.get("time/step", 0.0) for r in steps),
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    p.add_argument("--arm", action="append", default=None, help="NAME=key=value,key=value (default: dense=)")
    p.add_argument("--runs", type=Path, default=REPO / "runs" / "quickstart_seeds")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("overrides", nargs="*", help="key=value for every run")
    a = p.parse_args()
    arms = []
    for spec in a.arm or ["dense="]:
        name, _, rest = spec.partition("=")
        arms.append((name, [o for o in rest.split(",") if o] + a.overrides))
    a.runs.mkdir(parents=True, exist_ok=True)
    rows = [run(name, ov, seed, a.runs) for seed in a.seeds for name, ov in arms]

    lines = [f"# Quickstart over seeds\n", f"Command: `python benchmarks/quickstart_seeds.py {' '.join(sys.argv[1:])}`. "
             f"Machine: {machine()}. Each run: recipes/quickstart.yaml as `make train` runs it (24 steps of 6 prompts "
             "x 8 samples, held-out arithmetic 200), with the seed and the arm's overrides.", "",
             "| arm | overrides | seed | held-out start | end | change | reward, last 4 steps | length, last 4 | "
             "truncated, last 4 | learn s | steps s |", "|---" * 11 + "|"]
    for r, (_, ov) in zip(rows, [arm for _ in a.seeds for arm in arms]):
        lines.append(f"| {r['arm']} | {' '.join(ov) or '-'} | {r['seed']} | {r['start']:.3f} | {r['end']:.3f} | "
                     f"{r['end'] - r['start']:+.3f} | {r['reward_last4']:.3f} | {r['length_last4']:.0f} | "
                     f"{r['truncated_last4']:.2f} | {r['learn_s']:.0f} | {r['step_s']:.0f} |")
    lines += ["", "| arm | runs | improved | mean change | median end | learn s, median |", "|---" * 6 + "|"]
    for name, _ in arms:
        mine = [r for r in rows if r["arm"] == name]
        changes = [r["end"] - r["start"] for r in mine]
        lines.append(f"| {name} | {len(mine)} | {sum(c > 0 for c in changes)} | {statistics.mean(changes):+.3f} | "
                     f"{statistics.median(r['end'] for r in mine):.3f} | "
                     f"{statistics.median(r['learn_s'] for r in mine):.0f} |")
    text = "\n".join(lines) + "\n"
    sys.stdout.write(text)
    if a.out:
        a.out.write_text(text)


if __name__ == "__main__":
    main()
