"""DPH-RL's data and its method in the loop. The offline step (rl/prepare/dph.py) samples the initial policy pi0 k
times per training question, splits the questions into the mastered set D_pef (at least `perfect_threshold` of the k
samples correct) and the rest D_exp, and keeps pi0's correct samples on D_pef with their per-token log-probs under pi0
(so training needs no live reference model).

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
from rl.files import replace_folder_atomic
from rl.methods.base import Context, Method

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
        replace_folder_atomic(tmp, folder)

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


class DPH(Method):
    """DPH-RL in the loop: RL trains on the questions pi0 has not mastered (D_exp) only, and each step
    `samples_per_step` of pi0's stored samples join the batch for the f-divergence term alone (rl/core/divergences.py;
    the learner adds it where a row's divergence_mask is 1)."""

    name = "dph"

    def __init__(self, cfg, ctx: Context):
        self.cfg, self.ctx = cfg, ctx
        self.data = DPHData.load(cfg.algorithm.divergence.data)

    def train_rows(self, rows, prompts):
        dph, dv = self.data, self.cfg.algorithm.divergence
        dph.check_matches(self.cfg.model.path, len(prompts), self.cfg.data.train.source)
        if not dph.exp_rows:
            raise ValueError("algorithm.divergence.data: pi0 masters every training question, nothing is left to "
                             "explore; raise algorithm.divergence.perfect_threshold or use harder data")
        print(f"[dph] training on {len(dph.exp_rows)} questions pi0 has not mastered; {len(dph)} pi0 samples for the "
              f"{dv.name} term", file=sys.stderr)
        return rows.select(dph.exp_rows), [prompts[i] for i in dph.exp_rows]

    def extra_rows(self, step: int) -> Batch | None:
        from rl.data.prompts import sample_seed

        return self.data.batch(sample_seed(self.cfg.seed, step, -1), self.cfg.algorithm.divergence.samples_per_step,
                               self.ctx.pad_id)


def build(cfg, ctx: Context) -> Method | None:
    return DPH(cfg, ctx) if cfg.algorithm.divergence is not None else None
