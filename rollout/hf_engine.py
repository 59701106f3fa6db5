"""HF-transformers rollout engine: a slow fallback for models or machines vLLM does not serve."""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from rollout.base import RolloutEngine, Sample
from rl.config.rollout import SamplingConfig


class HFEngine(RolloutEngine):
    def __init__(self, model_path: str, *, dtype: str = "float32", device: str | None = None, **_: object):
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        self.model = AutoModelForCausalLM.from_pretrained(model_path, dtype=getattr(torch, dtype)).to(self.device)
        self.model.eval()

    @torch.no_grad()
    def generate(self, prompts: list[list[int]], sampling: SamplingConfig, seeds: list[int]) -> list[list[Sample]]:
        eos = self.model.generation_config.eos_token_id
        eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        greedy = sampling.temperature == 0
        results = []
        for prompt, seed in zip(prompts, seeds):
            torch.manual_seed(seed)
            ids = torch.tensor([prompt], device=self.device)
            out = self.model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                do_sample=not greedy,
                temperature=None if greedy else sampling.temperature,
                top_p=None if greedy else sampling.top_p,
                top_k=None if greedy or sampling.top_k < 0 else sampling.top_k,
                max_new_tokens=sampling.max_tokens,
                num_return_sequences=sampling.n,
                output_logits=True,
                return_dict_in_generate=True,
                pad_token_id=self.tokenizer.pad_token_id or next(iter(eos_ids), 0),
            )
            # raw (unscaled) log-probs of the chosen tokens, as vLLM reports them
            logps = torch.stack(out.logits, dim=1).float().log_softmax(-1)  # [n, L, V]
            new = out.sequences[:, ids.shape[1] :]
            chosen = logps.gather(-1, new.unsqueeze(-1)).squeeze(-1)
            group = []
            for row, lp in zip(new.tolist(), chosen.tolist()):
                end = next((i + 1 for i, t in enumerate(row) if t in eos_ids), None)
                length = end if end is not None else len(row)
                cut = self._stop_at(row[:length], sampling.stop)
                end, length = (cut, cut) if cut is not None else (end, length)
                group.append(
                    Sample(
                        prompt_ids=list(prompt),
                        response_ids=row[:length],
                        logprobs=lp[:length],
                        finish_reason="stop" if end is not None else "length",
                        text=self.tokenizer.decode(row[:length], skip_special_tokens=True),
                    )
                )
            results.append(group)
        return results

    def _stop_at(self, ids: list[int], stop: list[str]) -> int | None:
        """The number of tokens up to and including the one that completes the first stop string; None: no stop."""
        if not stop or not any(t in self.tokenizer.decode(ids) for t in stop):
            return None
        return next(k for k in range(1, len(ids) + 1) if any(t in self.tokenizer.decode(ids[:k]) for t in stop))

    def update_weights(self, state_dict: dict[str, torch.Tensor]) -> None:
        self.model.load_state_dict(state_dict, strict=True)
