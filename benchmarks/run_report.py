"""Summarise a finished run: accuracy before/after per evaluation set and where each step's time went.

    .venv/bin/python benchmarks/run_report.py runs/quickstart [--out benchmarks/results/quickstart_cpu.md]

Markdown on stdout (and in --out): a header with the machine, the run's recipe and seed and the wall time of its
steps, then the tables.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

PHASES = ["generate", "reward", "advantage", "learn", "sync", "other", "step"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--out", type=Path, default=None, help="also write the report to this file")
    args = parser.parse_args()
    lines: list[str] = []
    out = lines.append
    rows = [json.loads(line) for line in (args.run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "time/step" in r]
    results = json.loads((args.run_dir / "results.json").read_text())

    out(f"# Run report: {args.run_dir.name}\n")
    out(f"Command: `python benchmarks/run_report.py {' '.join(sys.argv[1:])}`. Machine: {machine()}.")
    config = args.run_dir / "config.yaml"
    if config.exists():
        from omegaconf import OmegaConf

        c = OmegaConf.load(config)
        out(f"Run: model {c.model.path}, seed {c.seed}, {c.trainer.total_steps} steps of "
            f"{c.trainer.prompts_per_step} prompts x {c.rollout.sampling.n} samples; steps took "
            f"{sum(r.get('time/step', 0.0) for r in steps) / 60:.1f} min in all (evaluation and start-up not counted).")
    out("\n| eval set | start | end | change | samples |\n|---|---|---|---|---|")
    for name, end in results["end"].items():
        start = results.get("start", {}).get(name, {}).get("accuracy")
        change = f"{end['accuracy'] - start:+.3f}" if start is not None else "-"
        out(f"| {name} | {start if start is None else f'{start:.3f}'} | {end['accuracy']:.3f} | {change} "
            f"| {int(end['num_samples'])} |")

    out("\n| step | reward | accuracy | length | entropy | " + " | ".join(f"{p} s" for p in PHASES) + " |")
    out("|---" * (5 + len(PHASES)) + "|")
    for r in steps:
        cells = [f"{r['reward/mean']:.3f}", f"{r.get('accuracy', float('nan')):.3f}", f"{r['response_length/mean']:.0f}",
                 f"{r.get('learner/entropy', float('nan')):.3f}"]
        cells += [f"{r.get(f'time/{p}', 0.0):.1f}" for p in PHASES]
        out(f"| {r['step']} | " + " | ".join(cells) + " |")
    total = {p: sum(r.get(f"time/{p}", 0.0) for r in steps) for p in PHASES}
    out("| all | | | | | " + " | ".join(f"{total[p]:.0f}" for p in PHASES) + " |")
    text = "\n".join(lines) + "\n"
    sys.stdout.write(text)
    if args.out:
        args.out.write_text(text)


def machine() -> str:
    """CPU model, cores, memory (Linux), and whether a GPU was seen."""
    cpu = platform.processor() or platform.machine()
    try:
        info = Path("/proc/cpuinfo").read_text()
        cpu = next(line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name"))
        cpu += " (AVX-512 BF16)" if "avx512_bf16" in info else " (no AVX-512 BF16)"
        mem = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                   if line.startswith("MemTotal")) / 2**20
        cpu += f", {os.cpu_count()} cores, {mem:.0f} GiB"
    except (OSError, StopIteration):
        pass
    return cpu


if __name__ == "__main__":
    main()
