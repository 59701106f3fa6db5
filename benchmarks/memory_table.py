"""The memory estimate (rl/models/memory.py) of every GPU recipe, as `rlvr train` computes it at start.

    .venv/bin/python benchmarks/memory_table.py --out benchmarks/results/memory_estimates.md

The models' config.json fields come from benchmarks/model_configs.json (copied from the hub; this machine has no hub
access); each recipe is loaded as `rlvr config` loads it, with model.path pointing at a folder holding that config.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(HERE))

RECIPES = {  # recipe -> the model it trains (cure_stage2 continues cure_stage1's policy)
    "grpo_gsm8k": None, "dapo_math": None, "steer": None, "hicra": None, "cure_stage1": None,
    "cure_stage2": "Qwen/Qwen2.5-Math-7B", "dph_forward_kl": None, "dph_js": None, "high_entropy": None,
    "knowrl": None, "abstain": None, "klcf": None, "adaptthink": None, "ikea_search": None,
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", help="write the table here as well")
    args = ap.parse_args()
    from rl.config import load_config
    from rl.models.memory import GIB, Shape, engine_estimate, fit_problems, learner_estimate, with_lora, with_ranks

    configs = json.loads((HERE / "benchmarks" / "model_configs.json").read_text())
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for recipe, model in RECIPES.items():
            path = HERE / "recipes" / f"{recipe}.yaml"
            model = model or load_config(str(path)).model.path
            folder = Path(tmp) / model.replace("/", "--")
            folder.mkdir(exist_ok=True)
            (folder / "config.json").write_text(json.dumps(configs[model]))
            cfg = load_config(str(path), [f"model.path={folder}"])
            shape = Shape.from_config(configs[model])
            gpu = cfg.ray.gpu_memory_gib
            learner = sum(learner_estimate(shape, cfg).values()) / GIB
            lora = sum(learner_estimate(shape, with_lora(with_ranks(cfg, 1))).values()) / GIB
            engine = sum(engine_estimate(shape, cfg).values()) / GIB
            problems = fit_problems(shape, cfg, gpu)
            verdict = "fits" if not problems else "refused: " + "; ".join(
                "learner" if p.startswith("the learner") else "engine" for p in problems)
            rows.append(f"| {recipe} | {model} | {shape.parameters() / 1e9:.2f}B | {gpu:g} | "
                        f"{cfg.rollout.num_engines} x 1 + learner {cfg.learner.num_ranks} | {learner:.0f} | {lora:.0f} | {engine:.0f} | "
                        f"{verdict} |")
    lines = ["# Memory estimates of the GPU recipes (written by benchmarks/memory_table.py)", "",
             "Command: `.venv/bin/python benchmarks/memory_table.py --out benchmarks/results/memory_estimates.md`. "
             "Learner: fp32 masters + bf16 compute as the recipes set it, a rank's peak over learner.num_ranks "
             "FSDP2 ranks (one GPU each); LoRA (one rank): the same with learner.lora={rank: 64}; engine: weights + vLLM overhead + "
             "one max_model_len sequence of KV cache.", "",
             "| recipe | model | parameters | GiB a GPU | GPUs (engines + learner ranks) | learner peak a rank, GiB | with LoRA, "
             "GiB | engine minimum, GiB | at start |",
             "|---|---|---|---|---|---|---|---|---|", *rows]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
