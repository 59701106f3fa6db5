"""Run `rlvr train` in a child process, kill it (SIGKILL to its whole process group, as a pre-empted node dies),
resume it, and compare two runs: shared by the tests and benchmarks/resume_fuzz.py."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[1]


def write_tiny_llama(folder: Path, seed: int = 0, hidden_size: int = 128) -> str:
    """A 2-layer Llama (hidden 128, head dim 64: a size vLLM's CPU attention serves) with SmolLM2's tokenizer, saved
    into `folder`; random weights from `seed`, so every call with one seed writes the same model."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from rl.models.resolve import resolve_model_path

    tok = AutoTokenizer.from_pretrained(resolve_model_path("smollm2-135m-instruct"))
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=hidden_size, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=2, max_position_embeddings=1024, tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(seed)
    LlamaForCausalLM(config).save_pretrained(folder, safe_serialization=True)
    tok.save_pretrained(folder)
    return str(folder)


def tiny_overrides(model_path: str, output_dir: Path, steps: int = 4) -> list[str]:
    """A run of the quickstart recipe small enough for CI: tiny model, 3 prompts x 4 samples, a checkpoint per step."""
    return [
        f"model.path={model_path}", f"output_dir={output_dir}", f"trainer.total_steps={steps}",
        "trainer.prompts_per_step=3", "trainer.save_every=1", "trainer.keep_checkpoints=2",
        "rollout.sampling.n=4", "rollout.sampling.max_tokens=12", "rollout.eval_sampling.max_tokens=8",
        "rollout.kv_cache_gib=1", "learner.micro_batch_size=6", "learner.optim.lr=1e-3",
        "data.arithmetic.num_train=40", "data.arithmetic.num_eval=4", "eval_sets={}",
        "rewards=[{name: math_verify}, {fn: 'tests.reward_fixtures:length_parity', weight: 0.5}]",
        "logging.progress=false", "logging.tensorboard=false", "ray.num_cpus=2",
        "algorithm.overlong=null",  # the quickstart's buffer (32) does not fit 12 tokens; a case may turn it back on
    ]


def run_training(overrides: list[str], kill_at: str | None = None, kill_after: float | None = None,
                 log: Path | None = None, timeout: float = 900, term_after_step: int | None = None,
                 recipe: str = "recipes/quickstart.yaml", command: str = "train") -> int:
    """`rlvr train RECIPE ...` (or another `command`) in its own process group. kill_at: a named kill point
    ("checkpoint_tmp:2", "learn:3", ...: the process SIGKILLs itself there); kill_after: SIGKILL the whole group after
    that many seconds; term_after_step: SIGTERM the driver alone once that training step is logged (a scheduler's
    pre-emption notice). Returns the exit code (-9 when killed); the whole group is killed at the end in any case."""
    env = dict(os.environ, PYTHONPATH=str(REPO), RAY_DEDUP_LOGS="0")
    env.pop("RLVR_KILL_AT", None)
    if kill_at:
        env["RLVR_KILL_AT"] = kill_at
    out = open(log, "ab") if log else subprocess.DEVNULL
    proc = subprocess.Popen([sys.executable, "-m", "rl.cli", command, recipe, *overrides],
                            cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        if term_after_step is not None:
            run = Path(next(o.split("=", 1)[1] for o in overrides if o.startswith("output_dir=")))
            deadline = time.time() + timeout
            while proc.poll() is None and term_after_step not in _logged_train_steps(run):
                assert time.time() < deadline, f"step {term_after_step} was not logged within {timeout} s"
                time.sleep(0.2)
            proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=kill_after if kill_after is not None else timeout)
    except subprocess.TimeoutExpired:
        if kill_after is None:
            raise
        code = -9
    finally:
        _kill_group(proc.pid)
        proc.wait()
        if log:
            out.close()
    return code


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    time.sleep(0.5)


def _logged_train_steps(run: Path) -> set[int]:
    """Training steps in a live run's metrics.jsonl (a line being written is skipped)."""
    steps = set()
    for line in (run / "metrics.jsonl").read_text().splitlines() if (run / "metrics.jsonl").exists() else []:
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if "reward/mean" in row:
            steps.add(row["step"])
    return steps


def train_steps(run: Path) -> list[dict]:
    """Per-step metrics of a run, wall-clock timings left out (they differ between any two runs)."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.startswith("time/")} for r in rows]


def final_weights(run: Path) -> dict:
    folder = run / "checkpoints" / (run / "checkpoints" / "latest").read_text().strip() / "model"
    return load_file(str(folder / "model.safetensors"))


def compare_runs(a: Path, b: Path) -> list[str]:
    """What differs between two finished runs (empty when the resumed one equals the uninterrupted one)."""
    diffs = []
    wa, wb = final_weights(a), final_weights(b)
    if wa.keys() != wb.keys():
        diffs.append("different weight names")
    diffs += [f"weights {k} differ" for k in wa if k in wb and not wa[k].equal(wb[k])]
    ma, mb = train_steps(a), train_steps(b)
    if ma != mb:
        diffs.append(f"metrics differ (steps {[r['step'] for r in ma]} vs {[r['step'] for r in mb]})")
        for ra, rb in zip(ma, mb):
            keys = sorted(k for k in set(ra) | set(rb) if ra.get(k) != rb.get(k))
            if keys:
                diffs.append(f"  first difference at step {ra.get('step')}: {keys[:5]}")
                break
    missing = [str(r) for r in (a, b) if not (r / "results.json").exists()]
    if missing:
        diffs.append(f"no results.json in {missing}")
    elif json.loads((a / "results.json").read_text()) != json.loads((b / "results.json").read_text()):
        diffs.append("results.json differ")
    return diffs


# -- the resume matrix: one run per group of options that compose, each killed mid-run and resumed -----------------
# name -> (recipe, extra overrides on tiny_overrides, preparation command or None, what the case exercises). The
# overrides may name {prepared}: a folder in the case's work folder that the preparation writes.
FACT_QA = "tests/data/factual_qa.json"  # 36 short factual questions in the knowrl layout (question, answers, title)
MATRIX: dict[str, tuple[str, list[str], list[str] | None, str]] = {
    "schedule_epochs_kl_dapo_hicra_dph": ("recipes/quickstart.yaml", [
        "rewards=[{fn: 'tests.reward_fixtures:parity_unless_plus'}]",  # all-equal groups (a '+' question): refills
        "learner.optim.schedule=cosine", "learner.optim.warmup_steps=2",
        "learner.ppo_epochs=2", "learner.mini_batches=2",  # old log-probs recomputed, the learner's RNG shuffles
        "learner.num_ranks=2",  # an FSDP2 learner group of 2 gloo ranks: sharded policy and reference, DCP optimizer
        "algorithm.kl.coef=0.01",  # KL in the loss: the reference model
        "algorithm.dynamic_sampling.max_tries=3", "algorithm.overlong.buffer=2", "algorithm.overlong.mask_truncated=true",
        "rollout.sampling.max_tokens=4",
        "rollout.sampling.stop=[a]",  # some responses stop early, the rest are truncated (and masked)
        "algorithm.hicra.planning=strategic_grams", "algorithm.hicra.num_clusters=4", "algorithm.hicra.min_doc_freq=1",
        "algorithm.hicra.ngram_min=2", "algorithm.hicra.ngram_max=2", "algorithm.hicra.refit_every=2",
        "algorithm.length_penalty.coef=0.2",
        "algorithm.divergence.name=forward_kl", "algorithm.divergence.eta=0.1", "algorithm.divergence.data={prepared}",
        "algorithm.divergence.samples_per_step=4", "algorithm.divergence.prepare_k=2",
        "algorithm.divergence.perfect_threshold=0.5",
    ], ["dph-prepare"], "warmup + cosine, 2 epochs x 2 mini-batches, KL in the loss, dynamic sampling with refills, "
        "overlong shaping + mask_truncated, HICRA strategic grams with refit, length penalty, DPH rows, a learner of 2 "
        "FSDP2 ranks"),
    "cure_kl_in_reward_armed": ("recipes/quickstart.yaml", [
        "rollout.sampling.n=2", "rollout.cure.branches=1",
        "algorithm.kl.coef=0.05", "algorithm.kl.in_reward=true",
        "rewards=[{fn: 'tests.reward_fixtures:length_parity'}, {name: armed, weight: 0.5, kwargs: {window: 16}}]",
        "learner.lora={rank: 4, alpha: 8}",  # the reference for the KL is the base with the adapter off
    ], None, "CURE branching, KL in the reward, a stateful reward (ARMed's moving quantile), LoRA"),
    "search": ("recipes/ikea_search_cpu.yaml", [
        f"data.train.source={FACT_QA}", f"data.eval.source={FACT_QA}", "data.train.limit=24", "data.eval.offset=32",
        "data.eval.limit=4", "data.max_prompt_tokens=320", "rollout.max_model_len=512",
        f"rollout.search.knowledge.qa_data={FACT_QA}", "rollout.search.knowledge.cache_dir={prepared}",
        "rollout.search.max_searches=2", "rollout.search.top_k=1",
        # a random model never writes <search>: structured outputs make each turn a search or an answer, its choice
        "rollout.sampling.regex='<search>(capital of France|author of Rebecca)</search>|<answer>[a-z]{1,4}</answer>'",
        "rollout.sampling.max_tokens=96",
        "rewards=[{name: ikea}, {fn: 'tests.reward_fixtures:length_parity'}]",
    ], None, "the search rollout (IKEA: retrieval, injection, masking, seeded continuations) and its reward"),
    "adaptthink": ("recipes/adaptthink_cpu.yaml", [
        "rollout.adaptive_thinking.thinking_max_tokens=12", "rollout.adaptive_thinking.nothinking_max_tokens=8",
        "rewards=[{name: adaptthink, kwargs: {r_ref_file: '{prepared}/r_ref.jsonl'}}]",
    ], ["adaptthink-prepare", "--k", "2", "--out", "{prepared}/r_ref.jsonl"], "AdaptThink's forced modes and loss"),
    "async": ("recipes/quickstart.yaml", ["trainer.max_staleness=1"],
              None, "asynchronous training one step stale: the next step's rollouts made during the update, saved in "
              "the checkpoint; TIS on by default"),
}


def matrix_overrides(name: str, model_path: str, run: Path, prepared: Path, steps: int = 4) -> list[str]:
    """The case's overrides of tiny_overrides (a later key wins), {prepared} filled in."""
    extra = [o.replace("{prepared}", str(prepared)) for o in MATRIX[name][1]]
    keys = {o.split("=", 1)[0] for o in extra}
    return [o for o in tiny_overrides(model_path, run, steps) if o.split("=", 1)[0] not in keys] + extra


def prepare_case(name: str, model_path: str, prepared: Path, log: Path) -> None:
    """The case's offline step, if it has one (DPH-RL's pi0 samples, AdaptThink's R_ref), writing `prepared`."""
    recipe, _, command, _ = MATRIX[name]
    prepared.mkdir(parents=True, exist_ok=True)
    if command is None:
        return
    overrides = matrix_overrides(name, model_path, prepared.parent / f"{name}-prepare-run", prepared)
    options = [a.replace("{prepared}", str(prepared)) for a in command[1:]]
    code = run_training(overrides + options, log=log, recipe=recipe, command=command[0])
    assert code == 0 and any(prepared.iterdir()), f"{name}: `rlvr {command[0]}` failed; see {log}"
