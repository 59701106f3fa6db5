"""Faults on the real stack: a rollout engine killed mid-step, rewards that crash, non-finite updates, an unwritable
run folder, and what listens on the network."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest
import torch

from rewards import RewardError
from rl.config import ConfigError, load_config, to_yaml
from rl.cluster import ray_init_kwargs
from rl.train.trainer import Trainer
from rl.config.rollout import RolloutConfig, SamplingConfig
from rollout.fleet import RolloutFleet

pytestmark = pytest.mark.integration

TINY_RUN = [
    "trainer.total_steps=1", "trainer.prompts_per_step=3", "trainer.eval_at_start=false", "rollout.sampling.n=4",
    "rollout.sampling.max_tokens=12", "rollout.eval_sampling.max_tokens=4", "rollout.kv_cache_gib=1",
    "learner.micro_batch_size=12", "data.arithmetic.num_train=30", "data.arithmetic.num_eval=2", "eval_sets={}",
    "logging.progress=false", "logging.tensorboard=false",
    "algorithm.overlong=null",  # the quickstart's buffer (32) does not fit 12 tokens
]


def _config(tiny_model_path, tmp_path, *extra):
    return load_config("recipes/quickstart.yaml", [f"model.path={tiny_model_path}", f"output_dir={tmp_path}/run",
                                                   *TINY_RUN, *extra])


def test_a_killed_engine_is_replaced_resynced_and_its_prompts_redone(ray_cluster, tiny_model_path):
    """Engine 1 dies between calls, engine 0 during one (seen running `generate` just before the kill, replaced in
    that same call). The redone samples are the synced weights' (the same tokens as before the kills), not the
    model folder's: the replacement was resynced."""
    ray = ray_cluster
    fleet = RolloutFleet(RolloutConfig(num_engines=2, dtype="float32", kv_cache_gib=1, max_model_len=256,
                                       num_cpus_per_engine=0.25), tiny_model_path)
    try:
        from transformers import AutoModelForCausalLM

        prompts = [[1, 504, 3458 + i, 28] for i in range(8)]
        sampling = SamplingConfig(n=3, temperature=1.0, max_tokens=48)
        seeds = list(range(100, 108))
        tokens = lambda groups: [[s.response_ids for s in g] for g in groups]  # noqa: E731
        unsynced = tokens(fleet.generate(prompts, sampling, seeds))  # the model folder's weights
        weights = AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=torch.float32).state_dict()
        changed = {k: v * 1.5 if "layers.0.mlp" in k else v for k, v in weights.items()}  # trained weights
        fleet.update_weights(changed)
        ref = ray.put(changed)  # what the trainer points at the learner: the current weights into given engines
        fleet.weights_source = lambda actors: ray.get([a.update_weights.remote(ref) for a in actors])
        reference = tokens(fleet.generate(prompts, sampling, seeds))
        assert reference != unsynced  # the sync changes what the engines sample

        ray.kill(fleet.actors[1])  # dead before the call
        again = tokens(fleet.generate(prompts, sampling, seeds))
        assert fleet.restarts == 1

        long_sampling = SamplingConfig(n=4, temperature=1.0, max_tokens=160)  # seconds: time to see it running
        result = {}
        call = threading.Thread(target=lambda: result.setdefault("groups", fleet.generate(prompts, long_sampling,
                                                                                           seeds)))
        victim = fleet.actors[0]
        call.start()
        deadline = time.time() + 60
        while ray.get(victim.running.remote()) != "generate":
            assert time.time() < deadline, "engine 0 never started the generate call"
            time.sleep(0.01)
        ray.kill(victim)  # dies during the call
        call.join()
        assert fleet.restarts == 2  # replaced within that call: the kill came before the call returned
        assert fleet.actors[0] is not victim
        # the replacements started in the fleet's placement group (each in its predecessor's bundle)
        assert {ray.get(a.placement.remote())[0] for a in fleet.actors} == {fleet.pg.id.hex()}
        groups = result["groups"]
        assert len(groups) == len(prompts) and all(len(g) == 4 for g in groups)  # none lost, none doubled
        assert [g[0].prompt_ids for g in groups] == prompts
        # the replacements loaded the synced weights: the same tokens as before the kills, not the folder's
        assert again == reference
        assert tokens(fleet.generate(prompts, sampling, seeds)) == reference

        fleet.cfg.max_engine_restarts = 0
        ray.kill(fleet.actors[0])
        with pytest.raises(RuntimeError, match="rollout.max_engine_restarts=0"):
            fleet.generate(prompts, sampling, seeds)
    finally:
        fleet.shutdown()


def test_reward_failures_skip_or_stop_never_zero(ray_cluster, tiny_model_path, tmp_path):
    bad = "rewards=[{name: math_verify}, {fn: 'tests.reward_fixtures:fails_on_odd_length'}]"
    trainer = Trainer(_config(tiny_model_path, tmp_path / "skip", bad, "reward_policy.on_error=skip",
                              "reward_policy.max_skip_frac=1.0"))
    try:
        trainer.train()
    finally:
        trainer.close()
    run = tmp_path / "skip" / "run"
    step = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if "reward/mean" in line][0]
    kept = [json.loads(line) for line in (run / "rollouts.jsonl").read_text().splitlines()]
    assert step["reward/skipped_samples"] > 0 and step["reward/skipped_samples"] + len(kept) == 12  # all counted
    assert all(len(r["completion"]) % 2 == 0 for r in kept)  # exactly the samples the reward failed on left

    # reward_policy.max_skip_frac: the same step (same seed, same samples) with the limit just under its share of
    # failures stops there, naming the count and the key
    skipped = int(step["reward/skipped_samples"])
    limit = (skipped - 0.5) / 12
    trainer = Trainer(_config(tiny_model_path, tmp_path / "stop", bad, "reward_policy.on_error=skip",
                              f"reward_policy.max_skip_frac={limit}"))
    try:
        with pytest.raises(RewardError, match=rf"step 1: {skipped} of 12 samples could not be scored \(more than "
                                              rf"reward_policy.max_skip_frac={limit}\)"):
            trainer.train()
    finally:
        trainer.close()

    trainer = Trainer(_config(tiny_model_path, tmp_path / "fail", bad))
    try:
        with pytest.raises(RewardError) as e:
            trainer.train()
    finally:
        trainer.close()
    msg = str(e.value)
    assert "fails_on_odd_length" in msg and "ValueError: odd length" in msg and "Traceback" in msg
    assert "prompt:" in msg and "completion:" in msg and "training row" in msg


def test_non_finite_updates_are_skipped_then_the_run_stops(ray_cluster, tiny_model_path, tmp_path):
    # a KL coefficient that overflows float32 makes every loss inf * 0 = NaN: the kind of blow-up a bad lr gives
    cfg = _config(tiny_model_path, tmp_path, "algorithm.kl.coef=1e39", "trainer.total_steps=5",
                  "trainer.max_bad_steps=2", "trainer.save_every=1")
    trainer = Trainer(cfg)
    try:
        before = ray_cluster.get(trainer.learner.export_weights(None))
        with pytest.raises(FloatingPointError, match=r"2 updates in a row had a non-finite.*trainer.max_bad_steps=2"):
            trainer.train()
        after = ray_cluster.get(trainer.learner.export_weights(None))
    finally:
        trainer.close()
    assert all(torch.equal(before[k], after[k]) for k in before)  # no NaN reached the weights
    run = tmp_path / "run"
    steps = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [s["learner/skipped_update"] for s in steps] == [1.0]  # step 2 stopped before it was logged
    assert [p.name for p in (run / "checkpoints").glob("step_*")] == ["step_000001"]


def test_a_dead_learner_stops_the_run_with_where_to_resume_and_a_rerun_finishes(
        ray_cluster, tiny_model_path, tmp_path, monkeypatch, capsys):
    """The learner holds the optimizer state, so it is not replaced in place: the run stops with a clear message and
    the same command continues from the last checkpoint."""
    from rl.cli import main

    argv = ["train", "recipes/quickstart.yaml", f"model.path={tiny_model_path}", f"output_dir={tmp_path}/run",
            *TINY_RUN, "trainer.total_steps=2", "trainer.save_every=1"]
    save = Trainer.save

    def save_then_lose_the_learner(self, step):  # as the host's OOM killer would, right after step 1's checkpoint
        folder = save(self, step)
        ray_cluster.kill(self.learner.actors[0])  # a rank of the learner group
        return folder

    monkeypatch.setattr(Trainer, "save", save_then_lose_the_learner)
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 1
    err = capsys.readouterr().err
    assert "a Ray actor of the run died" in err and "Traceback" not in err
    assert f"latest checkpoint is {tmp_path}/run/checkpoints/step_000001; run the same command again" in err

    monkeypatch.undo()
    main(argv)  # resumes from step 1
    assert "[resume] continuing from" in capsys.readouterr().err
    logged = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in logged if "reward/mean" in m] == [1, 2]  # each training step once


@pytest.mark.integration
def test_a_run_whose_engines_cannot_start_leaves_nothing_running(ray_cluster, tiny_model_path, tmp_path):
    """The reward actors and the learner's placement group start before the engines; an engine that cannot start
    (here: tensor parallelism on a cluster without GPUs) stops the run, and what had started is stopped with it."""
    def free() -> float:
        return ray_cluster.available_resources().get("CPU", 0)

    deadline = time.monotonic() + 30  # an earlier test's actors and placement groups are released asynchronously
    while free() < ray_cluster.cluster_resources()["CPU"] and time.monotonic() < deadline:
        time.sleep(0.5)
    before = free()
    scorer = "rewards=[{fn: 'tests.reward_fixtures:LengthScorer', actor: {replicas: 1, num_cpus: 0.25}}]"
    with pytest.raises(ValueError, match="rollout.tensor_parallel_size=2 .* set rollout.tensor_parallel_size=1"):
        Trainer(_config(tiny_model_path, tmp_path, scorer, "rollout.tensor_parallel_size=2"))
    deadline = time.monotonic() + 30
    while free() < before and time.monotonic() < deadline:
        time.sleep(0.5)
    assert free() >= before  # the scorer's 0.25 CPU and the learner's 0.5 are free again
    assert (tmp_path / "run" / "config.yaml").is_file()  # the run folder is kept as it was


@pytest.mark.integration
def test_a_run_that_asks_for_more_cpus_than_the_cluster_has_is_refused_before_any_actor_starts(
        ray_cluster, tiny_model_path, tmp_path):
    """Ray leaves an actor that finds no CPU pending forever: 2 engines and the learner (0.5 CPU each) beside a reward
    actor of 1 CPU hung in the engines' start on a 2-CPU cluster before; now such a run is refused with the keys."""
    have, before = ray_cluster.cluster_resources()["CPU"], ray_cluster.available_resources().get("CPU", 0)
    scorer = f"rewards=[{{fn: 'tests.reward_fixtures:LengthScorer', actor: {{replicas: 1, num_cpus: {have}}}}}]"
    with pytest.raises(ValueError, match=rf"ask Ray for {have + 1.5:g} CPUs and this cluster has {have:g} .*"
                       r"rollout.num_engines=2 x rollout.num_cpus_per_engine=0.5: 1; reward 'LengthScorer'"):
        Trainer(_config(tiny_model_path, tmp_path, scorer, "rollout.num_engines=2"))
    assert ray_cluster.available_resources().get("CPU", 0) >= before  # refused before anything started


def test_learner_never_saves_non_finite_weights(tiny_model_path, tmp_path):
    from rl.config.algorithm import PolicyLossConfig
    from rl.train.learner import Learner
    from rl.config.learner import LearnerConfig

    learner = Learner(tiny_model_path, LearnerConfig(), PolicyLossConfig(), None, total_steps=1,
                      max_response_tokens=8)
    with torch.no_grad():
        next(learner.model.parameters())[0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match="non-finite weights"):
        learner.save(str(tmp_path))
    assert not any(tmp_path.iterdir())


def test_an_unwritable_run_folder_is_refused_before_anything_starts(tiny_model_path, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    cfg = _config(tiny_model_path, tmp_path, f"output_dir={blocker}/run")
    with pytest.raises(ConfigError, match="is not writable.*set output_dir"):
        Trainer(cfg)


def test_secrets_stay_out_of_saved_configs():
    cfg = load_config("recipes/quickstart.yaml", [
        "rewards=[{fn: 'tests.reward_fixtures:constant', kwargs: {api_key: sk-SECRET1, hf_token: SECRET2, value: 1}}]"])
    text = to_yaml(cfg)
    assert "SECRET" not in text and "api_key: '***'" in text and "value: 1" in text
    assert "max_tokens: 96" in text  # "tokens" is not a secret


def test_ray_dashboard_is_off_or_on_loopback(tmp_path):
    from rl.config.run import RayConfig

    assert not RayConfig().dashboard and ray_init_kwargs(RayConfig())["include_dashboard"] is False
    kwargs = ray_init_kwargs(RayConfig(dashboard=True, num_cpus=1))
    assert kwargs["include_dashboard"] is True and kwargs["dashboard_host"] == "127.0.0.1"
    import subprocess
    import sys

    code = (
        "import ray, psutil, json, sys\n"
        f"ray.init(**{kwargs!r})\n"
        "url = ray.get_runtime_context().get_node_id() and ray._private.worker.global_worker.node.address_info"
        ".get('webui_url')\n"
        "port = int(url.rsplit(':', 1)[1])\n"
        "hosts = sorted({c.laddr.ip for c in psutil.net_connections('inet') if c.status == 'LISTEN' "
        "and c.laddr.port == port})\n"
        "print(json.dumps({'url': url, 'hosts': hosts})); ray.shutdown()\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    info = json.loads(out.stdout.strip().splitlines()[-1])
    assert info["url"].startswith("127.0.0.1:") and info["hosts"] == ["127.0.0.1"], info


CLIENT = """
import sys, ray
try:
    ray.init(address=sys.argv[1], logging_level="ERROR")
    print("CONNECTED", ray.get(ray.remote(lambda: 1).remote(), timeout=120))
except Exception as e:
    print("REFUSED", type(e).__name__)
"""


def test_a_client_without_the_token_is_refused_by_the_cluster_rlvr_starts(tmp_path):
    """The local cluster that rl.cluster.start_ray starts (RAY_AUTH_MODE unset, Ray's default) wants its token: a
    client with a wrong token, or none, is refused by the GCS; a client holding the cluster's token gets in."""
    import subprocess
    import sys

    home = tmp_path / "home"  # a fresh ~/.ray: the token is generated for this cluster
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")} | {"HOME": str(home)}
    server = subprocess.Popen(
        [sys.executable, "-c", "import sys, ray\nfrom rl.cluster import start_ray\nfrom rl.config.run import RayConfig\n"
         "start_ray(RayConfig(num_cpus=1))\nprint('GCS', ray.get_runtime_context().gcs_address, flush=True)\n"
         "sys.stdin.read()\nray.shutdown()\n"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd=Path(__file__).parent.parent)
    try:
        line = server.stdout.readline()
        assert line.startswith("GCS "), line
        gcs = line.split()[1]
        token = (home / ".ray" / "auth_token").read_text().strip()
        assert token, "start_ray started a cluster without a token"

        def client(**extra) -> subprocess.Popen:  # the three clients run at once (each mostly waits on the GCS)
            e = {k: v for k, v in env.items()} | {"HOME": str(tmp_path / "elsewhere")} | extra
            return subprocess.Popen([sys.executable, "-c", CLIENT, gcs], stdout=subprocess.PIPE, text=True, env=e)

        clients = {"a wrong token": client(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN="0" * len(token)),
                   "no token": client(RAY_AUTH_MODE="disabled"),  # sends no token at all
                   "the cluster's token": client(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token)}
        said = {who: c.communicate(timeout=300)[0].strip().splitlines()[-1] for who, c in clients.items()}
        assert said == {"a wrong token": "REFUSED ConnectionError", "no token": "REFUSED ConnectionError",
                        "the cluster's token": "CONNECTED 1"}, said
    finally:
        server.stdin.close()
        server.wait(timeout=120)


def test_a_disk_that_cannot_hold_one_checkpoint_stops_the_run_before_it_starts(tiny_model_path, tmp_path):
    """The start-up disk check: a checkpoint needs about 3x the weights (weights + two Adam moments). A model whose
    weight file is larger than a third of the free space (a sparse file: its size, not its blocks) is refused before
    anything is written, naming the space and the fix."""
    import shutil

    from rl.train.checkpoint import CheckpointError

    model = tmp_path / "model"
    shutil.copytree(tiny_model_path, model)
    free = shutil.disk_usage(tmp_path).free
    os.truncate(model / "model.safetensors", free // 2)  # 3 x free/2 > free
    out = tmp_path / "out"
    cfg = load_config("recipes/quickstart.yaml", [f"model.path={model}", f"output_dir={out}", *TINY_RUN])
    with pytest.raises(CheckpointError, match=r"has [\d.]+ GiB free; a checkpoint needs about [\d.]+ GiB; free space "
                                              r"or put output_dir on another disk"):
        Trainer(cfg)
    assert not out.exists()  # nothing written
