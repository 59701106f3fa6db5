"""What the evidence scripts share: their command line, run one arm (`rlvr train RECIPE overrides`), load its
per-step metrics and results, format mean +- sd over seeds, and plot one curve per arm and seed."""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RLVR = [sys.executable, "-m", "rl.cli"]


def evidence_parser(doc: str, name: str, steps: int) -> argparse.ArgumentParser:
    """--seeds, --steps, --out (benchmarks/results/NAME), --runs (runs/NAME_evidence), --report-only."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--steps", type=int, default=steps)
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / name)
    p.add_argument("--runs", type=Path, default=REPO / "runs" / f"{name}_evidence", help="where the runs go")
    p.add_argument("--report-only", action="store_true", help="only rebuild the table and plots from --runs")
    return p


def plot_curves(path: Path, curves: dict[str, list[dict[int, dict[str, float]]]], panels: list[tuple[str, str]]) -> None:
    """One panel per (metric key, title); curves[arm] = one {step: metrics} per seed. A colour per arm, its first
    seed labelled, the others lighter. Saved as a PNG at `path`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(4.7 * len(panels), 4), squeeze=False)
    for ax, (key, title) in zip(axes[0], panels):
        for i, (arm, per_seed) in enumerate(curves.items()):
            for j, c in enumerate(per_seed):
                ax.plot(list(c), [v[key] for v in c.values()], marker="o", markersize=3, color=f"C{i}",
                        alpha=0.9 if j == 0 else 0.45, label=arm if j == 0 else None)
        ax.set(xlabel="step", title=title)
    axes[0][0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run(cmd: list[str], log: Path) -> None:
    """One rlvr command, its output in `log`; stops the script (naming the log) when it fails."""
    t0 = time.time()
    with open(log, "w") as f:
        rc = subprocess.run(cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT).returncode
    print(f"  {' '.join(cmd[3:5])} ... rc={rc} in {time.time() - t0:.0f} s (log {log})", flush=True)
    if rc != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}; see {log}")


def load(folder: Path) -> tuple[list[dict], dict]:
    """(the training steps' metrics, step 1 first; results.json). Step 0 holds the start evaluation only."""
    steps: dict[int, dict] = {}
    for line in (folder / "metrics.jsonl").read_text().splitlines():
        m = json.loads(line)
        steps.setdefault(m["step"], {}).update(m)
    training = [steps[s] for s in sorted(steps) if s >= 1]
    return training, json.loads((folder / "results.json").read_text())


def mean_sd(values: list[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"
