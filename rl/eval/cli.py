"""`rlvr eval`: a checkpoint, a run folder or any HF model folder on held-out data sets, with the training loop's
evaluation code (rl/eval/evaluate.py) on a vLLM rollout fleet.

    rlvr eval --model runs/quickstart --data svamp gsm8k --n 8 --limit 200
    rlvr eval recipes/adaptthink_cpu.yaml --model runs/adaptthink_cpu --data heldout --mode nothinking
    rlvr eval --model deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B --data math500 --mode budget --budget 2048 --n 4

The recipe (default: the built-in defaults) gives the prompt format (instruction, system prompt, few-shot turns), the
engine settings, the thinking tags and the sampling (rollout.eval_sampling; --n, --temperature, --max-tokens change
it). Data sets: `heldout` (the recipe's data.eval), the recipe's eval_sets by name, the known public sets by name
(rl/data/sources.py KNOWN_SETS: hub ids, the data mirror's files, the answer
extraction each needs), or a file. Modes: `normal` (the prompt as it is), `think` (the thinking
block opened, the model decides: reports the NoThinking rate), `nothinking` (the block prefilled as finished),
`budget` (thinking cut at --budget tokens, then the answer). Writes OUT/<set>.jsonl (every sample) and OUT/summary.md,
OUT/summary.json; prints the table.
"""

from __future__ import annotations

import functools
import json
import sys
from dataclasses import replace
from pathlib import Path

from rl.data.prompts import preset
from rl.config.data import DatasetConfig
from rl.data.sources import KNOWN_SETS
from rl.files import write_atomic, write_jsonl

PRESETS = tuple(KNOWN_SETS)  # the known public sets by short name, with the answer extraction each needs (their hub
# ids, looked up in the data mirror first: rl/data/sources.py)
MODES = ("normal", "think", "nothinking", "budget")
CONFIDENCE_INSTRUCTION = " After your answer, state how confident you are that it is correct as 'Confidence: N%'."


def data_sets(cfg, names: list[str], limit: int | None) -> dict[str, DatasetConfig]:
    """Each name: heldout | a recipe eval_sets key | a PRESETS name | a data file (its stem names it)."""
    out = {}
    for name in names:
        if name == "heldout":
            if cfg.data.eval is None:
                raise ValueError("--data heldout: the recipe has no data.eval")
            ds = cfg.data.eval
        elif name in cfg.eval_sets:
            ds = cfg.eval_sets[name]
        elif name in PRESETS:
            ds = preset(name)
        elif Path(name).exists():
            ds, name = DatasetConfig(source=name), Path(name).stem
        else:
            raise ValueError(f"--data {name!r}: not heldout, a recipe eval set ({sorted(cfg.eval_sets)}), a known set "
                             f"({sorted(PRESETS)}) or an existing file")
        out[name] = replace(ds, limit=limit if limit is not None else ds.limit)
    return out


def generator(mode: str, fleet, tokenizer, cfg, budget: int | None):
    from rollout.adaptive import budget_forcing_rollout, free_rollout, nothinking_rollout

    thinking = cfg.rollout.thinking()
    if mode == "normal":
        return fleet.generate
    if mode == "budget" and not (budget and budget > 0):
        raise ValueError("--mode budget needs --budget B (thinking tokens, > 0)")
    fn = {"think": free_rollout, "nothinking": nothinking_rollout, "budget": budget_forcing_rollout}[mode]
    extra = {"budget": budget} if mode == "budget" else {}
    return functools.partial(fn, fleet.generate, tokenizer, cfg=thinking, **extra)


def summary_table(results: dict[str, dict[str, float]]) -> str:
    keys = ["accuracy", "response_tokens", "truncated"] + sorted(
        {k for m in results.values() for k in m if k.startswith("pass@")}, key=lambda k: int(k[5:])) + [
        k for k in ("nothinking_rate", "idk_rate", "wrong_rate", "ece", "brier", "auroc")
        if any(k in m for m in results.values())]
    lines = ["| set | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for name, m in results.items():
        lines.append(f"| {name} | " + " | ".join(f"{m[k]:.3f}" if k in m else "-" for k in keys) + " |")
    return "\n".join(lines)


def run_eval(cfg, model: str | None, names: list[str], mode: str, out: Path, limit: int | None = None,
             budget: int | None = None, confidence: bool = False) -> dict[str, dict[str, float]]:
    from transformers import AutoTokenizer

    from rl.data.prompts import load_prompts
    from rl.eval.evaluate import evaluate
    from rl.models.resolve import check_context_length, resolve_model_path
    from rl.cluster import start_ray
    from rollout.fleet import RolloutFleet

    if mode not in MODES:
        raise ValueError(f"--mode {mode!r}; choose one of {list(MODES)}")
    if mode == "budget" and budget:
        need = cfg.data.max_prompt_tokens + budget + 16 + cfg.rollout.eval_sampling.max_tokens
        if need > cfg.rollout.max_model_len:
            raise ValueError(f"--budget {budget} + --max-tokens {cfg.rollout.eval_sampling.max_tokens} + "
                             f"data.max_prompt_tokens {cfg.data.max_prompt_tokens} (+ the tags) exceed "
                             f"rollout.max_model_len {cfg.rollout.max_model_len}; raise it (rollout.max_model_len={need})")
    # a run folder resolves to its latest checkpoint; a missing model fails here, as in `rlvr train`
    model_path = resolve_model_path(model or cfg.model.path, "--model" if model else "model.path")
    check_context_length(model_path, cfg.rollout.max_model_len)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    data = replace(cfg.data, instruction=cfg.data.instruction + (CONFIDENCE_INSTRUCTION if confidence else ""))
    sets = {name: load_prompts(ds, f"--data {name}", data, tokenizer)[:2] + (ds.grader,)
            for name, ds in data_sets(cfg, names, limit).items()}  # every set checked before an engine starts
    start_ray(cfg.ray)
    fleet = RolloutFleet(cfg.rollout, model_path, seed=cfg.seed)
    results = {}
    try:
        generate = generator(mode, fleet, tokenizer, cfg, budget)
        for name, (rows, prompts, grader) in sets.items():
            close = cfg.rollout.thinking().close_tag if mode == "think" else None
            metrics, records = evaluate(generate, rows, prompts, cfg.rollout.eval_sampling, seed=cfg.seed,
                                        grader=grader, close_tag=close)
            write_jsonl(out / f"{name}.jsonl", records)
            results[name] = metrics
            print(f"[eval] {name}: accuracy {metrics['accuracy']:.3f} over {len(rows)} problems", file=sys.stderr)
    finally:
        fleet.shutdown()
    table = summary_table(results)
    head = (f"# rlvr eval: {model or cfg.model.path}, mode {mode}" + (f" (budget {budget})" if mode == "budget" else "")
            + f", {cfg.rollout.eval_sampling.n} samples per problem, temperature {cfg.rollout.eval_sampling.temperature}")
    write_atomic(out / "summary.md", head + "\n\n" + table + "\n")
    write_atomic(out / "summary.json", json.dumps({"model": model_path, "mode": mode, "budget": budget,
                                                   "results": results}, indent=1))
    print(table)
    return results
