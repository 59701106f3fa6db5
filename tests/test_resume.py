"""Exact resume on the real stack: a run SIGKILLed mid-step and mid-checkpoint, then resumed, ends with the same
weights (bitwise) and the same per-step metrics as the same run left alone; config changes on resume are checked."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from rl.config import ConfigError, load_config
from rl.train.trainer import Trainer
from tests.resume_harness import REPO, compare_runs, run_training, tiny_overrides, train_steps

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def uninterrupted(tiny_model_path, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("resume") / "uninterrupted"
    assert run_training(tiny_overrides(tiny_model_path, run)) == 0
    return run


def test_killed_twice_then_resumed_equals_the_uninterrupted_run(uninterrupted, tiny_model_path, tmp_path):
    run, log = tmp_path / "killed", tmp_path / "log.txt"
    args = tiny_overrides(tiny_model_path, run)
    # 1. killed while checkpoint 2 is written (its temporary folder is complete, not yet renamed)
    assert run_training(args, kill_at="checkpoint_tmp:2", log=log) == -9
    ckpts = run / "checkpoints"
    assert (ckpts / "latest").read_text() == "step_000001" and (ckpts / ".tmp-step_000002").is_dir()
    # 2. resumed from step 1, killed in the middle of step 4 (rollouts generated, before the update)
    assert run_training(args, kill_at="learn:4", log=log) == -9
    assert (ckpts / "latest").read_text() == "step_000003"
    assert [r["step"] for r in train_steps(run) if "reward/mean" in r] == [1, 2, 3]
    # 3. resumed from step 3 to the end
    assert run_training(args, log=log) == 0, log.read_text()[-3000:]
    assert compare_runs(uninterrupted, run) == []
    steps = [r["step"] for r in train_steps(run) if "reward/mean" in r]
    assert steps == [1, 2, 3, 4]  # no step lost or logged twice
    assert not [p for p in ckpts.iterdir() if p.name.startswith(".tmp")]
    assert "[resume] continuing from" in log.read_text()


def test_sigterm_finishes_the_step_checkpoints_and_the_resumed_run_equals_the_uninterrupted_one(
        uninterrupted, tiny_model_path, tmp_path):
    """What a scheduler's pre-emption notice does when it reaches the driver: no periodic checkpoints here
    (save_every=0, a change allowed on resume), so the only one before the end is the one SIGTERM asked for."""
    run, log = tmp_path / "terminated", tmp_path / "log.txt"
    args = tiny_overrides(tiny_model_path, run) + ["trainer.save_every=0"]
    assert run_training(args, term_after_step=1, log=log) == 143, log.read_text()[-3000:]
    stopped_at = int((run / "checkpoints" / "latest").read_text().strip().removeprefix("step_"))
    assert 1 <= stopped_at < 4 and "stopped by signal SIGTERM" in log.read_text()
    # then killed after the last step's checkpoint, before the final evaluation: the rerun only evaluates
    assert run_training(args, kill_at="evaluate_end:4", log=log) == -9
    assert (run / "checkpoints" / "latest").read_text() == "step_000004" and not (run / "results.json").exists()
    assert run_training(args, log=log) == 0, log.read_text()[-3000:]
    assert compare_runs(uninterrupted, run) == []
    assert [r["step"] for r in train_steps(run) if "reward/mean" in r] == [1, 2, 3, 4]


def test_resume_refuses_a_changed_run_and_allows_harmless_changes(uninterrupted, tiny_model_path, tmp_path):
    args = tiny_overrides(tiny_model_path, uninterrupted)
    for change, key in (("learner.optim.lr=2e-3", "learner.optim.lr"), ("rollout.sampling.n=8", "rollout.sampling.n"),
                        ("data.arithmetic.seed=5", "data.arithmetic.seed"), (f"model.path={REPO}", "model.path")):
        with pytest.raises(ConfigError) as e:
            Trainer(load_config("recipes/quickstart.yaml", args + [change]))
        assert key in str(e.value) and "resume_force=true" in str(e.value)
    with pytest.raises(ConfigError, match="already holds checkpoints"):
        Trainer(load_config("recipes/quickstart.yaml", args + ["resume=none"]))
    with pytest.raises(ConfigError, match="no checkpoint there"):
        Trainer(load_config("recipes/quickstart.yaml", args + [f"resume={tmp_path}/nothing"]))
    # one resumed run (a copy, so the other tests' reference stays as it is) shows both kinds of change: the harmless
    # one (one more step) is allowed and named; the harmful one (the learning rate) is named and, with
    # resume_force=true, the run resumes anyway, from the checkpoint
    import shutil

    run = tmp_path / "forced"
    shutil.copytree(uninterrupted, run)
    args = tiny_overrides(tiny_model_path, run, steps=5) + ["learner.optim.lr=2e-3", "resume_force=true",
                                                            "logging.progress=true"]
    log = tmp_path / "forced.txt"
    assert run_training(args, log=log) == 0, log.read_text()[-3000:]
    text = log.read_text()
    assert "allowed change: trainer.total_steps: 4 -> 5" in text
    assert "forced despite: learner.optim.lr" in text and "continuing from" in text
    steps = [r for r in train_steps(run) if "reward/mean" in r]
    before = [r for r in train_steps(uninterrupted) if "reward/mean" in r]
    assert [r["step"] for r in steps] == [1, 2, 3, 4, 5] and steps[:4] == before  # step 5 follows checkpoint 4
    assert steps[4]["learner/lr"] == pytest.approx(2e-3) and before[3]["learner/lr"] != pytest.approx(2e-3)


def test_checkpoints_are_loaded_without_pickle():
    """Every torch.load in the project refuses to unpickle code (checkpoints may come from anywhere)."""
    calls = [(p, line) for p in REPO.glob("[a-z]*/**/*.py") if ".venv" not in p.parts
             for line in p.read_text().splitlines() if re.search(r"\btorch\.load\(", line)]
    assert calls and all("weights_only=True" in line for _, line in calls), calls
