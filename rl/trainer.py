"""The GRPO training loop: generate, score, advantage, update, sync weights, log, evaluate, checkpoint.

Everything algorithmic is a registry lookup (advantage estimator, policy loss, aggregation, KL estimator); the loop
itself is the same for every variant.
"""

from __future__ import annotations

import json
import random
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import ray
import torch
from transformers import AutoTokenizer

from rewards import RewardManager
from rewards.answers import math_verify_reward
from rl.advantages import compute_advantages
from rl.batch import Batch
from rl.checkpoint import save_checkpoint
from rl.config import Config, to_yaml
from rl.dapo import informative_groups, overlong_penalty
from rl.data import PromptSampler, load_dataset_rows, prepare_prompts
from rl.evaluate import evaluate, write_records
from rl.kl import kl_penalized_rewards, kl_penalty
from rl.learner import LearnerActor
from rl.metrics import StepTimer, Tracker
from rl.models import resolve_model_path
from rollout.base import Sample
from rollout.fleet import RolloutFleet


def sample_seed(*keys: int) -> int:
    """A seed for one prompt's rollout from (run seed, step, prompt row, try): rollouts repeat on a rerun."""
    return int(np.random.SeedSequence([k & 0xFFFFFFFF for k in keys]).generate_state(1)[0] & 0x7FFFFFFF)


class Trainer:
    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.run_dir = Path(cfg.output_dir)
        random.seed(cfg.seed)
        np.random.seed(cfg.seed)
        torch.manual_seed(cfg.seed)

        # Everything that can fail on bad input happens before the cluster and the engines start.
        self.rewards = RewardManager(cfg.rewards)  # imports user reward functions: a bad fn path fails first
        self.model_path = resolve_model_path(cfg.model.path)
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_path)
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        self.train_rows, self.train_prompts, self.data_stats = self._prepare(cfg.data.train, "data.train")
        self.eval_sets = {}
        sets = ({"heldout": cfg.data.eval} if cfg.data.eval is not None else {}) | dict(cfg.eval_sets)
        for name, ds in sets.items():
            rows, prompts, _ = self._prepare(ds, f"eval_sets.{name}" if name != "heldout" else "data.eval")
            self.eval_sets[name] = (rows, prompts)
        self.has_answers = "answer" in self.train_rows.column_names
        self.sampler = PromptSampler(len(self.train_rows), cfg.data.seed, cfg.data.shuffle)

        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "config.yaml").write_text(to_yaml(cfg))
        self.tracker = Tracker(self.run_dir, cfg.logging, cfg.name, config_dict=asdict(cfg))
        self._start_cluster()

    def _prepare(self, ds_cfg, key: str):
        rows = load_dataset_rows(ds_cfg, self.cfg.data)
        if len(rows) == 0:
            raise ValueError(f"{key}: the data set {ds_cfg.source!r} has no rows")
        rows, prompts, stats = prepare_prompts(rows, self.tokenizer, self.cfg.data)
        if not prompts:
            raise ValueError(f"{key}: every prompt is longer than data.max_prompt_tokens={self.cfg.data.max_prompt_tokens}")
        return rows, prompts, stats

    def _start_cluster(self) -> None:
        cfg = self.cfg
        if not ray.is_initialized():
            ray.init(
                address=cfg.ray.address,
                num_cpus=cfg.ray.num_cpus if cfg.ray.address is None else None,
                include_dashboard=cfg.ray.dashboard,
                dashboard_host=cfg.ray.dashboard_host,
                logging_level="WARNING",
                log_to_driver=True,
            )
        gpus = cfg.learner.num_gpus
        if gpus is None:
            gpus = 1 if ray.cluster_resources().get("GPU", 0) > 0 else 0
        # the rollout engines start first: on a GPU node they take their share of memory before the learner
        self.fleet = RolloutFleet(cfg.rollout, self.model_path, seed=cfg.seed)
        self.learner = LearnerActor.options(num_cpus=cfg.learner.num_cpus, num_gpus=gpus).remote(
            self.model_path, cfg.learner, cfg.algorithm.loss, cfg.algorithm.kl,
            total_steps=cfg.trainer.total_steps, max_response_tokens=cfg.rollout.sampling.max_tokens, seed=cfg.seed,
        )
        ray.get(self.learner.ready.remote())

    # -- one step, as the algorithm reads ---------------------------------------------------------------------
    def train(self) -> dict:
        cfg, t = self.cfg, self.cfg.trainer
        results: dict[str, dict] = {}
        if t.eval_at_start:
            results["start"] = self.evaluate(step=0)
        progress = _progress(t.total_steps, enabled=cfg.logging.progress)
        for step in range(1, t.total_steps + 1):
            timer = StepTimer()
            batch, metrics = self.collect_rollouts(step, timer)  # generate + score (+ dynamic sampling)
            with timer("advantage"):
                metrics |= self.compute_advantages(batch)
            with timer("learn"):
                metrics |= {f"learner/{k}": v for k, v in ray.get(self.learner.update.remote(batch)).items()}
            with timer("sync"):
                self.fleet.update_weights(self.learner.export_weights.remote(cfg.rollout.dtype))
            metrics |= timer.split()
            self.tracker.log(step, metrics)
            progress.update(step, metrics)
            if t.eval_every and step % t.eval_every == 0 and step != t.total_steps:
                self.evaluate(step)
            if (t.save_every and step % t.save_every == 0) or step == t.total_steps:
                self.save(step)
        progress.close()
        results["end"] = self.evaluate(step=t.total_steps)
        self._report(results)
        return results

    def collect_rollouts(self, step: int, timer: StepTimer) -> tuple[Batch, dict]:
        """Sample prompts, generate n responses each, score them; with dynamic sampling, keep only groups whose
        rewards differ and sample more prompts until the step is full or max_tries is reached."""
        cfg = self.cfg
        ds = cfg.algorithm.dynamic_sampling
        want = cfg.trainer.prompts_per_step
        groups: list[tuple[int, list[Sample], torch.Tensor, dict]] = []  # (row, samples, rewards, per-fn rewards)
        tries = 0
        while len(groups) < want and tries < (ds.max_tries if ds.enabled else 1):
            tries += 1
            rows = self.sampler.next_indices(want)
            with timer("generate"):
                generated = self.fleet.generate(
                    [self.train_prompts[r] for r in rows], cfg.rollout.sampling,
                    [sample_seed(cfg.seed, step, r, tries) for r in rows],
                )
            with timer("reward"):
                scored = self.score(rows, generated)
            for r, samples, (total, per_fn) in zip(rows, generated, scored):
                one_group = torch.zeros(len(total), dtype=torch.long)
                if ds.enabled and not informative_groups(total, one_group).any():
                    continue  # all rewards equal: zero advantage, no signal
                groups.append((r, samples, total, per_fn))
        groups = groups[:want]
        if not groups:
            raise RuntimeError(
                f"step {step}: dynamic sampling found no group with differing rewards in {tries} tries; "
                "raise algorithm.dynamic_sampling.max_tries or check the reward function"
            )
        samples = [s for _, g, _, _ in groups for s in g]
        batch = Batch.from_sequences(
            [s.prompt_ids for s in samples], [s.response_ids for s in samples], [s.logprobs for s in samples],
            [gi for gi, (_, g, _, _) in enumerate(groups) for _ in g], self.pad_id,
        )
        batch.rewards = torch.cat([total for _, _, total, _ in groups])
        metrics = self._rollout_metrics(groups, samples, batch)
        metrics["dynamic_sampling/tries"] = float(tries)
        self._write_rollouts(step, groups)
        return batch, metrics

    def score(self, rows: list[int], generated: list[list[Sample]]) -> list[tuple[torch.Tensor, dict]]:
        """All reward functions on all samples of the round at once; returned per group."""
        flat_rows = [r for r, g in zip(rows, generated) for _ in g]
        completions = [s.text for g in generated for s in g]
        columns = {c: [self.train_rows[r][c] for r in flat_rows] for c in self.train_rows.column_names if c != "prompt"}
        prompts = [self.train_rows[r]["prompt"] for r in flat_rows]
        out = self.rewards(prompts, completions, columns)
        bad = torch.nonzero(~torch.isfinite(out.total)).flatten()
        if len(bad):
            i = int(bad[0])
            raise RuntimeError(
                f"every reward function returned None/NaN for a sample (row {flat_rows[i]}):\n"
                f"prompt: {prompts[i]!r}\ncompletion: {completions[i]!r}"
            )
        per_group, start = [], 0
        for g in generated:
            end = start + len(g)
            per_group.append((out.total[start:end], {k: v[start:end] for k, v in out.per_function.items()}))
            start = end
        return per_group

    def compute_advantages(self, batch: Batch) -> dict[str, float]:
        """Reward shaping (overlong, KL in reward), then the configured advantage estimator, copied to tokens."""
        alg = self.cfg.algorithm
        rewards = batch.rewards.clone()
        lengths = batch.response_lengths
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
        adv = compute_advantages(rewards, batch.group_ids, alg.advantage)
        batch.advantages = adv.unsqueeze(-1) * batch.response_mask
        metrics["advantage/abs_mean"] = float(adv.abs().mean())
        metrics["reward/shaped_mean"] = float(rewards.mean())
        return metrics

    def _rollout_metrics(self, groups, samples: list[Sample], batch: Batch) -> dict[str, float]:
        lengths = batch.response_lengths
        m = {
            "reward/mean": float(batch.rewards.mean()),
            "reward/std": float(batch.rewards.std()) if len(batch) > 1 else 0.0,
            "response_length/mean": float(lengths.mean()),
            "response_length/max": float(lengths.max()),
            "response_length/truncated": float(np.mean([s.truncated for s in samples])),
            "groups/all_equal_frac": float(np.mean([bool((t == t[0]).all()) for _, _, t, _ in groups])),
        }
        for label in groups[0][3]:
            values = torch.cat([pf[label] for _, _, _, pf in groups])
            m[f"reward/{label}/mean"] = float(values.nanmean())
            m[f"reward/{label}/std"] = float(values[~values.isnan()].std()) if (~values.isnan()).sum() > 1 else 0.0
        if "reward/math_verify/mean" in m:  # the configured reward already is the accuracy: do not score twice
            m["accuracy"] = m["reward/math_verify/mean"]
        elif self.has_answers:
            golds = [self.train_rows[r]["answer"] for r, g, _, _ in groups for _ in g]
            m["accuracy"] = float(np.mean(math_verify_reward(None, [s.text for s in samples], answer=golds)))
        return m

    def _write_rollouts(self, step: int, groups) -> None:
        with open(self.run_dir / "rollouts.jsonl", "a", encoding="utf-8") as f:
            for r, samples, total, _ in groups:
                for s, rew in zip(samples, total.tolist()):
                    f.write(json.dumps({"step": step, "row": r, "completion": s.text, "reward": rew,
                                        "finish": s.finish_reason}, ensure_ascii=False) + "\n")

    # -- evaluation and checkpoints -------------------------------------------------------------------------
    def evaluate(self, step: int) -> dict[str, dict]:
        out = {}
        for name, (rows, prompts) in self.eval_sets.items():
            metrics, records = evaluate(self.fleet, rows, prompts, self.cfg.rollout.eval_sampling, seed=self.cfg.seed)
            write_records(self.run_dir / "eval" / f"{name}_step_{step:06d}.jsonl", records)
            self.tracker.log(step, {f"eval/{name}/{k}": v for k, v in metrics.items()})
            out[name] = metrics
            print(f"[eval step {step}] {name}: accuracy {metrics['accuracy']:.3f} over {len(rows)} problems, "
                  f"{metrics['response_tokens']:.0f} tokens/answer", file=sys.stderr, flush=True)
        return out

    def save(self, step: int) -> Path:
        state = {"step": step, "sampler": self.sampler.state_dict(), "seed": self.cfg.seed, "data_stats": self.data_stats}

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
        print("\n".join(lines), flush=True)
        (self.run_dir / "results.json").write_text(json.dumps(results, indent=1))

    def close(self) -> None:
        self.tracker.close()
        self.fleet.shutdown()
        ray.kill(self.learner)


class _progress:
    """tqdm bar with the numbers a user watches: reward, accuracy, step time."""

    def __init__(self, total: int, enabled: bool):
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, desc="GRPO", disable=not enabled, dynamic_ncols=True)

    def update(self, step: int, m: dict) -> None:
        post = {"reward": f"{m['reward/mean']:.3f}", "step_s": f"{m['time/step']:.1f}"}
        if "accuracy" in m:
            post["acc"] = f"{m['accuracy']:.3f}"
        post["len"] = f"{m['response_length/mean']:.0f}"
        self.bar.set_postfix(post)
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


def train(cfg: Config) -> dict:
    trainer = Trainer(cfg)
    try:
        return trainer.train()
    finally:
        trainer.close()
