"""The GRPO training loop: generate, score, advantage, update, sync weights, log, evaluate, checkpoint.

The loop is the same for every variant and names none: formulas are registry lookups (advantage estimator, policy
loss, aggregation, KL estimator, token weights, f-divergence), a step's samples come from the configured rollout
strategy (rollout/strategies.py), and methods that need more than a formula enter through their hooks
(rl/methods/base.py).
"""

from __future__ import annotations

import copy
import json
import os
import random
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Callable

import numpy as np
import ray
import torch
from ray.util.placement_group import remove_placement_group
from transformers import AutoTokenizer

from rewards import RewardError, RewardManager, RewardOutput
from rl.cluster import check_cpus, gpus_per_actor, plan_gpus, start_ray
from rl.config import Config, to_dict, to_yaml
from rl.core.advantages import compute_advantages
from rl.core.batch import Batch
from rl.data.prompts import PromptSampler, load_prompts, sample_seed
from rl.data.sources import MIRROR_ENV, DataUnavailable
from rl.eval.evaluate import evaluate
from rl.files import write_jsonl
from rl.methods import Context, build_methods
from rl.models.chat import pad_token_id
from rl.models.precision import resolve_precision
from rl.models.resolve import check_context_length, resolve_model_path
from rl.train.checkpoint import kill_point, load_trainer_state, rng_state, save_checkpoint, set_rng_state
from rl.train.learner import LearnerClient
from rl.train.learner_group import LearnerGroup, reserve
from rl.train.metrics import Progress, StepTimer, Tracker, rollout_metrics, write_rollouts
from rl.train.run_folder import RunFolder, StopOnSignal
from rollout.base import Sample, group_slices
from rollout.fleet import RolloutFleet
from rollout.strategies import make_strategy


AHEAD_FILE = "rollouts_ahead.pt"  # in a checkpoint of an asynchronous run: the next steps' batches, already made


class ReplacedAhead(Exception):
    """An engine was replaced while a later step's rollouts were made ahead: the learner is mid-update, so the
    replacement cannot get the weights its peers sample with; those rollouts are dropped and the step is collected
    after the sync (with the new weights)."""


@dataclass
class Rollouts:
    """One step's scored samples: the batch the learner trains on, what to log, and what rollouts.jsonl records.
    `weight_version`: the optimizer steps behind the weights that sampled them (step - 1 in the synchronous loop)."""

    batch: Batch
    metrics: dict[str, float]
    groups: list  # (row, samples, RewardOutput) per kept group
    weight_version: int

    def state_dict(self) -> dict:
        """Tensors, numbers and strings only: a checkpoint loads with torch.load(weights_only=True)."""
        return {"batch": {f.name: getattr(self.batch, f.name) for f in fields(Batch)}, "metrics": self.metrics,
                "weight_version": self.weight_version,
                "groups": [(r, [asdict(x) for x in samples], scores.state_dict()) for r, samples, scores in self.groups]}

    @classmethod
    def from_state_dict(cls, state: dict) -> Rollouts:
        groups = [(r, [Sample(**x) for x in samples], RewardOutput.from_state_dict(scores))
                  for r, samples, scores in state["groups"]]
        return cls(Batch(**state["batch"]), state["metrics"], groups, state["weight_version"])


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
        self.folder = RunFolder(cfg)
        self.resume_from = self.folder.find_resume()  # a changed config is refused here
        self.rewards = RewardManager(cfg.rewards, cfg.reward_policy)  # imports user reward functions
        self.model_path = resolve_model_path(cfg.model.path)
        check_context_length(self.model_path, cfg.rollout.max_model_len)
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_path)
        tok = self.tokenizer
        self.pad_id = pad_token_id(tok)
        self.train_rows, self.train_prompts, self.data_stats = load_prompts(cfg.data.train, "data.train", cfg.data, tok)
        self.rewards.check_columns([c for c in self.train_rows.column_names if c != "prompt"] + ["trainer_step"])
        self.eval_sets, self.skipped_eval_sets = self._load_eval_sets()
        self.has_answers = "answer" in self.train_rows.column_names
        self.ctx = Context(tokenizer=tok, pad_id=self.pad_id)
        self.methods = build_methods(cfg, self.ctx)
        for m in self.methods.having("train_rows"):
            self.train_rows, self.train_prompts = m.train_rows(self.train_rows, self.train_prompts)
        self.rollout = make_strategy(cfg.rollout, lambda *a, **k: self.fleet.generate(*a, **k), tok,
                                     entropy=lambda samples: self.ctx.learner.entropy(samples, self.pad_id))
        self.sampler = PromptSampler(len(self.train_rows), cfg.data.seed, cfg.data.shuffle)
        self.step, self.bad_steps, self.start_results, self._last_failure = 0, 0, None, ""
        self.ahead: list[Rollouts] = []  # trainer.max_staleness=k: the rollouts of steps self.step+1.. (up to k),
        self.pool: ThreadPoolExecutor | None = None  # made ahead on this thread
        self._ahead_thread, self._ahead_step = None, 0
        if self.resume_from is not None:
            self._restore(load_trainer_state(self.resume_from))
        self.folder.check_disk(self.model_path)

        self.folder.prepare(self.resume_from, self.step)
        self.tracker = Tracker(self.run_dir, cfg.logging, cfg.name, config_dict=to_dict(cfg),
                               resume_step=self.step if self.resume_from is not None else None)
        self.fleet = self.learner = self.placement = None
        try:
            self._start_cluster()
        except BaseException:  # (an engine or a rank that cannot start): what did start is stopped, not left behind
            self.close()
            raise

    def _load_eval_sets(self) -> tuple[dict, dict]:
        """data.eval (as `heldout`) and eval_sets, tokenised; an optional set that is not found is skipped, noted."""
        cfg, found, skipped = self.cfg, {}, {}
        sets = ({"heldout": cfg.data.eval} if cfg.data.eval is not None else {}) | dict(cfg.eval_sets)
        for name, ds in sets.items():
            key = f"eval_sets.{name}" if name != "heldout" else "data.eval"
            try:
                rows, prompts, _ = load_prompts(ds, key, cfg.data, self.tokenizer)
            except DataUnavailable as e:
                if not ds.optional:
                    raise
                skipped[name] = str(e)
                print(f"[data] skipped (optional): {e}", file=sys.stderr, flush=True)
                continue
            found[name] = (rows, prompts, ds.grader)
        return found, skipped

    def _restore(self, state: dict) -> None:
        self.step = int(state["step"])
        self.sampler.load_state_dict(state["sampler"])
        set_rng_state(state["rng"])
        self.bad_steps = int(state.get("bad_steps", 0))
        for m in self.methods.all:
            if state.get(m.name) is not None:
                m.load_state_dict(state[m.name])
        self.rewards.load_state_dict(state.get("rewards") or {})
        self.start_results = state.get("start_results")
        if (self.resume_from / AHEAD_FILE).is_file():
            saved = torch.load(self.resume_from / AHEAD_FILE, weights_only=True)
            saved = saved["steps"] if "steps" in saved else [saved]  # (one Rollouts: a checkpoint before k > 1)
            self.ahead = [Rollouts.from_state_dict(x) for x in saved]

    def _start_cluster(self) -> None:
        cfg = self.cfg
        start_ray(cfg.ray)
        check_cpus(cfg, self.rewards.actor_cpus())  # a run that cannot fit stops here, not waiting for a CPU forever
        self.rewards.start()  # reward classes become Ray actors: a scorer that cannot start fails before the engines
        plan = plan_gpus(cfg)  # learner and engines on the free GPUs: a plan that does not fit stops here
        if plan is not None:
            print("[cluster] placement (free GPUs counted per node; Ray assigns the device indices):\n"
                  + plan.describe(), flush=True)
        # the learner's GPUs first, then the engines take theirs; each bundle on its planned node
        self.placement = reserve(cfg.learner, plan.nodes(plan.learner) if plan is not None else None)
        # the rollout engines start first: on a GPU node they take their share of memory before the learner starts;
        # on CPU nodes (no such race) the learner starts while they load
        on_gpu = gpus_per_actor(cfg.rollout.num_gpus_per_engine) > 0
        self.fleet = RolloutFleet(cfg.rollout, self.model_path, seed=cfg.seed, wait=on_gpu,
                                  learner_gpus=gpus_per_actor(cfg.learner.num_gpus),
                                  nodes=plan.nodes(plan.engines) if plan is not None else None)
        policy = str(self.resume_from / "model") if self.resume_from is not None else self.model_path
        self.learner = LearnerGroup(  # learner.num_ranks actors, one FSDP2 shard each
            cfg.learner, policy, cfg.learner, cfg.algorithm.loss, cfg.algorithm.kl, total_steps=cfg.trainer.total_steps,
            max_response_tokens=cfg.rollout.sampling.max_tokens, seed=cfg.seed, ref_model_path=self.model_path,
            weights=cfg.algorithm.token_weights, divergence=cfg.algorithm.divergence,
            correction=cfg.algorithm.rollout_correction, placement=self.placement,
        )
        self.fleet.wait_ready()
        self.ctx.learner = LearnerClient(self.learner)
        self.fleet.weights_source = self._load_replacements
        if self.resume_from is not None:
            self.learner.run("load_state", str(self.resume_from))
            self.fleet.sync_weights(self.learner, version=str(self.step))

    def _load_replacements(self, engines: list) -> None:
        """A replaced engine loads the learner's current weights, which are those its peers sample with, except
        while rollouts are made ahead (the learner is mid-update): then those rollouts are dropped."""
        if threading.get_ident() == self._ahead_thread:
            raise ReplacedAhead(f"{len(engines)} engine(s) replaced while step {self._ahead_step}'s rollouts were made "
                                "ahead; collecting them after the sync instead")
        self.fleet.sync_weights(self.learner, str(self.step), engines)

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
        stop = StopOnSignal()  # SIGTERM (pre-emption): finish the step, checkpoint, exit
        progress = Progress(t.total_steps, initial=self.step, enabled=cfg.logging.progress)
        self.pool = pool = ThreadPoolExecutor(1, thread_name_prefix="rollouts-ahead") if t.max_staleness else None
        for step in range(self.step + 1, t.total_steps + 1):
            timer = StepTimer()
            # generate + score (+ groups methods drop), or the rollouts made ahead for this step
            rollouts = self.ahead.pop(0) if self.ahead else self.collect_rollouts(step, timer)
            batch, metrics = rollouts.batch, rollouts.metrics
            metrics["rollout/staleness"] = float(step - 1 - rollouts.weight_version)
            write_rollouts(self.run_dir / "rollouts.jsonl", step, rollouts.groups, rollouts.weight_version)
            with timer("advantage"):
                metrics |= self.compute_advantages(batch)
            for m in self.methods.having("shape_advantages"):
                with timer(m.name):
                    m.shape_advantages(batch, step, metrics)
            for m in self.methods.having("extra_rows"):  # rows for a method's own loss term only
                extra = m.extra_rows(step)
                batch = Batch.concat([batch, extra]) if extra is not None else batch
            # asynchronous: the engines make the rollouts of step+k (of step+1..step+k at the start) with the
            # weights before this update (on a thread of its own, which only generates and scores) while the
            # learner trains on this step
            later = range(step + 1 + len(self.ahead), min(step + t.max_staleness, t.total_steps) + 1)
            ahead = pool.submit(self._collect_ahead, later) if pool and later else None
            kill_point("learn", step)
            with timer("learn"):
                metrics |= {f"learner/{k}": v for k, v in self.learner.run("update", batch).items()}
            failed_ahead = None  # (raised once this step is logged and checkpointed: it is not lost with it)
            if ahead is not None:  # (before the sync: the engines change weights only between two steps' rollouts)
                with timer("wait_rollouts"):
                    made, failed_ahead = ahead.result()
                self.ahead += made
                if isinstance(failed_ahead, ReplacedAhead):
                    print(f"[step {step}] {failed_ahead}", file=sys.stderr, flush=True)
                    failed_ahead = None
            self._check_update(step, metrics)
            with timer("sync"):
                self.fleet.sync_weights(self.learner, version=str(step))
            metrics |= timer.split()
            metrics["rollout/engine_restarts"] = float(self.fleet.restarts)
            self.step = step
            self.tracker.log(step, metrics)
            progress.update(step, metrics)
            if t.eval_every and step % t.eval_every == 0 and step != t.total_steps:
                self.evaluate(step)
            if ((t.save_every and step % t.save_every == 0) or step == t.total_steps or stop.requested
                    or failed_ahead is not None):
                self.save(step)
            if failed_ahead is not None:
                raise failed_ahead
            if stop.requested:
                print(f"[run] stopped by signal {stop.requested} after step {step}; checkpoint saved. Run the same "
                      "command again to resume.", file=sys.stderr, flush=True)
                raise SystemExit(143)
        progress.close()
        if pool is not None:
            pool.shutdown()
        stop.restore()
        kill_point("evaluate_end", t.total_steps)
        results["end"] = self.evaluate(step=t.total_steps)
        self.folder.report(results, self.skipped_eval_sets)
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
                f"extreme values. {self.folder.resume_hint()}"
            )

    def resume_hint(self) -> str:
        return self.folder.resume_hint()

    def _draw_state(self) -> dict:
        """What collecting a step's rollouts changes: the prompt sampler's position and the rewards that keep state
        (ARMed's window). Rollouts made ahead and then dropped must leave neither moved."""
        return copy.deepcopy({"sampler": self.sampler.state_dict(), "rewards": self.rewards.state_dict()})

    def _load_draw_state(self, state: dict) -> None:
        self.sampler.load_state_dict(state["sampler"])
        self.rewards.load_state_dict(state["rewards"])

    def _collect_ahead(self, steps: range) -> tuple[list[Rollouts], Exception | None]:
        """collect_rollouts of `steps` on the background thread, in order; their phases are logged as
        time/ahead_<phase> (hidden behind the learner's update, unlike the time/<phase> of the step's own). Returns
        the rollouts made and the failure that stopped the rest: the failed step's draw (its prompts, what stateful
        rewards saw of its scores) is undone, so the step collected after the sync draws and scores it again."""
        self._ahead_thread, made = threading.get_ident(), []
        for step in steps:
            timer, drawn, self._ahead_step = StepTimer(), self._draw_state(), step
            try:
                rollouts = self.collect_rollouts(step, timer)
            except Exception as e:
                self._load_draw_state(drawn)
                return made, e
            rollouts.metrics |= {f"time/ahead_{k}": v for k, v in timer.phases.items()}
            made.append(rollouts)
        return made, None

    def collect_rollouts(self, step: int, timer: StepTimer) -> Rollouts:
        """Sample prompts, generate n responses each (the rollout strategy), score them; a method's keep_group may
        drop groups (DAPO: all rewards equal), and more prompts are sampled until the step is full or its rounds end."""
        cfg, want = self.cfg, self.cfg.trainer.prompts_per_step
        keepers = self.methods.having("keep_group")
        version = self.step  # the engines hold the weights after step self.step (self.step and the engines' weights
        # change only after this returns, also when it runs ahead on its thread)
        groups: list[tuple[int, list[Sample], RewardOutput]] = []  # (row, its samples, their rewards)
        tries, skipped, generated_count = 0, 0, 0
        self.rollout.stats.clear()
        while len(groups) < want and tries < self.methods.rounds:
            tries += 1
            rows = self.sampler.next_indices(want)
            scoring: dict[int, Callable[[], list[RewardOutput]]] = {}  # first group index -> its engine's scores

            def score_early(lo: int, groups: list[list[Sample]]) -> None:  # runs while the other engines generate
                scoring[lo] = self.score(step, rows[lo : lo + len(groups)], groups)

            with timer("generate"):
                generated = self.rollout.train(
                    [self.train_prompts[r] for r in rows], cfg.rollout.sampling,
                    [sample_seed(cfg.seed, step, r, tries) for r in rows], on_groups=score_early,
                    subseed=lambda i, *keys: sample_seed(cfg.seed, step, rows[i], tries, *keys))
            if not scoring:  # a strategy whose groups are only complete at the end: scored now
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
                if all(m.keep_group(scores.total) for m in keepers):
                    groups.append((r, samples, scores))
        groups = groups[:want]
        if skipped > cfg.reward_policy.max_skip_frac * generated_count:
            raise RewardError(
                f"step {step}: {skipped} of {generated_count} samples could not be scored (more than "
                f"reward_policy.max_skip_frac={cfg.reward_policy.max_skip_frac}); first failure:\n" + self._last_failure
            )
        if not groups:
            reasons = "; ".join(["no sample could be scored"] + [m.drop_reason for m in keepers])
            raise RuntimeError(f"step {step}: no group left to train on after {tries} generation rounds ({reasons})")
        samples = [s for _, g, _ in groups for s in g]
        batch = Batch.from_samples(samples, [gi for gi, (_, g, _) in enumerate(groups) for _ in g], self.pad_id)
        batch.rewards = torch.cat([scores.total for _, _, scores in groups])
        golds = (lambda: [self.train_rows[r]["answer"] for r, g, _ in groups for _ in g]) if self.has_answers else None
        metrics = rollout_metrics(groups, batch, golds)
        metrics |= {k: float(np.mean(v)) if v else 0.0 for k, v in self.rollout.stats.items()}
        metrics["dynamic_sampling/tries"] = float(tries)
        metrics["reward/skipped_samples"] = float(skipped)
        return Rollouts(batch, metrics, groups, version)

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
            return [out.select(s) for s in group_slices(generated)]

        return result

    def compute_advantages(self, batch: Batch) -> dict[str, float]:
        """The methods' reward shaping and token masks, then the configured advantage estimator, copied to tokens."""
        metrics: dict[str, float] = {}
        rewards = batch.rewards.clone()
        for m in self.methods.having("shape_rewards"):
            rewards = m.shape_rewards(batch, rewards, metrics)
        for m in self.methods.having("mask_tokens"):
            m.mask_tokens(batch)
        batch.rewards = rewards
        adv = compute_advantages(rewards, batch.group_ids, self.cfg.algorithm.advantage,
                                 lengths=batch.response_mask.sum(-1))
        batch.advantages = adv.unsqueeze(-1) * batch.response_mask
        metrics["advantage/abs_mean"] = float(adv.abs().mean())
        metrics["reward/shaped_mean"] = float(rewards.mean())
        return metrics

    # -- evaluation and checkpoints -------------------------------------------------------------------------
    def evaluate(self, step: int) -> dict[str, dict]:
        out = {}
        for name, (rows, prompts, grader) in self.eval_sets.items():
            metrics, records = evaluate(self.rollout.evaluate, rows, prompts, self.cfg.rollout.eval_sampling,
                                        seed=self.cfg.seed, grader=grader, close_tag=self.rollout.close_tag)
            write_jsonl(self.run_dir / "eval" / f"{name}_step_{step:06d}.jsonl", records)
            self.tracker.log(step, {f"eval/{name}/{k}": v for k, v in metrics.items()})
            out[name] = metrics
            print(f"[eval step {step}] {name}: accuracy {metrics['accuracy']:.3f} over {len(rows)} problems, "
                  f"{metrics['response_tokens']:.0f} tokens/answer", file=sys.stderr, flush=True)
        return out

    def save(self, step: int) -> Path:
        state = {
            "step": step, "sampler": self.sampler.state_dict(), "rng": rng_state(), "bad_steps": self.bad_steps,
            "start_results": self.start_results, "seed": self.cfg.seed, "data_stats": self.data_stats,
            **{m.name: s for m in self.methods.all if (s := m.state_dict()) is not None},  # HICRA's fitted clusters
            "rewards": self.rewards.state_dict(),  # rewards that keep state between steps (ARMed's threshold)
            # rollouts need no engine state: prompt i of step s, try t is sampled with this seed on any engine
            "rollout_seeds": "SeedSequence([seed, step, row, try])",
        }

        def write(folder: Path) -> None:
            self.learner.run("save", str(folder))
            self.tokenizer.save_pretrained(folder / "model")
            if self.ahead:  # made from weights this checkpoint does not hold: saved, not regenerated
                torch.save({"steps": [x.state_dict() for x in self.ahead]}, folder / AHEAD_FILE)

        return save_checkpoint(self.run_dir / "checkpoints", step, write, state, to_yaml(self.cfg),
                               self.cfg.trainer.keep_checkpoints)

    def close(self) -> None:
        """Stops what started (all of it, or what did before a failure at start)."""
        self.tracker.close()
        if self.fleet is not None:  # (first: a collect still running ahead then fails fast, replacing no engine)
            self.fleet.shutdown()
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
        self.rewards.shutdown()
        if self.learner is not None:
            self.learner.shutdown()
        elif self.placement is not None:  # reserved, and the learner's ranks never started
            remove_placement_group(self.placement)


def train(cfg: Config) -> dict:
    trainer = Trainer(cfg)
    try:
        return trainer.train()
    finally:
        trainer.close()
