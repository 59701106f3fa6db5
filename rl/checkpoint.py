"""Checkpoints written atomically: a temporary folder, flushed, renamed, then the `latest` pointer.

A crash at any moment leaves the previous checkpoint valid. Layout of `<run>/checkpoints/step_000010/`:
`model/` (save_pretrained safetensors + tokenizer: loads in transformers and vLLM), `optimizer.pt`,
`trainer_state.json`, `config.yaml`.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Callable


def _fsync_tree(folder: Path) -> None:
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            with open(p, "rb") as f:
                os.fsync(f.fileno())
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(
    ckpt_root: Path, step: int, write: Callable[[Path], None], state: dict, config_yaml: str, keep: int
) -> Path:
    """`write(tmp_folder)` writes model and optimizer; this adds the trainer state and makes it visible atomically."""
    ckpt_root.mkdir(parents=True, exist_ok=True)
    final = ckpt_root / f"step_{step:06d}"
    tmp = ckpt_root / f".tmp-step_{step:06d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        write(tmp)
        (tmp / "trainer_state.json").write_text(json.dumps(state, indent=1))
        (tmp / "config.yaml").write_text(config_yaml)
        _fsync_tree(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    pointer_tmp = ckpt_root / ".latest.tmp"
    pointer_tmp.write_text(final.name)
    os.replace(pointer_tmp, ckpt_root / "latest")
    for old in list_checkpoints(ckpt_root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(ckpt_root: Path) -> list[Path]:
    return sorted(p for p in ckpt_root.glob("step_*") if p.is_dir())


def latest_checkpoint(ckpt_root: Path) -> Path | None:
    pointer = ckpt_root / "latest"
    if pointer.exists():
        path = ckpt_root / pointer.read_text().strip()
        if path.is_dir():
            return path
    return None
