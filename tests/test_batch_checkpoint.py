"""The batch type and atomic checkpoints."""

from __future__ import annotations

import pytest
import torch

from rl.batch import Batch
from rl.checkpoint import latest_checkpoint, list_checkpoints, save_checkpoint


def test_batch_packs_aligns_and_splits():
    b = Batch.from_sequences([[1, 2], [3, 4, 5]], [[6, 7, 8], [9]], [[-0.1, -0.2, -0.3], [-0.4]], [0, 0], pad_token_id=0)
    assert b.input_ids.tolist() == [[1, 2, 6, 7, 8], [3, 4, 5, 9, 0]]
    assert b.response_mask.tolist() == [[0, 0, 1, 1, 1], [0, 0, 0, 1, 0]]
    assert b.attention_mask.tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]]
    assert torch.allclose(b.rollout_logprobs[0, 2:], torch.tensor([-0.1, -0.2, -0.3]))
    assert b.response_lengths.tolist() == [3, 1]
    second = b.split(1)[1]
    assert second.input_ids.tolist() == [[3, 4, 5, 9]]  # trimmed to its own width
    assert len(b.select([1, 0])) == 2 and b.select([1]).group_ids.tolist() == [0]


def _write(folder):
    (folder / "model").mkdir()
    (folder / "model" / "weights.bin").write_bytes(b"w" * 10)


def test_checkpoints_are_atomic_and_pruned(tmp_path):
    root = tmp_path / "ckpt"
    for step in (1, 2, 3):
        save_checkpoint(root, step, _write, {"step": step}, "a: 1\n", keep=2)
    assert [p.name for p in list_checkpoints(root)] == ["step_000002", "step_000003"]
    assert latest_checkpoint(root).name == "step_000003"
    assert not [p for p in root.iterdir() if p.name.startswith(".tmp")]

    def crash(folder):
        _write(folder)
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(root, 4, crash, {"step": 4}, "", keep=2)
    assert latest_checkpoint(root).name == "step_000003"  # the previous checkpoint is still the valid one
    assert (latest_checkpoint(root) / "model" / "weights.bin").read_bytes() == b"w" * 10
    assert not (root / "step_000004").exists() and not (root / ".tmp-step_000004").exists()
