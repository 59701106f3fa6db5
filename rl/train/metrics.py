"""Metrics out: a JSONL file (always), TensorBoard (default), wandb / mlflow when installed and enabled."""

from __future__ import annotations

import json
import time
from contextlib import contextmanager
from pathlib import Path


class Tracker:
    def __init__(self, run_dir: Path, cfg, run_name: str, config_dict: dict | None = None,
                 resume_step: int | None = None):
        """`resume_step`: the run continues after this step; TensorBoard drops what a crashed attempt logged later
        (metrics.jsonl is cut back by the trainer)."""
        self.path = run_dir / "metrics.jsonl"
        self.file = open(self.path, "a", encoding="utf-8")
        self.tb = self.wandb = self.mlflow = None
        if cfg.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            purge = resume_step + 1 if resume_step is not None else None
            self.tb = SummaryWriter(str(run_dir / "tensorboard"), purge_step=purge)
        if cfg.wandb:
            import wandb  # an ImportError here names the missing package

            self.wandb = wandb.init(project="rlvr", name=run_name, config=config_dict, dir=str(run_dir))
        if cfg.mlflow:
            import mlflow

            mlflow.start_run(run_name=run_name)
            self.mlflow = mlflow

    def log(self, step: int, metrics: dict[str, float]) -> None:
        scalars = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
        self.file.write(json.dumps({"step": step, **scalars}) + "\n")
        self.file.flush()
        if self.tb is not None:
            for k, v in scalars.items():
                self.tb.add_scalar(k, v, step)
            self.tb.flush()
        if self.wandb is not None:
            self.wandb.log(scalars, step=step)
        if self.mlflow is not None:
            self.mlflow.log_metrics({k.replace("@", "_at_"): v for k, v in scalars.items()}, step=step)

    def close(self) -> None:
        self.file.close()
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()
        if self.mlflow is not None:
            self.mlflow.end_run()


class StepTimer:
    """Wall time per phase of a step: `with timer("generate"): ...`; `timer.split()` gives time/<phase> seconds."""

    def __init__(self):
        self.start = time.perf_counter()
        self.phases: dict[str, float] = {}

    @contextmanager
    def __call__(self, phase: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.phases[phase] = self.phases.get(phase, 0.0) + time.perf_counter() - t0

    def split(self) -> dict[str, float]:
        total = time.perf_counter() - self.start
        out = {f"time/{k}": v for k, v in self.phases.items()}
        out["time/other"] = max(0.0, total - sum(self.phases.values()))
        out["time/step"] = total
        return out
