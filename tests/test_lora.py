"""LoRA (learner.lora, peft): only the adapters train, the reference is the base with the adapter off (no second
model), the engines get merged weights, and a checkpoint (merged model/ + PEFT adapter/) resumes exactly."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from rl.config.algorithm import KLConfig, PolicyLossConfig
from rl.config.learner import LearnerConfig, LoraConfig, OptimConfig
from rl.train.learner import Learner
from tests.test_learner import make_batch


def lora_learner(path: str, model_path: str | None = None, kl: bool = True) -> Learner:
    cfg = LearnerConfig(micro_batch_size=3, num_threads=1, optim=OptimConfig(lr=1e-2, grad_clip=0.0),
                        lora=LoraConfig(rank=4, alpha=8, target_modules=["q_proj", "v_proj", "down_proj"]))
    return Learner(model_path or path, cfg, PolicyLossConfig(), KLConfig(coef=0.1) if kl else None, total_steps=4,
                   max_response_tokens=8, seed=0, ref_model_path=path)


def test_only_the_adapters_train_and_the_reference_is_the_base_without_a_second_model(tiny_model_path):
    learner = lora_learner(tiny_model_path)
    assert learner.ref_model is None  # the base with the adapter disabled is the reference
    trainable = [n for n, p in learner.model.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    batch = make_batch()
    # step 0: B = 0, the policy is the base: KL exactly 0, the merged weights are the base's
    assert torch.equal(learner.compute_logprobs(batch), learner.compute_logprobs(batch, reference=True))
    base = load_file(f"{tiny_model_path}/model.safetensors")
    merged = learner.export_weights()
    assert all(torch.equal(merged[k], base[k]) for k in base)
    frozen = {n: p.detach().clone() for n, p in learner.model.named_parameters() if not p.requires_grad}
    metrics = learner.update(batch)
    assert metrics["grad_norm"] > 0 and metrics["kl"] == 0.0  # the first step's KL: policy == reference
    assert all(torch.equal(p, frozen[n]) for n, p in learner.model.named_parameters() if not p.requires_grad)
    after = learner.export_weights()
    moved = [k for k in base if not torch.equal(after[k], base[k])]
    assert moved and all(any(m in k for m in ("q_proj", "v_proj", "down_proj")) for k in moved)
    assert not torch.equal(learner.compute_logprobs(batch), learner.compute_logprobs(batch, reference=True))


def test_the_merged_weights_compute_what_the_adapted_model_computes(tiny_model_path):
    from transformers import AutoModelForCausalLM

    learner = lora_learner(tiny_model_path, kl=False)
    learner.update(make_batch())
    plain = AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=torch.float32)
    plain.load_state_dict(learner.export_weights())
    ids = make_batch().input_ids[:2]
    with torch.no_grad():
        torch.testing.assert_close(plain(ids).logits, learner.model(input_ids=ids).logits, rtol=1e-5, atol=1e-5)


def test_a_lora_checkpoint_is_peft_format_plus_a_merged_model_and_resumes_exactly(tiny_model_path, tmp_path):
    a = lora_learner(tiny_model_path)
    batches = [make_batch(s) for s in range(3)]
    a.update(batches[0])
    a.save(str(tmp_path / "ckpt"))
    adapter = json.loads((tmp_path / "ckpt" / "adapter" / "adapter_config.json").read_text())
    assert adapter["r"] == 4 and adapter["peft_type"] == "LORA"
    merged = load_file(str(tmp_path / "ckpt" / "model" / "model.safetensors"))
    assert not any("lora" in k or "base_layer" in k for k in merged)
    assert all(torch.equal(merged[k], v) for k, v in a.export_weights().items() if k in merged)
    # resumed as the trainer does: the policy path is the checkpoint's model/, the base the original model
    b = lora_learner(tiny_model_path, model_path=str(tmp_path / "ckpt" / "model"))
    b.load_state(str(tmp_path / "ckpt"))
    for batch in batches[1:]:
        ma, mb = a.update(batch), b.update(batch)
        assert ma == mb
    wa, wb = a.export_weights(), b.export_weights()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.mark.parametrize("override, message", [
    ("learner.lora.rank=0", r"learner.lora.rank=0: must be >= 1"),
    ("learner.lora.target_modules=[]", r"learner.lora.target_modules is empty"),
])
def test_lora_config_mistakes_are_named(override, message):
    from rl.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])
