"""A run's folder: which checkpoint a run resumes from (its config checked against this one), the disk it needs, its
logs cut back to the resumed step, the stop-on-SIGTERM request, and where a rerun would continue."""

from __future__ import annotations

import json
import shutil
import signal
import sys
import time
from pathlib import Path

from omegaconf import OmegaConf

from rl.config import ConfigError, config_changes, to_dict, to_yaml
from rl.files import write_atomic
from rl.train.checkpoint import CheckpointError, latest_checkpoint


class RunFolder:
    def __init__(self, cfg):
        self.cfg, self.run_dir = cfg, Path(cfg.output_dir)

    def find_resume(self) -> Path | None:
        """The checkpoint to continue from (resume=auto|none|PATH), its config checked against this one."""
        cfg, ckpts = self.cfg, self.run_dir / "checkpoints"
        own = latest_checkpoint(ckpts) if ckpts.is_dir() else None
        if cfg.resume == "none":
            if own is not None:
                raise ConfigError(
                    f"output_dir {str(self.run_dir)!r} already holds checkpoints of a run (latest: {own.name}); "
                    "resume=auto continues it; to start over, choose another output_dir (or name), or delete the folder"
                )
            return None
        if cfg.resume == "auto":
            path = own
        else:
            given = Path(cfg.resume).expanduser()
            path = latest_checkpoint(given / "checkpoints") if (given / "checkpoints").is_dir() else given
            if path is None or not path.is_dir():
                raise ConfigError(f"resume={cfg.resume!r}: no checkpoint there; give a checkpoints/step_N folder, "
                                  "a run folder, auto or none")
        if path is None:
            return None
        old = OmegaConf.to_container(OmegaConf.load(path / "config.yaml")) if (path / "config.yaml").exists() else {}
        harmful, harmless = config_changes(old, to_dict(cfg))
        if cfg.learner.optim.schedule != "constant":  # the schedule's length is part of the run then
            harmful += [h for h in harmless if h.startswith("trainer.total_steps")]
            harmless = [h for h in harmless if not h.startswith("trainer.total_steps")]
        if harmful and not cfg.resume_force:
            raise ConfigError(
                f"resuming from {path} with a config that changes the run:\n  " + "\n  ".join(harmful) +
                "\nundo these changes, set resume_force=true to resume anyway, or start a fresh run "
                "(resume=none with another output_dir)"
            )
        for line in harmful:
            print(f"[resume] forced despite: {line}", file=sys.stderr)
        for line in harmless:
            print(f"[resume] allowed change: {line}", file=sys.stderr)
        print(f"[resume] continuing from {path}", file=sys.stderr, flush=True)
        return path

    def check_disk(self, model_path: str) -> None:
        """A checkpoint holds the weights and two Adam moments (about 3x the model in learner.dtype): fail now, not at
        the first save, when the disk cannot hold even one."""
        probe = self.run_dir if self.run_dir.exists() else next(p for p in self.run_dir.parents if p.exists())
        model = Path(model_path)
        weights = sum(f.stat().st_size for f in model.glob("*.safetensors")) if model.is_dir() else 0
        need, free = 3 * weights, shutil.disk_usage(probe).free
        if need > free:
            raise CheckpointError(f"output_dir {str(self.run_dir)!r} has {free / 2**30:.1f} GiB free; a checkpoint needs "
                                  f"about {need / 2**30:.1f} GiB; free space or put output_dir on another disk")

    def prepare(self, resume_from: Path | None, step: int) -> None:
        """Make the run folder and cut its logs back to the checkpoint being resumed (a fresh run keeps an earlier
        attempt's logs in attempts/), so the logs read as one uninterrupted run."""
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            probe = self.run_dir / ".write-test"
            probe.write_text("ok")
            probe.unlink()
        except OSError as e:
            raise ConfigError(f"output_dir {str(self.run_dir)!r} is not writable ({e}); set output_dir to a folder "
                              "you can write") from None
        logs = [self.run_dir / n for n in ("metrics.jsonl", "rollouts.jsonl") if (self.run_dir / n).exists()]
        if resume_from is None and logs:
            keep = self.run_dir / "attempts" / time.strftime("%Y%m%d-%H%M%S")
            keep.mkdir(parents=True, exist_ok=True)
            for f in logs + [p for p in (self.run_dir / "tensorboard", self.run_dir / "eval") if p.exists()]:
                shutil.move(str(f), keep / f.name)
            print(f"[run] earlier logs without a checkpoint moved to {keep}", file=sys.stderr)
        elif resume_from is not None:
            for f in logs:
                truncate_jsonl(f, step)
        write_atomic(self.run_dir / "config.yaml", to_yaml(self.cfg))

    def resume_hint(self) -> str:
        """Where a rerun of the same command continues from, for messages when a run stops."""
        ckpts = self.run_dir / "checkpoints"
        last = latest_checkpoint(ckpts) if ckpts.is_dir() else None
        if last is None:
            return "No checkpoint was written yet: a rerun starts from the beginning (trainer.save_every sets how often)."
        return f"The latest checkpoint is {last}; run the same command again to continue from it (resume=auto)."

    def report(self, results: dict, skipped_eval_sets: dict) -> None:
        """The start/end accuracy table, printed, and results.json, written last: the run is done."""
        lines = ["", f"{'eval set':<12} {'start':>8} {'end':>8} {'change':>8}"]
        for name, end in results["end"].items():
            start = results.get("start", {}).get(name)
            s = f"{start['accuracy']:8.3f}" if start else f"{'-':>8}"
            d = f"{end['accuracy'] - start['accuracy']:+8.3f}" if start else f"{'-':>8}"
            lines.append(f"{name:<12} {s} {end['accuracy']:8.3f} {d}")
        lines += [f"{name:<12} {'skipped: not found (see [data] above)':>26}" for name in skipped_eval_sets]
        if skipped_eval_sets:
            results["skipped_eval_sets"] = skipped_eval_sets
        print("\n".join(lines), flush=True)
        write_atomic(self.run_dir / "results.json", json.dumps(results, indent=1))  # written last: the run is done


class StopOnSignal:
    """Turns SIGTERM (what schedulers send before pre-empting) into a request to stop at the end of the step."""

    def __init__(self):
        self.requested = None
        self._old = signal.signal(signal.SIGTERM, self._handle) if _main_thread() else None

    def _handle(self, signum, frame):
        self.requested = signal.Signals(signum).name

    def restore(self) -> None:
        if self._old is not None:
            signal.signal(signal.SIGTERM, self._old)


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def truncate_jsonl(path: Path, max_step: int) -> None:
    """Keep the lines logged up to `max_step` (the resumed checkpoint); later ones are redone by the resumed run."""
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line).get("step", 0) <= max_step:
                kept.append(line)
        except json.JSONDecodeError:  # a line cut by the crash
            continue
    write_atomic(path, "".join(k + "\n" for k in kept))
