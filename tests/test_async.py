"""Asynchronous training (trainer.max_staleness=k) on the real stack: step s+k's rollouts are sampled by the weights
before step s's update, while the learner trains. (Exact resume of such a run: tests/test_resume_matrix.py, case
`async`.)"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from rl.config import ConfigError, load_config
from rl.data.prompts import PromptSampler
from tests.resume_harness import run_training, tiny_overrides, train_steps
from tests.test_faults import TINY_RUN


def _completions(run: Path) -> dict[int, list[tuple[int, str]]]:
    out: dict[int, list[tuple[int, str]]] = {}
    for line in (run / "rollouts.jsonl").read_text().splitlines():
        r = json.loads(line)
        out.setdefault(r["step"], []).append((r["row"], r["completion"]))
    return out


def test_async_turns_tis_on_unless_given_and_refuses_what_it_cannot_do():
    assert load_config("recipes/quickstart.yaml").algorithm.rollout_correction is None
    on = load_config("recipes/quickstart.yaml", ["trainer.max_staleness=1"]).algorithm.rollout_correction
    assert (on.name, on.cap) == ("tis", 2.0)
    given = load_config("recipes/quickstart.yaml", ["trainer.max_staleness=1", "algorithm.rollout_correction.name=icepop",
                                                    "algorithm.rollout_correction.low=0.5"])
    assert given.algorithm.rollout_correction.name == "icepop"
    assert load_config("recipes/quickstart.yaml", ["trainer.max_staleness=3"]).algorithm.rollout_correction.name == "tis"
    with pytest.raises(ConfigError, match=r"trainer.max_staleness=-1: 0 \(synchronous\) or k >= 1"):
        load_config("recipes/quickstart.yaml", ["trainer.max_staleness=-1"])
    with pytest.raises(ConfigError, match="max_staleness=1 with rollout.cure"):
        load_config("recipes/quickstart.yaml", ["trainer.max_staleness=1", "rollout.cure.branches=1"])


@pytest.mark.integration
def test_the_later_steps_rollouts_come_from_the_weights_k_steps_before(tiny_model_path, tmp_path):
    """trainer.max_staleness=2: during step 1's update the engines make steps 2 and 3 with w_0, during step 2's
    step 4 with w_1: staleness 0, 1, 2, 2."""
    log = tmp_path / "log.txt"
    # frozen: synchronous, w_0 at every step (an update of lr 1e-30 rounds away in float32)
    runs = {"async": ["trainer.max_staleness=2"], "frozen": ["learner.optim.lr=1e-30"]}
    for name, extra in runs.items():
        args = tiny_overrides(tiny_model_path, tmp_path / name, steps=4) + ["trainer.save_every=0"] + extra
        assert run_training(args, log=log) == 0, log.read_text()[-3000:]
    a, frozen = _completions(tmp_path / "async"), _completions(tmp_path / "frozen")
    # steps 2 and 3 were sampled during step 1's update, by w_0: what the frozen run (w_0 throughout) sampled
    assert a[1] == frozen[1] and a[2] == frozen[2] and a[3] == frozen[3]
    assert a[4] != frozen[4]  # step 4 by w_1: the weights were synced after step 1's update
    steps = [r for r in train_steps(tmp_path / "async") if "reward/mean" in r]
    assert [r["rollout/staleness"] for r in steps] == [0.0, 1.0, 2.0, 2.0]
    assert all(r["learner/rollout_correction/weight_mean"] > 0 for r in steps)
    versions = [json.loads(x)["weight_version"] for x in (tmp_path / "async" / "rollouts.jsonl").read_text().splitlines()]
    assert sorted(set(versions)) == [0, 1] and versions[-1] == 1


@pytest.mark.integration
def test_an_engine_lost_ahead_drops_those_rollouts_and_a_failure_ahead_keeps_the_step(
        ray_cluster, tiny_model_path, tmp_path, monkeypatch, capsys):
    """While step 2's rollouts are made ahead (during step 1's update) an engine dies: its replacement cannot get
    the weights its peers sample with, so those rollouts are dropped and step 2 is collected after the sync
    (staleness 0). Making step 4's ahead fails after scoring: a stateful reward (ARMed) forgets those scores, step 3
    is still logged and checkpointed, then the error is raised, and the same command resumes at step 4 (collected
    after the sync: the checkpoint holds no rollouts ahead)."""
    from rewards import RewardError
    from rl.cli import main
    from rl.train.trainer import Trainer

    argv = ["train", "recipes/quickstart.yaml", f"model.path={tiny_model_path}", f"output_dir={tmp_path}/run",
            *TINY_RUN, "trainer.total_steps=4", "trainer.save_every=10", "trainer.max_staleness=1",
            "rollout.num_engines=2",
            "rewards=[{name: math_verify}, {name: armed, weight: 0.5, kwargs: {window: 256}, actor: {replicas: 0}}]"]
    collect = Trainer.collect_rollouts

    def faulty(self, step, timer):
        ahead = threading.get_ident() == self._ahead_thread
        if ahead and step == 2:
            ray_cluster.kill(self.fleet.actors[1], no_restart=True)
        if ahead and step == 4:  # fails after its rollouts were scored: ARMed saw their scores
            collect(self, step, timer)
            raise RewardError("the reward service is down")
        return collect(self, step, timer)

    monkeypatch.setattr(Trainer, "collect_rollouts", faulty)
    with pytest.raises(SystemExit):
        main(argv)
    err = capsys.readouterr().err
    assert "replaced while step 2's rollouts were made ahead" in err and "the reward service is down" in err
    run = tmp_path / "run"
    logged = [r for r in train_steps(run) if "reward/mean" in r]
    assert [r["rollout/staleness"] for r in logged] == [0.0, 0.0, 1.0]
    assert [r["rollout/engine_restarts"] for r in logged] == [1.0, 1.0, 1.0]  # (logged after the wait)
    assert (run / "checkpoints" / "step_000003").is_dir()  # saved for the failure (save_every=10 saves no step here)
    assert not (run / "checkpoints" / "step_000002").exists()
    rows = {}
    for line in (run / "rollouts.jsonl").read_text().splitlines():
        r = json.loads(line)
        rows.setdefault(r["step"], set()).add(r["row"])
    data = load_config("recipes/quickstart.yaml", argv[2:]).data
    first = PromptSampler(30, data.seed, data.shuffle).next_indices(9)
    assert rows[1] | rows[2] | rows[3] == set(first)  # the dropped rollouts' prompts were drawn again: none skipped
    assert not (run / "checkpoints" / "step_000003" / "rollouts_ahead.pt").exists()
    # ARMed's window holds the scores of the samples trained on, 12 a step, not those of step 4's dropped rollouts
    armed = json.loads((run / "checkpoints" / "step_000003" / "trainer_state.json").read_text())["rewards"]["armed"]
    assert (len(armed["history"]), len(armed["pending"]), armed["step"]) == (24, 12, 3)

    monkeypatch.undo()
    main(argv)  # resumes after step 3
    logged = [r for r in train_steps(run) if "reward/mean" in r]
    assert [r["step"] for r in logged] == [1, 2, 3, 4]
    assert logged[-1]["rollout/staleness"] == 0.0
    versions = [json.loads(x)["weight_version"] for x in (run / "rollouts.jsonl").read_text().splitlines()]
    assert sorted(set(versions)) == [0, 1, 3]  # steps 1, 2 by w_0 and w_1 (2 after the sync), 3 by w_1, 4 by w_3
