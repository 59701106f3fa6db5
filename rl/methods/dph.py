"""DPH-RL's offline step and its data: sample the initial policy pi0 k times per training question, split the questions
into the mastered set D_pef (at least `perfect_threshold` of the k samples correct) and the rest D_exp, and keep pi0's
correct samples on D_pef with their per-token log-probs under pi0 (so training needs no live reference model).

Training then runs RL on D_exp only and adds `samples_per_step` of the stored samples to each step's batch, where the
learner applies eta * f-divergence to them and no policy gradient (rl/core/divergences.py, Batch.divergence_mask).

The folder `rlvr dph-prepare` writes (algorithm.divergence.data):
  split.json          the split (rows of the prepared training set), per-question accuracy, and what it was built from
  samples.safetensors pi0's samples: token ids and log-probs, flattened with offsets (tensors only, no pickle)
"""

from __future__ import annotations

import json
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from rl.core.batch import Batch

SPLIT, SAMPLES = "split.json", "samples.safetensors"


@dataclass
class DPHData:
    prompts: list[list[int]]
    responses: list[list[int]]
    init_logprobs: list[list[float]]  # log pi0 of each response token
    rows: list[int]  # the training row each sample answers
    meta: dict  # split.json

    @property
    def exp_rows(self) -> list[int]:
        return self.meta["exp_rows"]

    def __len__(self) -> int:
        return len(self.responses)

    def save(self, folder: Path) -> None:
        """Written to a temporary folder, then renamed: a crash never leaves a half-written data folder."""
        folder = Path(folder)
        tmp = folder.with_name(folder.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        flat = {
            "prompt_ids": torch.tensor([t for p in self.prompts for t in p], dtype=torch.long),
            "prompt_lengths": torch.tensor([len(p) for p in self.prompts], dtype=torch.long),
            "response_ids": torch.tensor([t for r in self.responses for t in r], dtype=torch.long),
            "response_lengths": torch.tensor([len(r) for r in self.responses], dtype=torch.long),
            "init_logprobs": torch.tensor([x for lp in self.init_logprobs for x in lp], dtype=torch.float32),
            "rows": torch.tensor(self.rows, dtype=torch.long),
        }
        save_file(flat, str(tmp / SAMPLES))
        (tmp / SPLIT).write_text(json.dumps(self.meta, indent=1))
        if folder.exists():
            shutil.rmtree(folder)
        tmp.rename(folder)

    @classmethod
    def load(cls, folder: str | Path) -> "DPHData":
        folder = Path(folder)
        if not (folder / SPLIT).is_file() or not (folder / SAMPLES).is_file():
            raise ValueError(f"algorithm.divergence.data={str(folder)!r} holds no {SPLIT} and {SAMPLES}; "
                             "run `rlvr dph-prepare` with the same recipe first")
        t = load_file(str(folder / SAMPLES))

        def unflatten(values: torch.Tensor, lengths: torch.Tensor) -> list[list]:
            return [chunk.tolist() for chunk in torch.split(values, lengths.tolist())]

        return cls(
            prompts=unflatten(t["prompt_ids"], t["prompt_lengths"]),
            responses=unflatten(t["response_ids"], t["response_lengths"]),
            init_logprobs=unflatten(t["init_logprobs"], t["response_lengths"]),
            rows=t["rows"].tolist(),
            meta=json.loads((folder / SPLIT).read_text()),
        )

    def check_matches(self, model: str, num_rows: int, train_source: str) -> None:
        """Refuse data built from another model or training set (the row numbers would point elsewhere)."""
        m = self.meta
        if m["num_rows"] != num_rows or m["train_source"] != train_source or m["model"] != model:
            raise ValueError(
                f"algorithm.divergence.data was prepared for model {m['model']!r} on {m['train_source']!r} "
                f"({m['num_rows']} rows), but this run trains {model!r} on {train_source!r} ({num_rows} rows); "
                "rerun `rlvr dph-prepare` with this recipe"
            )

    def batch(self, step_seed: int, k: int, pad_token_id: int) -> Batch | None:
        """k of the stored samples (without replacement while there are enough), chosen by `step_seed`, as a Batch
        whose rows carry divergence_mask = 1 and their pi0 log-probs; None when there are none."""
        if not len(self):
            return None
        rng = np.random.default_rng(step_seed)
        pick = rng.choice(len(self), size=k, replace=k > len(self)).tolist()
        b = Batch.from_sequences([self.prompts[i] for i in pick], [self.responses[i] for i in pick],
                                 [self.init_logprobs[i] for i in pick], [-1 - j for j in range(k)], pad_token_id)
        b.init_logprobs = b.rollout_logprobs.clone()
        b.divergence_mask = torch.ones(k)
        b.advantages = torch.zeros_like(b.response_mask)
        b.rewards = torch.zeros(k)
        return b


def split_questions(correct: list[list[bool]], threshold: float) -> tuple[list[int], list[int]]:
    """(D_pef rows: at least `threshold` of the attempts correct, D_exp rows: the rest)."""
    frac = [sum(c) / max(len(c), 1) for c in correct]
    perfect = [i for i, f in enumerate(frac) if f >= threshold - 1e-12]
    return perfect, [i for i, f in enumerate(frac) if f < threshold - 1e-12]


def prepare(cfg, chunk: int = 64) -> dict:
    """`rlvr dph-prepare`: sample pi0 (the recipe's model) prepare_k times per training question on the rollout
    fleet, score them with the recipe's rewards (a sample is correct when its total reward is at least
    algorithm.divergence.correct_reward), split, score pi0's log-probs of the kept samples on a learner, and write
    algorithm.divergence.data. Returns the split statistics."""
    import ray

    from rl.core.kl import KLConfig
    from rl.train.learner import Learner
    from rl.core.losses import PolicyLossConfig
    from rl.prepare.sampling import sample_initial_policy

    dv = cfg.algorithm.divergence
    if dv.data is None:
        raise ValueError("algorithm.divergence.data is not set: give the folder to write (the training recipe reads it)")
    pi0 = sample_initial_policy(cfg, dv.prepare_k, "dph-prepare: sampling pi0", chunk=chunk)
    model_path, tokenizer, s = pi0.model_path, pi0.tokenizer, cfg.rollout.sampling
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    correct: list[list[bool]] = []
    kept: list[tuple[int, object]] = []  # (row, sample) of pi0's correct answers
    for i, (group, out) in enumerate(zip(pi0.groups, pi0.scores)):
        mine = ((out.total >= dv.correct_reward) & ~out.failed).tolist()
        correct.append(mine)
        kept.extend((i, x) for x, good in zip(group, mine) if good)
    perfect, exp = split_questions(correct, dv.perfect_threshold)
    perfect_set = set(perfect)
    kept = [(i, x) for i, x in kept if i in perfect_set]
    learner = ray.remote(Learner).options(num_cpus=cfg.learner.num_cpus).remote(
        model_path, cfg.learner, PolicyLossConfig(), KLConfig(), total_steps=1, max_response_tokens=s.max_tokens)
    init_logprobs: list[list[float]] = []
    try:
        for start in range(0, len(kept), chunk):
            part = [x for _, x in kept[start : start + chunk]]
            b = Batch.from_sequences([x.prompt_ids for x in part], [x.response_ids for x in part],
                                     [x.logprobs for x in part], list(range(len(part))), pad_id)
            lp = ray.get(learner.compute_logprobs.remote(b))
            init_logprobs.extend(lp[j][b.response_mask[j] > 0].tolist() for j in range(len(part)))
    finally:
        ray.kill(learner)
    meta = {
        "model": cfg.model.path, "train_source": cfg.data.train.source, "num_rows": len(pi0.groups),
        "k": dv.prepare_k, "perfect_threshold": dv.perfect_threshold, "seed": cfg.seed,
        "temperature": s.temperature, "max_tokens": s.max_tokens,
        "perfect_rows": perfect, "exp_rows": exp, "accuracy": [sum(c) / len(c) for c in correct],
        "num_samples": len(kept), "pi0_accuracy": float(np.mean([sum(c) / len(c) for c in correct])),
    }
    DPHData([x.prompt_ids for _, x in kept], [x.response_ids for _, x in kept], init_logprobs,
            [i for i, _ in kept], meta).save(Path(dv.data))
    stats = {"questions": len(pi0.groups), "perfect": len(perfect), "explore": len(exp), "samples": len(kept),
             "pi0_accuracy": meta["pi0_accuracy"]}
    print(f"[dph-prepare] {stats['questions']} questions: {stats['perfect']} mastered (D_pef, >= "
          f"{dv.perfect_threshold:.0%} of {dv.prepare_k} correct; {stats['samples']} samples kept), {stats['explore']} "
          f"to explore (D_exp); pi0 accuracy {stats['pi0_accuracy']:.3f}. Written to {dv.data}", file=sys.stderr)
    return stats
