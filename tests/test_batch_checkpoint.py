"""The batch type and atomic checkpoints."""

from __future__ import annotations

import errno

import pytest
import torch

from rl.core.batch import Batch
from rl.train.checkpoint import (
    CheckpointError, latest_checkpoint, list_checkpoints, load_trainer_state, rng_state, save_checkpoint, set_rng_state,
)


def test_batch_packs_aligns_and_splits():
    b = Batch.from_sequences([[1, 2], [3, 4, 5]], [[6, 7, 8], [9]], [[-0.1, -0.2, -0.3], [-0.4]], [0, 0], pad_token_id=0)
    assert b.input_ids.tolist() == [[1, 2, 6, 7, 8], [3, 4, 5, 9, 0]]
    assert b.response_mask.tolist() == [[0, 0, 1, 1, 1], [0, 0, 0, 1, 0]]
    assert b.attention_mask.tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]]
    assert torch.allclose(b.rollout_logprobs[0, 2:], torch.tensor([-0.1, -0.2, -0.3]))
    assert b.response_lengths.tolist() == [3, 1]
    assert b.prompt_lengths.tolist() == [2, 3]
    second = b.select([1]).trim()
    assert second.input_ids.tolist() == [[3, 4, 5, 9]]  # trimmed to its own width
    assert len(b.select([1, 0])) == 2 and b.select([1]).group_ids.tolist() == [0]


def _write(folder):
    (folder / "model").mkdir()
    (folder / "model" / "config.json").write_text("{}")
    (folder / "model" / "model.safetensors").write_bytes(b"w" * 10)
    (folder / "learner_state.pt").write_bytes(b"s")


def test_checkpoints_are_atomic_and_pruned(tmp_path):
    root = tmp_path / "ckpt"
    for step in (1, 2, 3):
        save_checkpoint(root, step, _write, {"step": step}, "a: 1\n", keep=2)
    assert [p.name for p in list_checkpoints(root)] == ["step_000002", "step_000003"]
    assert latest_checkpoint(root).name == "step_000003"
    assert not [p for p in root.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("error", [OSError(errno.ENOSPC, "No space left on device"), PermissionError(13, "denied"),
                                   FloatingPointError("the policy has non-finite weights")])
def test_a_failed_write_leaves_the_previous_checkpoint_valid(tmp_path, error):
    root = tmp_path / "ckpt"
    save_checkpoint(root, 3, _write, {"step": 3}, "", keep=2)
    before = {p.relative_to(root): p.read_bytes() for p in root.rglob("*") if p.is_file()}

    def crash(folder):
        _write(folder)
        raise error

    with pytest.raises(CheckpointError) as e:
        save_checkpoint(root, 4, crash, {"step": 4}, "", keep=2)
    assert "step_000004" in str(e.value) and "step_000003 is intact" in str(e.value) and str(error) in str(e.value)
    if isinstance(error, OSError):
        assert "free disk space" in str(e.value)
    after = {p.relative_to(root): p.read_bytes() for p in root.rglob("*") if p.is_file()}
    assert after == before  # nothing written, nothing lost, no temporary folder left


def test_latest_falls_back_to_the_newest_complete_checkpoint(tmp_path):
    root = tmp_path / "ckpt"
    for step in (1, 2):
        save_checkpoint(root, step, _write, {"step": step}, "", keep=3)
    (root / "step_000002" / "learner_state.pt").unlink()  # damaged after the fact
    with pytest.warns(UserWarning, match="no complete checkpoint"):
        assert latest_checkpoint(root).name == "step_000001"
    (root / "latest").write_text("step_000009")
    with pytest.warns(UserWarning):
        assert latest_checkpoint(root).name == "step_000001"
    with pytest.raises(CheckpointError, match="not a complete rlvr checkpoint"):
        load_trainer_state(root / "step_000002")


def test_rng_states_round_trip_through_json():
    import json
    import random

    import numpy as np

    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    random.random(), np.random.normal(), torch.randn(3)  # numpy keeps a cached gaussian: part of the state
    state = json.loads(json.dumps(rng_state()))
    expected = (random.random(), np.random.normal(), torch.randn(3))
    random.seed(7), np.random.seed(7), torch.manual_seed(7)
    set_rng_state(state)
    got = (random.random(), np.random.normal(), torch.randn(3))
    assert got[0] == expected[0] and got[1] == expected[1] and torch.equal(got[2], expected[2])
