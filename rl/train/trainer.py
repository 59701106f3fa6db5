"""The GRPO training loop: generate, score, advantage, update, sync weights, log, evaluate, checkpoint.

Everything algorithmic is a registry lookup (advantage estimator, policy loss, aggregation, KL estimator); the loop
itself is the same for every variant.
"""

from __future__ import annotations

import functools
import json
import os
import random
import shutil
import signal
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable

import numpy as np
import ray
import torch
from omegaconf import OmegaConf
from transformers import AutoTokenizer

from rewards import RewardError, RewardManager, RewardOutput
from rewards.answers import math_verify_reward
from rl.core.advantages import compute_advantages
from rl.core.batch import Batch
from rl.train.checkpoint import (
    CheckpointError, kill_point, latest_checkpoint, load_trainer_state, rng_state, save_checkpoint, set_rng_state,
    write_atomic,
)
from rl.config import Config, ConfigError, config_changes, to_dict, to_yaml
from rl.core.dapo import informative_groups, overlong_penalty
from rl.methods.dph import DPHData
from rl.data.prompts import PromptSampler, load_prompts, sample_seed
from rl.data.sources import MIRROR_ENV, DataUnavailable
from rl.eval.evaluate import evaluate, write_records
from rl.core.kl import kl_penalized_rewards, kl_penalty
from rl.cluster import gpus_per_actor, start_ray
from rl.train.learner import Learner
from rl.train.metrics import StepTimer, Tracker
from rl.models.resolve import check_context_length, resolve_model_path
from rl.methods.hicra import PlanningDetector, dense_mask, hicra_advantages
from rl.models.precision import resolve_precision
from rewards.knowledge import PassageStore
from rollout.adaptive import adaptive_rollout, free_rollout
from rollout.base import Sample, SamplingConfig
from rollout.cure import assemble_group, branch_prompt, critical_position
from rollout.fleet import RolloutFleet
from rollout.search import search_rollout

CURE_KEY = 0xC0E  # seeds CURE's choice of critical tokens and its continuations apart from the first samples


class Trainer:
    def __init__(self, cfg: Config):
        self.cfg = cfg = resolve_precision(cfg)  # dtype auto -> this machine's choice (printed, kept in config.yaml)
        self.run_dir = Path(cfg.output_dir)
        random.seed(cfg.seed)
        np.random.seed(cfg.seed)
        torch.manual_seed(cfg.seed)

        if cfg.data.mirror:  # rewards and Ray actors find mirrored files (knowrl/train.json) through the environment
            os.environ[MIRROR_ENV] = str(Path(cfg.data.mirror).expanduser().absolute())
        # Everything that can fail on bad input happens before the cluster and the engines start.
        self.resume_from = self._find_resume()  # a changed config is refused here
        self.rewards = RewardManager(cfg.rewards, cfg.reward_policy)  # imports user reward functions
        self.model_path = resolve_model_path(cfg.model.path)
        check_context_length(self.model_path, cfg.rollout.max_model_len)
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_path)
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        self.train_rows, self.train_prompts, self.data_stats = load_prompts(cfg.data.train, "data.train", cfg.data,
                                                                           self.tokenizer)
        self.rewards.check_columns([c for c in self.train_rows.column_names if c != "prompt"] + ["trainer_step"])
        self.eval_sets, self.skipped_eval_sets = {}, {}
        sets = ({"heldout": cfg.data.eval} if cfg.data.eval is not None else {}) | dict(cfg.eval_sets)
        for name, ds in sets.items():
            key = f"eval_sets.{name}" if name != "heldout" else "data.eval"
            try:
                rows, prompts, _ = load_prompts(ds, key, cfg.data, self.tokenizer)
            except DataUnavailable as e:
                if not ds.optional:
                    raise
                self.skipped_eval_sets[name] = str(e)
                print(f"[data] skipped (optional): {e}", file=sys.stderr, flush=True)
                continue
            self.eval_sets[name] = (rows, prompts, ds.grader)
        self.has_answers = "answer" in self.train_rows.column_names
        self.dph = self._load_dph() if cfg.algorithm.divergence.name != "none" else None
        self.planning = PlanningDetector(cfg.algorithm.hicra, cfg.seed) if cfg.algorithm.hicra.alpha > 0 else None
        search = cfg.rollout.search
        self.knowledge = PassageStore.from_config(search.knowledge) if search.enabled else None  # indexed once, cached
        self.sampler = PromptSampler(len(self.train_rows), cfg.data.seed, cfg.data.shuffle)
        self.step, self.bad_steps, self.start_results, self._last_failure = 0, 0, None, ""
        if self.resume_from is not None:
            self._restore(load_trainer_state(self.resume_from))
        self._check_disk()

        self._prepare_run_dir()
        self.tracker = Tracker(self.run_dir, cfg.logging, cfg.name, config_dict=to_dict(cfg),
                               resume_step=self.step if self.resume_from is not None else None)
        self._start_cluster()

    def _load_dph(self) -> DPHData:
        """DPH-RL: pi0's stored samples; RL trains on the questions pi0 has not mastered (D_exp) only."""
        dph = DPHData.load(self.cfg.algorithm.divergence.data)
        dph.check_matches(self.cfg.model.path, len(self.train_prompts), self.cfg.data.train.source)
        if not dph.exp_rows:
            raise ValueError(f"algorithm.divergence.data: pi0 masters every training question, nothing is left to "
                             f"explore; raise algorithm.divergence.perfect_threshold or use harder data")
        self.train_rows = self.train_rows.select(dph.exp_rows)
        self.train_prompts = [self.train_prompts[i] for i in dph.exp_rows]
        print(f"[dph] training on {len(dph.exp_rows)} questions pi0 has not mastered; {len(dph)} pi0 samples for the "
              f"{self.cfg.algorithm.divergence.name} term", file=sys.stderr)
        return dph

    # -- resume -------------------------------------------------------------------------------------------------
    def _find_resume(self) -> Path | None:
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

    def _restore(self, state: dict) -> None:
        self.step = int(state["step"])
        self.sampler.load_state_dict(state["sampler"])
        set_rng_state(state["rng"])
        self.bad_steps = int(state.get("bad_steps", 0))
        if self.planning is not None and state.get("hicra") is not None:
            self.planning.load_state_dict(state["hicra"])
        self.rewards.load_state_dict(state.get("rewards") or {})
        self.start_results = state.get("start_results")

    def _check_disk(self) -> None:
        """A checkpoint holds the weights and two Adam moments (about 3x the model in learner.dtype): fail now, not at
        the first save, when the disk cannot hold even one."""
        probe = self.run_dir if self.run_dir.exists() else next(p for p in self.run_dir.parents if p.exists())
        model = Path(self.model_path)
        weights = sum(f.stat().st_size for f in model.glob("*.safetensors")) if model.is_dir() else 0
        need, free = 3 * weights, shutil.disk_usage(probe).free
        if need > free:
            raise CheckpointError(f"output_dir {str(self.run_dir)!r} has {free / 2**30:.1f} GiB free; a checkpoint needs "
                                  f"about {need / 2**30:.1f} GiB; free space or put output_dir on another disk")

    def _prepare_run_dir(self) -> None:
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
        if self.resume_from is None and logs:
            keep = self.run_dir / "attempts" / time.strftime("%Y%m%d-%H%M%S")
            keep.mkdir(parents=True, exist_ok=True)
            for f in logs + [p for p in (self.run_dir / "tensorboard", self.run_dir / "eval") if p.exists()]:
                shutil.move(str(f), keep / f.name)
            print(f"[run] earlier logs without a checkpoint moved to {keep}", file=sys.stderr)
        elif self.resume_from is not None:
            for f in logs:
                _truncate_jsonl(f, self.step)
        (self.run_dir / "config.yaml").write_text(to_yaml(self.cfg))

    def _start_cluster(self) -> None:
        cfg = self.cfg
        start_ray(cfg.ray)
        gpus = gpus_per_actor(cfg.learner.num_gpus)
        self.rewards.start()  # reward classes become Ray actors: a scorer that cannot start fails before the engines
        # the rollout engines start first: on a GPU node they take their share of memory before the learner
        self.fleet = RolloutFleet(cfg.rollout, self.model_path, seed=cfg.seed)
        policy = str(self.resume_from / "model") if self.resume_from is not None else self.model_path
        self.learner = ray.remote(Learner).options(num_cpus=cfg.learner.num_cpus, num_gpus=gpus).remote(
            policy, cfg.learner, cfg.algorithm.loss, cfg.algorithm.kl, total_steps=cfg.trainer.total_steps,
            max_response_tokens=cfg.rollout.sampling.max_tokens, seed=cfg.seed, ref_model_path=self.model_path,
            weights=cfg.algorithm.token_weights, divergence=cfg.algorithm.divergence,
        )
        ray.get(self.learner.ready.remote())
        self.fleet.weights_source = self._export_weights  # a replaced engine loads the learner's current weights
        if self.resume_from is not None:
            ray.get(self.learner.load_state.remote(str(self.resume_from)))
            self.fleet.update_weights(self._export_weights())

    def _export_weights(self) -> "ray.ObjectRef":
        return self.learner.export_weights.remote(self.cfg.rollout.dtype)

    # -- one step, as the algorithm reads ---------------------------------------------------------------------
    def train(self) -> dict:
        cfg, t = self.cfg, self.cfg.trainer
        results: dict[str, dict] = {}
        done = self.run_dir / "results.json"
        if self.step >= t.total_steps and done.exists():
            print(f"[run] already at step {self.step} of trainer.total_steps={t.total_steps}; raise it to train on",
                  file=sys.stderr)
            return json.loads(done.read_text())
        # (at total_steps without results.json: stopped between the last checkpoint and the final evaluation; do it)
        if self.step == 0 and t.eval_at_start:
            self.start_results = self.evaluate(step=0)
        if self.start_results is not None:
            results["start"] = self.start_results
        stop = _StopOnSignal()  # SIGTERM (pre-emption): finish the step, checkpoint, exit
        progress = _progress(t.total_steps, initial=self.step, enabled=cfg.logging.progress)
        for step in range(self.step + 1, t.total_steps + 1):
            timer = StepTimer()
            batch, metrics = self.collect_rollouts(step, timer)  # generate + score (+ dynamic sampling)
            with timer("advantage"):
                metrics |= self.compute_advantages(batch)
            if self.planning is not None:  # HICRA: a larger advantage on planning tokens
                with timer("hicra"):
                    metrics |= self.boost_planning(batch, step)
            if self.dph is not None:  # DPH-RL: pi0's samples join the batch for the divergence term only
                extra = self.dph.batch(sample_seed(cfg.seed, step, -1), cfg.algorithm.divergence.samples_per_step,
                                       self.pad_id)
                batch = Batch.concat([batch, extra]) if extra is not None else batch
            kill_point("learn", step)
            with timer("learn"):
                metrics |= {f"learner/{k}": v for k, v in ray.get(self.learner.update.remote(batch)).items()}
            self._check_update(step, metrics)
            with timer("sync"):
                self.fleet.update_weights(self._export_weights())
            metrics |= timer.split()
            metrics["rollout/engine_restarts"] = float(self.fleet.restarts)
            self.step = step
            self.tracker.log(step, metrics)
            progress.update(step, metrics)
            if t.eval_every and step % t.eval_every == 0 and step != t.total_steps:
                self.evaluate(step)
            if (t.save_every and step % t.save_every == 0) or step == t.total_steps or stop.requested:
                self.save(step)
            if stop.requested:
                print(f"[run] stopped by signal {stop.requested} after step {step}; checkpoint saved. Run the same "
                      "command again to resume.", file=sys.stderr, flush=True)
                raise SystemExit(143)
        progress.close()
        stop.restore()
        kill_point("evaluate_end", t.total_steps)
        results["end"] = self.evaluate(step=t.total_steps)
        self._report(results)
        return results

    def _check_update(self, step: int, metrics: dict) -> None:
        """A non-finite loss or gradient skips the update (in the learner); too many in a row stop the run."""
        if metrics.get("learner/skipped_update", 0.0) > 0:
            self.bad_steps += 1
            print(f"[step {step}] non-finite loss or gradient: update skipped "
                  f"({self.bad_steps} in a row, trainer.max_bad_steps={self.cfg.trainer.max_bad_steps})",
                  file=sys.stderr, flush=True)
        else:
            self.bad_steps = 0
        metrics["learner/bad_steps_in_a_row"] = float(self.bad_steps)
        if self.bad_steps >= self.cfg.trainer.max_bad_steps:
            raise FloatingPointError(
                f"step {step}: {self.bad_steps} updates in a row had a non-finite loss or gradient "
                f"(trainer.max_bad_steps={self.cfg.trainer.max_bad_steps}); stopping, nothing saved after the "
                f"failures. Lower learner.optim.lr, keep learner.optim.grad_clip on, or check the rewards for "
                f"extreme values. {self.resume_hint()}"
            )

    def resume_hint(self) -> str:
        """Where a rerun of the same command continues from, for messages when a run stops."""
        ckpts = self.run_dir / "checkpoints"
        last = latest_checkpoint(ckpts) if ckpts.is_dir() else None
        if last is None:
            return "No checkpoint was written yet: a rerun starts from the beginning (trainer.save_every sets how often)."
        return f"The latest checkpoint is {last}; run the same command again to continue from it (resume=auto)."

    def collect_rollouts(self, step: int, timer: StepTimer) -> tuple[Batch, dict]:
        """Sample prompts, generate n responses each, score them; with dynamic sampling, keep only groups whose
        rewards differ and sample more prompts until the step is full or max_tries is reached."""
        cfg = self.cfg
        ds = cfg.algorithm.dynamic_sampling
        want = cfg.trainer.prompts_per_step
        groups: list[tuple[int, list[Sample], RewardOutput]] = []  # (row, its samples, their rewards)
        tries, skipped, generated_count = 0, 0, 0
        cure_stats: dict[str, list[float]] = {"branched": [], "prefix_len": [], "critical_entropy": []}
        while len(groups) < want and tries < (ds.max_tries if ds.enabled else 1):
            tries += 1
            rows = self.sampler.next_indices(want)
            scoring: dict[int, Callable[[], list[RewardOutput]]] = {}  # first group index -> its engine's scores

            def score_early(lo: int, groups: list[list[Sample]]) -> None:  # runs while the other engines generate
                scoring[lo] = self.score(step, rows[lo : lo + len(groups)], groups)

            with timer("generate"):
                generated = self.generate(
                    [self.train_prompts[r] for r in rows], cfg.rollout.sampling,
                    [sample_seed(cfg.seed, step, r, tries) for r in rows],
                    on_groups=None if cfg.rollout.cure.enabled else score_early,
                )
            if cfg.rollout.cure.enabled:  # CURE: each group grows by continuations from critical tokens
                with timer("cure"):
                    generated = self.cure_branch(step, rows, tries, generated, cure_stats)
            if not scoring:  # CURE, search or adaptive thinking: scored once the groups are complete
                scoring[0] = self.score(step, rows, generated)
            generated_count += sum(len(g) for g in generated)
            with timer("reward"):  # the part of scoring that generation did not hide
                scored = [scores for lo in sorted(scoring) for scores in scoring[lo]()]
            for r, samples, scores in zip(rows, generated, scored):
                skipped += int(scores.failed.sum())
                if scores.failed.any():  # reward_policy.on_error=skip: these samples leave the loss (counted below)
                    keep = torch.nonzero(~scores.failed).flatten()
                    samples, scores = [samples[i] for i in keep], scores.select(keep)
                    if not samples:
                        continue
                one_group = torch.zeros(len(samples), dtype=torch.long)
                if ds.enabled and not informative_groups(scores.total, one_group).any():
                    continue  # all rewards equal: zero advantage, no signal
                groups.append((r, samples, scores))
        groups = groups[:want]
        if skipped > cfg.reward_policy.max_skip_frac * generated_count:
            raise RewardError(
                f"step {step}: {skipped} of {generated_count} samples could not be scored (more than "
                f"reward_policy.max_skip_frac={cfg.reward_policy.max_skip_frac}); first failure:\n" + self._last_failure
            )
        if not groups:
            raise RuntimeError(
                f"step {step}: dynamic sampling found no group with differing rewards in {tries} tries; "
                "raise algorithm.dynamic_sampling.max_tries or check the reward function"
            )
        samples = [s for _, g, _ in groups for s in g]
        batch = Batch.from_sequences(
            [s.prompt_ids for s in samples], [s.response_ids for s in samples], [s.logprobs for s in samples],
            [gi for gi, (_, g, _) in enumerate(groups) for _ in g], self.pad_id, [s.loss_mask for s in samples],
        )
        batch.rewards = torch.cat([scores.total for _, _, scores in groups])
        if cfg.rollout.cure.enabled:
            batch.prefix_lengths = torch.tensor([s.prefix_len for s in samples], dtype=torch.long)
        metrics = self._rollout_metrics(groups, samples, batch)
        if cure_stats["branched"]:
            metrics |= {f"cure/{k}": float(np.mean(v)) if v else 0.0 for k, v in cure_stats.items()}
        metrics["dynamic_sampling/tries"] = float(tries)
        metrics["reward/skipped_samples"] = float(skipped)
        self._write_rollouts(step, groups)
        return batch, metrics

    def generate(self, prompts: list[list[int]], sampling: SamplingConfig, seeds: list[int],
                 on_groups: Callable | None = None) -> list[list[Sample]]:
        """The fleet's samples; with rollout.search, the multi-turn search rollout (rollout/search.py) over the
        knowledge source; with rollout.adaptive_thinking, AdaptThink's forced modes (rollout/adaptive.py). Their
        groups are only complete at the end, so on_groups is not called."""
        search, adaptive = self.cfg.rollout.search, self.cfg.rollout.adaptive_thinking
        if adaptive.enabled:
            rollout = adaptive_rollout if adaptive.forced_modes else free_rollout
            return rollout(self.fleet.generate, self.tokenizer, prompts, sampling, seeds, adaptive)
        if not search.enabled:
            return self.fleet.generate(prompts, sampling, seeds, on_groups=on_groups)
        retrieve = lambda q: [f"{p.title}: {p.text}" for p in self.knowledge.search(q, search.top_k)]  # noqa: E731
        return search_rollout(self.fleet.generate, self.tokenizer, prompts, sampling, seeds, retrieve, search)

    def cure_branch(self, step: int, rows: list[int], tries: int, generated: list[list[Sample]],
                    stats: dict[str, list[float]]) -> list[list[Sample]]:
        """CURE stage 1: the current policy's entropy at every response token (the learner), one critical position per
        response (rollout/cure.py), `rollout.cure.branches` continuations from each prompt + prefix (the fleet);
        group i becomes its n1 responses and their n1 * n2 continuations. Seeded per (step, row, try): reruns repeat."""
        cfg, cure, tok = self.cfg, self.cfg.rollout.cure, self.tokenizer
        flat = [s for g in generated for s in g]
        probe = Batch.from_sequences([s.prompt_ids for s in flat], [s.response_ids for s in flat],
                                     [s.logprobs for s in flat], range(len(flat)), self.pad_id)
        _, entropy = ray.get(self.learner.compute_logprobs_and_entropy.remote(probe))
        special, k = set(tok.all_special_ids), 0
        points, branches = [], []  # per group: critical positions; flat: (group, sample, idx, seed)
        for gi, (r, group) in enumerate(zip(rows, generated)):
            rng = np.random.default_rng(sample_seed(cfg.seed, step, r, tries, CURE_KEY))
            points.append([])
            for si, s in enumerate(group):
                n = len(s.prompt_ids)
                h = entropy[k, n : n + len(s.response_ids)].tolist()
                idx = critical_position(h, [tok.decode([t]) for t in s.response_ids],
                                        [t in special for t in s.response_ids], cure, rng)
                points[-1].append(idx)
                stats["branched"].append(float(idx is not None))
                if idx is not None:
                    branches.append((gi, s, idx, sample_seed(cfg.seed, step, r, tries, CURE_KEY, si)))
                    stats["prefix_len"].append(float(idx))
                    stats["critical_entropy"].append(h[idx])
                k += 1
        if not branches:
            return generated
        max_tokens = cfg.rollout.sampling.max_tokens
        sampling = replace(cfg.rollout.sampling, n=cure.branches, max_tokens=max_tokens - min(b[2] for b in branches))
        kids = self.fleet.generate([branch_prompt(s, idx) for _, s, idx, _ in branches], sampling,
                                   [seed for *_, seed in branches])
        decode = lambda ids: tok.decode(ids, skip_special_tokens=True)  # noqa: E731 (as the engines decode)
        out = []
        for gi, group in enumerate(generated):
            mine = [kid for (g, *_), kid in zip(branches, kids) if g == gi]
            out.append(assemble_group(group, points[gi], mine, max_tokens, decode))
        return out

    def score(self, step: int, rows: list[int], generated: list[list[Sample]]) -> Callable[[], list[RewardOutput]]:
        """Starts every reward function on the samples of these groups, in the background; the returned function
        waits and gives one RewardOutput per group. Rewards get the rows' data columns and `trainer_step`. A failure
        stops the run (reward_policy.on_error=fail) or marks the samples (skip); the message names the training row."""
        flat_rows = [r for r, g in zip(rows, generated) for _ in g]
        columns = {c: [self.train_rows[r][c] for r in flat_rows] for c in self.train_rows.column_names if c != "prompt"}
        columns["trainer_step"] = [step] * len(flat_rows)
        prompts, completions = [self.train_rows[r]["prompt"] for r in flat_rows], [s.text for g in generated for s in g]
        future = self.rewards.submit(prompts, completions, columns)

        def result() -> list[RewardOutput]:
            try:
                out = future.result()
            except RewardError as e:
                raise RewardError(f"{e}\n(training row {flat_rows[0] if flat_rows else '?'} onwards)") from None
            for f in out.failures[:1]:
                self._last_failure = (self.rewards.describe(f, prompts, completions) +
                                      f" (training row {flat_rows[f.index or 0]})")
                print(f"[reward] skipped {int(out.failed.sum())} samples; first: {self._last_failure}", file=sys.stderr)
            bounds = np.cumsum([0] + [len(g) for g in generated]).tolist()
            return [out.select(slice(lo, hi)) for lo, hi in zip(bounds, bounds[1:])]

        return result

    def compute_advantages(self, batch: Batch) -> dict[str, float]:
        """Reward shaping (overlong, KL in reward), then the configured advantage estimator, copied to tokens."""
        alg = self.cfg.algorithm
        rewards = batch.rewards.clone()
        lengths = batch.answer_lengths
        truncated = lengths >= self.cfg.rollout.sampling.max_tokens
        metrics: dict[str, float] = {}
        if alg.overlong.buffer > 0:
            rewards = rewards + overlong_penalty(lengths, self.cfg.rollout.sampling.max_tokens, alg.overlong.buffer,
                                                 alg.overlong.factor)
        if alg.kl.coef > 0 and alg.kl.in_reward:
            policy = ray.get(self.learner.compute_logprobs.remote(batch))
            batch.ref_logprobs = ray.get(self.learner.compute_logprobs.remote(batch, reference=True))
            kl = kl_penalty(policy, batch.ref_logprobs, alg.kl.estimator) * batch.response_mask
            rewards = kl_penalized_rewards(rewards, kl, batch.response_mask, alg.kl.coef)
            metrics["kl_in_reward"] = float(kl.sum() / batch.response_mask.sum().clamp(min=1))
        if alg.overlong.mask_truncated:
            batch.response_mask = batch.response_mask * (~truncated).float().unsqueeze(-1)
        batch.rewards = rewards
        adv = compute_advantages(rewards, batch.group_ids, alg.advantage, lengths=batch.response_mask.sum(-1))
        batch.advantages = adv.unsqueeze(-1) * batch.response_mask
        metrics["advantage/abs_mean"] = float(adv.abs().mean())
        metrics["reward/shaped_mean"] = float(rewards.mean())
        return metrics

    def boost_planning(self, batch: Batch, step: int) -> dict[str, float]:
        """HICRA: A' = A + alpha |A| on the planning tokens of each response (rl/methods/hicra.py)."""
        responses = [batch.input_ids[i][batch.response_mask[i] > 0].tolist() for i in range(len(batch))]
        flags, metrics = self.planning(None, responses, self.tokenizer, step)  # fitted on the decoded responses
        batch.advantages = hicra_advantages(batch.advantages, dense_mask(batch.response_mask, flags),
                                            self.cfg.algorithm.hicra.alpha)
        return metrics

    def _rollout_metrics(self, groups, samples: list[Sample], batch: Batch) -> dict[str, float]:
        lengths = batch.answer_lengths
        m = {
            "reward/mean": float(batch.rewards.mean()),
            "reward/std": float(batch.rewards.std()) if len(batch) > 1 else 0.0,
            "response_length/mean": float(lengths.mean()),
            "response_length/max": float(lengths.max()),
            "response_length/truncated": float(np.mean([s.truncated for s in samples])),
            "groups/all_equal_frac": float(np.mean([bool((o.total == o.total[0]).all()) for _, _, o in groups])),
        }
        for label in groups[0][2].per_function:
            values = torch.cat([o.per_function[label] for _, _, o in groups])
            m[f"reward/{label}/mean"] = float(values.nanmean())
            m[f"reward/{label}/std"] = float(values[~values.isnan()].std()) if (~values.isnan()).sum() > 1 else 0.0
        for key in sorted({k for _, _, o in groups for k in o.extras}):  # what the rewards report beside their value
            values = torch.cat([o.extras.get(key, torch.full((len(o.total),), float("nan"))) for _, _, o in groups])
            if (~values.isnan()).any():
                m[f"reward/{key}"] = float(values.nanmean())
        if "reward/math_verify/mean" in m:  # the configured reward already is the accuracy: do not score twice
            m["accuracy"] = m["reward/math_verify/mean"]
        elif self.has_answers:
            golds = [self.train_rows[r]["answer"] for r, g, _ in groups for _ in g]
            m["accuracy"] = float(np.mean(math_verify_reward(None, [s.text for s in samples], answer=golds)))
        return m

    def _write_rollouts(self, step: int, groups) -> None:
        with open(self.run_dir / "rollouts.jsonl", "a", encoding="utf-8") as f:
            for r, samples, scores in groups:
                for s, rew, info in zip(samples, scores.total.tolist(), scores.info):
                    record = {"step": step, "row": r, "completion": s.text, "reward": rew, "finish": s.finish_reason}
                    if s.prefix_len:  # a CURE continuation: its first prefix_len tokens came from another sample
                        record["prefix_len"] = s.prefix_len
                    if info:  # what the reward functions returned beside the value, per function
                        record["reward_info"] = info
                    f.write(json.dumps(record, ensure_ascii=False) + "\n")

    # -- evaluation and checkpoints -------------------------------------------------------------------------
    def evaluate(self, step: int) -> dict[str, dict]:
        out, adaptive = {}, self.cfg.rollout.adaptive_thinking
        generate = (functools.partial(free_rollout, self.fleet.generate, self.tokenizer, cfg=adaptive)
                    if adaptive.enabled else self.generate)  # AdaptThink is evaluated on the model's own choice
        for name, (rows, prompts, grader) in self.eval_sets.items():
            metrics, records = evaluate(generate, rows, prompts, self.cfg.rollout.eval_sampling, seed=self.cfg.seed,
                                        grader=grader, close_tag=adaptive.close_tag if adaptive.enabled else None)
            write_records(self.run_dir / "eval" / f"{name}_step_{step:06d}.jsonl", records)
            self.tracker.log(step, {f"eval/{name}/{k}": v for k, v in metrics.items()})
            out[name] = metrics
            print(f"[eval step {step}] {name}: accuracy {metrics['accuracy']:.3f} over {len(rows)} problems, "
                  f"{metrics['response_tokens']:.0f} tokens/answer", file=sys.stderr, flush=True)
        return out

    def save(self, step: int) -> Path:
        state = {
            "step": step, "sampler": self.sampler.state_dict(), "rng": rng_state(), "bad_steps": self.bad_steps,
            "start_results": self.start_results, "seed": self.cfg.seed, "data_stats": self.data_stats,
            "hicra": self.planning.state_dict() if self.planning is not None else None,
            "rewards": self.rewards.state_dict(),  # rewards that keep state between steps (ARMed's threshold)
            # rollouts need no engine state: prompt i of step s, try t is sampled with this seed on any engine
            "rollout_seeds": "SeedSequence([seed, step, row, try])",
        }

        def write(folder: Path) -> None:
            ray.get(self.learner.save.remote(str(folder)))
            self.tokenizer.save_pretrained(folder / "model")

        return save_checkpoint(self.run_dir / "checkpoints", step, write, state, to_yaml(self.cfg),
                               self.cfg.trainer.keep_checkpoints)

    def _report(self, results: dict) -> None:
        lines = ["", f"{'eval set':<12} {'start':>8} {'end':>8} {'change':>8}"]
        for name, end in results["end"].items():
            start = results.get("start", {}).get(name)
            s = f"{start['accuracy']:8.3f}" if start else f"{'-':>8}"
            d = f"{end['accuracy'] - start['accuracy']:+8.3f}" if start else f"{'-':>8}"
            lines.append(f"{name:<12} {s} {end['accuracy']:8.3f} {d}")
        lines += [f"{name:<12} {'skipped: not found (see [data] above)':>26}" for name in self.skipped_eval_sets]
        if self.skipped_eval_sets:
            results["skipped_eval_sets"] = self.skipped_eval_sets
        print("\n".join(lines), flush=True)
        write_atomic(self.run_dir / "results.json", json.dumps(results, indent=1))  # written last: the run is done

    def close(self) -> None:
        self.tracker.close()
        self.fleet.shutdown()
        self.rewards.shutdown()
        ray.kill(self.learner)


class _progress:
    """tqdm bar with the numbers a user watches: reward, accuracy, step time."""

    def __init__(self, total: int, initial: int, enabled: bool):
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, initial=initial, desc="GRPO", disable=not enabled, dynamic_ncols=True)

    def update(self, step: int, m: dict) -> None:
        post = {"reward": f"{m['reward/mean']:.3f}", "step_s": f"{m['time/step']:.1f}"}
        if "accuracy" in m:
            post["acc"] = f"{m['accuracy']:.3f}"
        post["len"] = f"{m['response_length/mean']:.0f}"
        self.bar.set_postfix(post)
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


class _StopOnSignal:
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


def _truncate_jsonl(path: Path, max_step: int) -> None:
    """Keep the lines logged up to `max_step` (the resumed checkpoint); later ones are redone by the resumed run."""
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line).get("step", 0) <= max_step:
                kept.append(line)
        except json.JSONDecodeError:  # a line cut by the crash
            continue
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(k + "\n" for k in kept), encoding="utf-8")
    tmp.replace(path)


def train(cfg: Config) -> dict:
    trainer = Trainer(cfg)
    try:
        return trainer.train()
    finally:
        trainer.close()
