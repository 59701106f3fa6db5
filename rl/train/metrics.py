"""Metrics out: a JSONL file (always), TensorBoard (default), wandb / mlflow when installed and enabled."""

from __future__ import annotations

import json
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable


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


class Progress:
    """tqdm bar with the numbers a user watches: reward, accuracy, step time."""

    def __init__(self, total: int, initial: int, enabled: bool):
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, initial=initial, desc="GRPO", disable=not enabled, dynamic_ncols=True)

    def update(self, step: int, m: dict) -> None:
        post = {"reward": f"{m['reward/mean']:.3f}", "step_s": f"{m['time/step']:.1f}"}
        if "accuracy" in m:
            post["acc"] = f"{m['accuracy']:.3f}"
        post["len"] = f"{m['response_length/mean']:.0f}"
        self.bar.set_postfix(post)
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


def rollout_metrics(groups, batch, golds: Callable[[], list] | None) -> dict[str, float]:
    """A step's rollout metrics from its groups [(row, samples, RewardOutput)] and their batch: rewards (total, per
    function, what the functions report beside their value), lengths, all-equal groups, and accuracy (the
    math_verify reward when configured, else graded against `golds()`, one per sample, when the data has answers)."""
    import numpy as np
    import torch

    from rewards.answers import math_verify_reward

    samples = [s for _, g, _ in groups for s in g]
    lengths = batch.answer_lengths
    m = {
        "reward/mean": float(batch.rewards.mean()),
        "reward/std": float(batch.rewards.std()) if len(batch) > 1 else 0.0,
        "response_length/mean": float(lengths.mean()),
        "response_length/max": float(lengths.max()),
        "response_length/truncated": float(np.mean([s.truncated for s in samples])),
        "groups/all_equal_frac": float(np.mean([bool((o.total == o.total[0]).all()) for _, _, o in groups])),
    }
    for label in groups[0][2].per_function:
        values = torch.cat([o.per_function[label] for _, _, o in groups])
        m[f"reward/{label}/mean"] = float(values.nanmean())
        m[f"reward/{label}/std"] = float(values[~values.isnan()].std()) if (~values.isnan()).sum() > 1 else 0.0
    for key in sorted({k for _, _, o in groups for k in o.extras}):  # what the rewards report beside their value
        values = torch.cat([o.extras.get(key, torch.full((len(o.total),), float("nan"))) for _, _, o in groups])
        if (~values.isnan()).any():
            m[f"reward/{key}"] = float(values.nanmean())
    if "reward/math_verify/mean" in m:  # the configured reward already is the accuracy: do not score twice
        m["accuracy"] = m["reward/math_verify/mean"]
    elif golds is not None:
        m["accuracy"] = float(np.mean(math_verify_reward(None, [s.text for s in samples], answer=golds())))
    return m


def write_rollouts(path: Path, step: int, groups, weight_version: int) -> None:
    """Append a step's samples to rollouts.jsonl: row, completion, reward, finish reason, the weight version that
    sampled it (optimizer steps behind those weights), a CURE continuation's
    reused prefix length, how many response tokens the environment wrote (out of the loss: retrieved passages,
    forced tags), and what the reward functions returned beside the value."""
    with open(path, "a", encoding="utf-8") as f:
        for r, samples, scores in groups:
            for s, rew, info in zip(samples, scores.total.tolist(), scores.info):
                record = {"step": step, "row": r, "completion": s.text, "reward": rew, "finish": s.finish_reason,
                          "weight_version": weight_version}
                if s.prefix_len:  # a CURE continuation: its first prefix_len tokens came from another sample
                    record["prefix_len"] = s.prefix_len
                if s.loss_mask is not None and 0 in s.loss_mask:
                    record["masked_tokens"] = s.loss_mask.count(0)
                if info:  # what the reward functions returned beside the value, per function
                    record["reward_info"] = info
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
