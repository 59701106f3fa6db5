"""What the evidence scripts share: run one arm (`rlvr train RECIPE overrides`), load its per-step metrics and
results, and format mean +- sd over seeds."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RLVR = [sys.executable, "-m", "rl.cli"]


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
