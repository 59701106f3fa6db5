"""Checkpoints: written atomically, found again on resume, refused when they would not continue the same run.

Layout of `<run>/checkpoints/step_000010/`:
  model/               save_pretrained safetensors + tokenizer: loads in transformers and vLLM as it is
  learner_state.pt     optimizer, LR scheduler and the learner's RNG states (tensors only: torch.load(weights_only=True))
  trainer_state.json   step, data order (epoch, position, shuffle seed), driver RNG states, counters, start-of-run eval
  config.yaml          the resolved config (secrets redacted)
A step folder exists only once all of it is on disk (written to a temporary folder, fsynced, renamed); the `latest`
pointer is replaced after that. A crash at any moment therefore leaves the previous checkpoint valid.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from rl.files import replace_folder_atomic, write_atomic

REQUIRED_FILES = ("trainer_state.json", "config.yaml", "learner_state.pt", "model/config.json")


class CheckpointError(RuntimeError):
    """A checkpoint could not be written or read; the message says which and what is still intact."""


def kill_point(name: str, step: int) -> None:
    """Fault injection for the resume tests: `RLVR_KILL_AT=<name>:<step>` SIGKILLs this process when it gets here."""
    if os.environ.get("RLVR_KILL_AT") == f"{name}:{step}":
        os.kill(os.getpid(), signal.SIGKILL)


def save_checkpoint(
    ckpt_root: Path, step: int, write: Callable[[Path], None], state: dict, config_yaml: str, keep: int
) -> Path:
    """`write(tmp_folder)` writes model and learner state; this adds the trainer state and makes it visible atomically.

    On any failure (disk full, unwritable folder, non-finite weights) the temporary folder is removed, the previous
    checkpoints and the `latest` pointer are untouched, and a CheckpointError says so.
    """
    final = ckpt_root / f"step_{step:06d}"
    tmp = ckpt_root / f".tmp-step_{step:06d}"
    previous = latest_checkpoint(ckpt_root) if ckpt_root.exists() else None
    try:
        ckpt_root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        write(tmp)
        (tmp / "trainer_state.json").write_text(json.dumps(state, indent=1))
        (tmp / "config.yaml").write_text(config_yaml)
        kill_point("checkpoint_tmp", step)
        replace_folder_atomic(tmp, final)
        kill_point("checkpoint_renamed", step)
        write_atomic(ckpt_root / "latest", final.name)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, (KeyboardInterrupt, SystemExit)):
            raise
        intact = f"the previous checkpoint {previous} is intact" if previous else "no earlier checkpoint exists"
        hint = " (free disk space or set output_dir to another disk)" if isinstance(e, OSError) else ""
        raise CheckpointError(f"could not write checkpoint {final}: {type(e).__name__}: {e}{hint}; {intact}") from e
    for old in list_checkpoints(ckpt_root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(ckpt_root: Path) -> list[Path]:
    return sorted(p for p in ckpt_root.glob("step_*") if p.is_dir())


def is_complete(folder: Path) -> bool:
    return all((folder / f).exists() for f in REQUIRED_FILES) and any((folder / "model").glob("*.safetensors"))


def latest_checkpoint(ckpt_root: Path) -> Path | None:
    """The checkpoint `latest` points to; if it is missing or incomplete, the newest complete one (with a warning)."""
    pointer = ckpt_root / "latest"
    if pointer.exists():
        path = ckpt_root / pointer.read_text().strip()
        if path.is_dir() and is_complete(path):
            return path
    complete = [p for p in list_checkpoints(ckpt_root) if is_complete(p)]
    if complete and pointer.exists():
        warnings.warn(f"{pointer} names no complete checkpoint; using {complete[-1].name}", stacklevel=2)
    return complete[-1] if complete else None


def load_trainer_state(folder: Path) -> dict:
    if not is_complete(folder):
        missing = [f for f in REQUIRED_FILES if not (folder / f).exists()]
        raise CheckpointError(f"resume={str(folder)!r} is not a complete rlvr checkpoint (missing {missing or 'weights'})")
    try:
        return json.loads((folder / "trainer_state.json").read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{folder / 'trainer_state.json'} is corrupt ({e}); resume from an earlier checkpoint") from e


# -- RNG states, JSON-able (driver side; the learner keeps its own in learner_state.pt) ------------------------------
def rng_state() -> dict:
    version, mt, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": [version, list(mt), gauss],
        "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state().tolist(),
    }


def set_rng_state(state: dict) -> None:
    version, mt, gauss = state["python"]
    random.setstate((version, tuple(mt), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
