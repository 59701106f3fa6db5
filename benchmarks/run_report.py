"""Summarise a finished run: accuracy before/after per evaluation set and where each step's time went.

    .venv/bin/python benchmarks/run_report.py runs/quickstart [--markdown]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

PHASES = ["generate", "reward", "advantage", "learn", "sync", "other", "step"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("run_dir", type=Path)
    args = parser.parse_args()
    rows = [json.loads(line) for line in (args.run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "time/step" in r]
    results = json.loads((args.run_dir / "results.json").read_text())

    print(f"run: {args.run_dir}")
    print("\n| eval set | start | end | change | samples |\n|---|---|---|---|---|")
    for name, end in results["end"].items():
        start = results.get("start", {}).get(name, {}).get("accuracy")
        change = f"{end['accuracy'] - start:+.3f}" if start is not None else "-"
        print(f"| {name} | {start if start is None else f'{start:.3f}'} | {end['accuracy']:.3f} | {change} "
              f"| {int(end['num_samples'])} |")

    print("\n| step | reward | accuracy | length | entropy | " + " | ".join(f"{p} s" for p in PHASES) + " |")
    print("|---" * (5 + len(PHASES)) + "|")
    for r in steps:
        cells = [f"{r['reward/mean']:.3f}", f"{r.get('accuracy', float('nan')):.3f}", f"{r['response_length/mean']:.0f}",
                 f"{r.get('learner/entropy', float('nan')):.3f}"]
        cells += [f"{r.get(f'time/{p}', 0.0):.1f}" for p in PHASES]
        print(f"| {r['step']} | " + " | ".join(cells) + " |")
    total = {p: sum(r.get(f"time/{p}", 0.0) for r in steps) for p in PHASES}
    print("| all | | | | | " + " | ".join(f"{total[p]:.0f}" for p in PHASES) + " |")


if __name__ == "__main__":
    main()
