"""Exact resume across the config space: for each group of options that compose (tests/resume_harness.py MATRIX), a
run SIGKILLed in the middle of step 3 and resumed from its step-2 checkpoint ends with the uninterrupted run's
weights (bitwise), per-step metrics, rollouts and results; the files show that it resumed (steps 1-2 as the killed
process wrote them, nothing logged twice, TensorBoard cut back to the checkpoint). Each case first checks, on the
uninterrupted run, that the options it names did something, so that a case cannot pass by never running them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.resume_harness import MATRIX, compare_runs, matrix_overrides, prepare_case, run_training, train_steps

pytestmark = pytest.mark.integration

STEPS, KILL_STEP = 4, 3  # a checkpoint per step: the kill in step 3 leaves step 2's


def _series(run: Path, key: str) -> list[float]:
    return [r[key] for r in train_steps(run) if key in r and "reward/mean" in r]


def _rollouts(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "rollouts.jsonl").read_text().splitlines()]


# what each case's uninterrupted run must show, so that the case really exercises what it names
EXERCISED = {
    "schedule_epochs_kl_dapo_hicra_dph": lambda run: {
        "dynamic sampling refilled": max(_series(run, "dynamic_sampling/tries")) > 1,
        "some responses truncated, some not": any(0 < t < 1 for t in _series(run, "response_length/truncated")),
        "KL to the reference in the loss": max(_series(run, "learner/kl")) > 0,
        "HICRA found strategic grams": max(_series(run, "hicra/num_strategic_grams")) > 0,
        "the DPH divergence term ran": max(_series(run, "learner/divergence")) > 0,
        "the length penalty shaped rewards": any(v != 0 for v in _series(run, "length_penalty/mean")),
        "the learning rate moved (warmup, cosine)": len(set(_series(run, "learner/lr"))) == STEPS,
        "2 learner ranks (the optimizer in DCP shards)":
            (run / "checkpoints" / f"step_{STEPS:06d}" / "optimizer" / ".metadata").is_file(),
    },
    "cure_kl_in_reward_armed": lambda run: {
        "CURE branched": min(_series(run, "cure/prefix_len")) > 0,
        "KL in the reward": max(_series(run, "kl_in_reward")) > 0,
        "ARMed's threshold moved between steps": len(set(_series(run, "reward/armed/tau"))) > 1,
        "LoRA adapters checkpointed": (run / "checkpoints" / f"step_{STEPS:06d}" / "adapter").is_dir(),
    },
    "search": lambda run: {
        "some samples searched, some answered at once": 0 < min(_series(run, "reward/ikea/searches"))
        and any(r["reward_info"]["ikea"]["searches"] == 0 for r in _rollouts(run)),
        "continuations after a search (passages masked)": sum("masked_tokens" in r for r in _rollouts(run)) > STEPS,
    },
    "adaptthink": lambda run: {
        "both modes sampled": min(_series(run, "reward/adaptthink/nothinking")) > 0
        and max(_series(run, "reward/adaptthink/nothinking")) < 1,
    },
    "async": lambda run: {
        "one step stale after the first": _series(run, "rollout/staleness") == [0.0] + [1.0] * (STEPS - 1),
        "rollouts.jsonl carries the weight version": [r["weight_version"] for r in _rollouts(run)][-1] == STEPS - 2,
        "TIS on by default": len(_series(run, "learner/rollout_correction/weight_mean")) == STEPS,
        "the next step's rollouts made during the update": [
            "time/ahead_generate" in json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()
            if "reward/mean" in x] == [False] + [True] * (STEPS - 1),
        "the checkpoint holds the rollouts made ahead":
            (run / "checkpoints" / f"step_{STEPS - 1:06d}" / "rollouts_ahead.pt").is_file()
            and not (run / "checkpoints" / f"step_{STEPS:06d}" / "rollouts_ahead.pt").exists(),
    },
}


def _lines_by_step(path: Path) -> dict[int, list[str]]:
    out: dict[int, list[str]] = {}
    for line in path.read_text().splitlines():
        out.setdefault(json.loads(line)["step"], []).append(line)
    return out


def _tensorboard_steps(run: Path) -> dict[str, list[int]]:
    """Steps of each scalar as TensorBoard reads the run's event files (orphaned steps purged)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [e.step for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


# Cases written but not yet seen to pass (issue 20): skipped so that `make test` stays green and says so in its summary
NOT_YET_RUN: set[str] = set()


@pytest.mark.parametrize("case", [pytest.param(c, marks=pytest.mark.skip(reason="resume matrix case written, not yet run "
                                                                       "green (issue 20)")) if c in NOT_YET_RUN else c
                                  for c in MATRIX])
def test_killed_mid_run_and_resumed_equals_the_uninterrupted_run(case, tiny_model_path, tmp_path):
    prepared, log = tmp_path / "prepared", tmp_path / "log.txt"
    prepare_case(case, tiny_model_path, prepared, log)
    recipe = MATRIX[case][0]

    def args(run):
        return matrix_overrides(case, tiny_model_path, run, prepared, STEPS) + ["logging.tensorboard=true"]

    ref, run = tmp_path / "uninterrupted", tmp_path / "killed"
    assert run_training(args(ref), recipe=recipe, log=log) == 0, log.read_text()[-3000:]
    missing = [what for what, ok in EXERCISED[case](ref).items() if not ok]
    assert not missing, f"{case}: the uninterrupted run did not exercise: {missing}"

    assert run_training(args(run), recipe=recipe, kill_at=f"learn:{KILL_STEP}", log=log) == -9
    assert (run / "checkpoints" / "latest").read_text() == f"step_{KILL_STEP - 1:06d}"
    before = {name: _lines_by_step(run / name) for name in ("metrics.jsonl", "rollouts.jsonl")}
    assert KILL_STEP in before["rollouts.jsonl"]  # the killed step had generated (and logged) its rollouts
    assert run_training(args(run), recipe=recipe, log=log) == 0, log.read_text()[-3000:]

    assert compare_runs(ref, run) == []
    assert (run / "rollouts.jsonl").read_bytes() == (ref / "rollouts.jsonl").read_bytes()  # cut back, no step twice
    after = {name: _lines_by_step(run / name) for name in before}
    for name in before:  # the steps before the checkpoint are the killed process's lines, timings and all
        assert all(after[name][s] == before[name][s] for s in before[name] if s < KILL_STEP), name
    assert [r["step"] for r in train_steps(run) if "reward/mean" in r] == list(range(1, STEPS + 1))
    tb, tb_ref = _tensorboard_steps(run), _tensorboard_steps(ref)
    assert tb.keys() == tb_ref.keys() and tb["reward/mean"] == list(range(1, STEPS + 1))
    assert all(steps == tb_ref[tag] for tag, steps in tb.items()), "TensorBoard holds a step twice or lost one"
