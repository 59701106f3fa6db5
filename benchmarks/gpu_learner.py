"""The learner on a GPU: exact resume (save at step 2, reload in a fresh Learner, continue) and update throughput.

Needs only torch + transformers (no Ray, no vLLM), so it runs on a bare GPU machine. The model has SmolLM2-135M's
architecture with random weights (seeded), unless --model names a save_pretrained folder.

    python benchmarks/gpu_learner.py --out benchmarks/results/gpu_learner.md
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rl.core.batch import Batch  # noqa: E402
from rl.config.algorithm import KLConfig, PolicyLossConfig  # noqa: E402
from rl.train.learner import Learner  # noqa: E402
from rl.config.learner import LearnerConfig, OptimConfig  # noqa: E402


def smollm2_architecture(folder: Path) -> str:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                         num_attention_heads=9, num_key_value_heads=3, head_dim=64, max_position_embeddings=8192,
                         rms_norm_eps=1e-5, tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=2,
                         rope_theta=100000.0)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder, safe_serialization=True)
    return str(folder)


def synthetic_batch(seed: int, rows: int, prompt: int, response: int, vocab: int = 49152) -> Batch:
    g = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(3, vocab, (prompt,), generator=g).tolist() for _ in range(rows)]
    lengths = torch.randint(response // 4, response + 1, (rows,), generator=g).tolist()
    responses = [torch.randint(3, vocab, (n,), generator=g).tolist() for n in lengths]
    logps = [(-torch.rand(n, generator=g) * 5).tolist() for n in lengths]
    batch = Batch.from_sequences(prompts, responses, logps, [i // 8 for i in range(rows)], pad_token_id=2)
    batch.advantages = torch.randn(rows, 1, generator=g) * batch.response_mask
    return batch


def make_learner(path: str, mixed: str | None, micro: int, epochs: int = 1, minis: int = 1, steps: int = 10) -> Learner:
    cfg = LearnerConfig(mixed_precision=mixed, micro_batch_size=micro, ppo_epochs=epochs, mini_batches=minis,
                        optim=OptimConfig(lr=1e-5, schedule="cosine", warmup_steps=1))
    return Learner(path, cfg, PolicyLossConfig(), KLConfig(), total_steps=steps, max_response_tokens=512, seed=0)


def resume_check(model: str, work: Path, deterministic: bool) -> str:
    torch.use_deterministic_algorithms(deterministic, warn_only=False)
    batches = [synthetic_batch(s, rows=16, prompt=64, response=128) for s in range(4)]
    a = make_learner(model, "bfloat16", micro=8, epochs=2, minis=2)  # mini-batch order draws from the learner's RNG
    for b in batches[:2]:
        a.update(b)
    ckpt = work / f"ckpt-{deterministic}"
    a.save(str(ckpt))
    for b in batches[2:]:
        a.update(b)
    b_ = make_learner(str(ckpt / "model"), "bfloat16", micro=8, epochs=2, minis=2)
    b_.load_state(str(ckpt))
    for b in batches[2:]:
        b_.update(b)
    wa, wb = a.export_weights(), b_.export_weights()
    differ = [k for k in wa if not torch.equal(wa[k], wb[k])]
    max_diff = max((float((wa[k] - wb[k]).abs().max()) for k in differ), default=0.0)
    torch.use_deterministic_algorithms(False)
    del a, b_
    torch.cuda.empty_cache()
    return (f"| deterministic algorithms {'on' if deterministic else 'off'} | {len(wa) - len(differ)} of {len(wa)} "
            f"tensors bitwise equal | max abs diff {max_diff:.3g} |")


def throughput(model: str, mixed: str | None, rows: int, prompt: int, response: int, micro: int) -> str:
    learner = make_learner(model, mixed, micro=micro)
    batch = synthetic_batch(0, rows, prompt, response)
    tokens = int(batch.attention_mask.sum())
    learner.update(batch)  # warm-up
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(3):
        t = time.perf_counter()
        learner.update(batch)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    s = sorted(times)[1]
    t = time.perf_counter()
    learner.export_weights("bfloat16")
    export_s = time.perf_counter() - t
    peak = torch.cuda.max_memory_allocated() / 2**30
    del learner
    torch.cuda.empty_cache()
    return (f"| {mixed or 'float32'} | {rows} x ({prompt} + <={response}) | {micro} | {s:.2f} | {tokens / s:,.0f} | "
            f"{peak:.1f} | {export_s:.2f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    assert torch.cuda.is_available(), "this benchmark needs a GPU"
    work = Path(tempfile.mkdtemp(prefix="gpu-learner-"))
    model = args.model or smollm2_architecture(work / "smollm2-arch")
    import datetime
    import os
    import sys

    import transformers

    env = " ".join(f"{k}={os.environ[k]}" for k in ("CUBLAS_WORKSPACE_CONFIG",) if k in os.environ)
    lines = [f"# Learner on {torch.cuda.get_device_name()} (torch {torch.__version__})", "",
             f"Command: `{(env + ' ') if env else ''}python {' '.join(sys.argv)}` on "
             f"{torch.cuda.device_count()}x {torch.cuda.get_device_name()}, transformers {transformers.__version__}, "
             f"{datetime.date.today().isoformat()}. The learner class alone (no Ray, no vLLM, no weight sync).", "",
             "## Exact resume: save after 2 updates, reload in a fresh Learner, 2 more updates, compare with 4 in one go",
             "SmolLM2-135M architecture (random init), bf16 autocast, 2 PPO epochs x 2 mini-batches (the learner's RNG "
             "orders mini-batches), cosine schedule.", "", "| setting | result | |", "|---|---|---|"]
    for det in (False, True):
        lines.append(resume_check(model, work, det))
        print(lines[-1], flush=True)
    lines += ["", "## Update throughput (one optimizer step over the batch; median of 3 after a warm-up)", "",
              "| compute | batch (rows x tokens) | micro-batch | s/update | tokens/s | peak GiB | export bf16 s |",
              "|---|---|---|---|---|---|---|"]
    for mixed, micro in (("bfloat16", 16), ("bfloat16", 64), (None, 16)):
        lines.append(throughput(model, mixed, rows=64, prompt=128, response=512, micro=micro))
        print(lines[-1], flush=True)
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)


if __name__ == "__main__":
    main()
