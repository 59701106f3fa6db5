"""The memory estimate (rl/models/memory.py): against measured CPU peaks, and the refusal of a run that cannot fit."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from rl.config import load_config
from rl.models.memory import GIB, Shape, fit_problems, learner_estimate

ROOT = Path(__file__).resolve().parents[1]
SHAPES = json.loads((ROOT / "benchmarks" / "model_configs.json").read_text())


def test_parameter_counts_match_the_published_sizes():
    """Shape.parameters() from config.json alone: the sizes the model cards state (1.54B, 7.62B, 8.19B, 3.09B)."""
    counts = {k: Shape.from_config(v).parameters() / 1e9 for k, v in SHAPES.items() if not k.startswith("_")}
    assert counts["Qwen/Qwen2.5-Math-1.5B"] == pytest.approx(1.54, abs=0.01)
    assert counts["Qwen/Qwen2.5-Math-7B"] == pytest.approx(7.62, abs=0.01)
    assert counts["Qwen/Qwen3-8B-Base"] == pytest.approx(8.19, abs=0.01)
    assert counts["Qwen/Qwen2.5-3B-Instruct"] == pytest.approx(3.09, abs=0.01)


@pytest.fixture(scope="module")
def mid_llama(tmp_path_factory) -> str:
    """A random 8-layer Llama (hidden 512, MLP 1536, vocab 49152, untied: 78M parameters), big enough that the
    learner's memory stands well above the allocator's noise."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    folder = tmp_path_factory.mktemp("mid-llama")
    config = LlamaConfig(vocab_size=49152, hidden_size=512, intermediate_size=1536, num_hidden_layers=8,
                         num_attention_heads=8, num_key_value_heads=8, max_position_embeddings=1024,
                         tie_word_embeddings=False)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    return str(folder)


COMMON = ["learner.micro_batch_size=4", "data.max_prompt_tokens=128", "rollout.sampling.max_tokens=128",
          "learner.num_threads=2"]


@pytest.mark.parametrize("extra", [[], ["learner.gradient_checkpointing=true", "algorithm.kl.coef=0.01"]],
                         ids=["plain", "checkpointing+reference"])
def test_estimate_is_within_20_percent_of_the_measured_peak(mid_llama, extra):
    """Two updates of the learner class in a process of its own (tests/memory_probe.py): its peak RSS over what the
    process held before the learner, against the estimate's sum."""
    out = subprocess.run([sys.executable, "-m", "tests.memory_probe", mid_llama, *COMMON, *extra], cwd=ROOT,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert 0.8 <= r["measured"] / r["estimate"] <= 1.2, r
    if extra:  # the parts the config switches on are counted, and with checkpointing activations shrink
        assert r["parts"]["reference"] == r["parts"]["weights"] and r["parts"]["activations"] > 0


def _with_config(tmp_path: Path, model: str) -> Path:
    folder = tmp_path / model.replace("/", "--")
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(SHAPES[model]))
    return folder


def test_a_recipe_that_cannot_fit_is_refused_at_start_with_the_knobs(tmp_path, capsys):
    """dapo_math (Qwen2.5-Math-7B, full fine-tuning, fp32 masters) on one 80 GiB learner GPU (learner.num_ranks=1;
    the recipe sets 4): refused before Ray starts, naming the need, the GPU size and what would fit."""
    from rl.cli import main

    folder = _with_config(tmp_path, "Qwen/Qwen2.5-Math-7B")
    with pytest.raises(SystemExit) as e:
        main(["train", str(ROOT / "recipes" / "dapo_math.yaml"), f"model.path={folder}", f"output_dir={tmp_path}/run",
              "learner.num_ranks=1"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "the learner needs about 146 GiB" in err and "> 80 GiB a GPU (ray.gpu_memory_gib)" in err, err
    assert "learner.lora={rank: 64} (LoRA; about 64 GiB)" in err, err
    assert "learner.num_ranks=4 (FSDP2 shards on 4 GPUs; about 53 GiB each)" in err, err  # 2 ranks: 81 GiB
    assert not (tmp_path / "run").exists()  # nothing started, nothing written
    shipped = load_config(str(ROOT / "recipes" / "dapo_math.yaml"), [f"model.path={folder}"])
    assert shipped.learner.num_ranks == 4
    assert fit_problems(Shape.from_config(SHAPES["Qwen/Qwen2.5-Math-7B"]), shipped, 80.0) == []


def test_the_recipes_that_fit_pass_and_fp32_masters_cost_what_they_should(tmp_path):
    cfg = load_config(str(ROOT / "recipes" / "grpo_gsm8k.yaml"),
                      [f"model.path={_with_config(tmp_path, 'Qwen/Qwen2.5-Math-1.5B')}"])
    shape = Shape.from_config(SHAPES["Qwen/Qwen2.5-Math-1.5B"])
    assert cfg.learner.dtype == "float32" and cfg.learner.mixed_precision == "bfloat16"
    assert fit_problems(shape, cfg, cfg.ray.gpu_memory_gib) == []
    parts = learner_estimate(shape, cfg)
    p = shape.parameters()
    # 4 bytes a weight + 4 a gradient + 8 of AdamW moments, the bf16 autocast copy, and the fp32 reference (KL on)
    assert (parts["weights"], parts["gradients"], parts["optimizer"], parts["autocast"], parts["reference"]) == (
        4 * p, 4 * p, 8 * p, 2 * p, 4 * p)
    assert fit_problems(shape, cfg, 24.0) and sum(parts.values()) / GIB > 24


def test_block_attention_and_the_bf16_head_are_counted(tmp_path):
    """learner.block_attention's gathered queries, keys and values (with each row's copy of its prompt's) and
    learner.head_autocast's bf16 copy of the output layer: the terms the module docstring gives, and only when on."""
    from rl.models.memory import micro_batch_tokens

    recipe, model = str(ROOT / "recipes" / "grpo_gsm8k.yaml"), "Qwen/Qwen2.5-Math-1.5B"
    folder, shape = _with_config(tmp_path, model), Shape.from_config(SHAPES[model])
    on, off, head = (learner_estimate(shape, load_config(recipe, [f"model.path={folder}", *more])) for more in
                     (["learner.block_attention=true"], [], ["learner.head_autocast=true"]))
    cfg = load_config(recipe, [f"model.path={folder}"])
    t, _ = micro_batch_tokens(cfg)
    blocks = 2 * (2 * t * shape.hidden + 2 * shape.kv * (t + cfg.learner.micro_batch_size * cfg.data.max_prompt_tokens))
    layers = 2 if cfg.learner.gradient_checkpointing else shape.layers
    assert on["activations"] - off["activations"] == layers * blocks > 0
    assert head["head"] - off["head"] == shape.vocab * shape.hidden * 2  # bf16
