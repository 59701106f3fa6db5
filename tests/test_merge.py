"""`rlvr merge` (Balanced Actor Initialization) on tiny Llamas with SmolLM2's tokenizer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rl.cli import main
from rl.models.merge import interpolate, merge_models
from tests.resume_harness import write_tiny_llama


@pytest.fixture(scope="module")
def models(tmp_path_factory, smollm2_path):
    root = tmp_path_factory.mktemp("merge")
    return [write_tiny_llama(root / f"m{seed}", seed=seed) for seed in (0, 1, 2)]


def weights(folder) -> dict[str, torch.Tensor]:
    out = {}
    for f in sorted(Path(folder).glob("*.safetensors")):
        out.update(load_file(f))
    return out


def test_interpolate_endpoints_are_exact():
    a, b = torch.randn(4, 3), torch.randn(4, 3).bfloat16()
    assert torch.equal(interpolate(a, b, 1.0), a) and torch.equal(interpolate(a, b, 0.0), b.float())
    assert torch.allclose(interpolate(a, b, 0.25), 0.25 * a + 0.75 * b.float())


def test_weight_one_returns_the_first_model_exactly(models, tmp_path):
    out = merge_models(models, 1.0, 1.0, tmp_path / "actor")
    merged, first = weights(out), weights(models[0])
    assert merged.keys() == first.keys() and all(torch.equal(merged[k], first[k]) for k in first)


def test_two_stage_interpolation_follows_the_formula(models, tmp_path):
    from transformers import AutoModelForCausalLM

    out = merge_models(models, 0.3, 0.6, tmp_path / "actor")
    a, b, c, m = weights(models[0]), weights(models[1]), weights(models[2]), weights(out)
    for k in a:
        expected = 0.6 * (0.3 * a[k] + 0.7 * b[k]) + 0.4 * c[k]
        assert torch.allclose(m[k], expected, atol=1e-6), k
    assert json.loads((out / "merge.json").read_text())["w2"] == 0.6
    model = AutoModelForCausalLM.from_pretrained(out)  # a save_pretrained folder transformers loads as it is
    assert torch.equal(model.lm_head.weight, model.model.embed_tokens.weight)  # still tied
    two = weights(merge_models(models[:2], 0.5, None, tmp_path / "two"))
    assert all(torch.allclose(two[k], 0.5 * a[k] + 0.5 * b[k], atol=1e-6) for k in a)


def test_different_architectures_and_tokenizers_are_refused(models, tmp_path, smollm2_path):
    from transformers import AutoTokenizer

    wide = write_tiny_llama(tmp_path / "wide", hidden_size=64)
    with pytest.raises(ValueError, match="architectures differ \\(head_dim: 64 vs 32, hidden_size: 128 vs 64\\)"):
        merge_models([models[0], wide], 0.5, None, tmp_path / "x")
    other_tok = tmp_path / "other_tok"
    write_tiny_llama(other_tok)
    tok = AutoTokenizer.from_pretrained(other_tok)
    tok.add_tokens(["<extra_token_for_the_test>"])
    tok.save_pretrained(other_tok)
    with pytest.raises(ValueError, match="tokenizers differ"):
        merge_models([models[0], str(other_tok)], 0.5, None, tmp_path / "x")
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("argv,words", [
    (["--w1", "1.5"], "weights must lie in"),
    (["--w1", "0.5", "--w2", "0.5"], "give a third model"),
])
def test_bad_weights_are_named(models, tmp_path, argv, words):
    with pytest.raises(ValueError, match=words):
        merge_models(models[:2], float(argv[1]), float(argv[3]) if len(argv) > 2 else None, tmp_path / "x")


def test_cli_refuses_a_non_empty_out_without_force(models, tmp_path, capsys):
    out = tmp_path / "actor"
    out.mkdir()
    (out / "keep.txt").write_text("user data")
    with pytest.raises(SystemExit) as e:
        main(["merge", *models[:2], "--w1", "0.5", "--out", str(out)])
    assert e.value.code == 2 and "pass --force" in capsys.readouterr().err
    assert (out / "keep.txt").read_text() == "user data"
    main(["merge", *models[:2], "--w1", "0.5", "--out", str(out), "--force"])
    assert (out / "merge.json").exists() and not (out / "keep.txt").exists()
