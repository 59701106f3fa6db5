"""IKEA's multi-turn search rollout: turns, the information blocks, the search limit, the loss mask; and that the
learner gives retrieved tokens no gradient."""

from __future__ import annotations

import pytest
import torch

from rl.core.batch import Batch
from rollout.base import Sample
from rl.config.rollout import SamplingConfig, SearchConfig
from rollout.search import LIMIT_REACHED, information_block, search_rollout, searched_query
from tests.test_learner import grads_after_one_step  # noqa: F401  (the tiny model fixture comes from conftest)


class CharTokenizer:
    """One token per character (ids = code points): makes token counts easy to check."""

    def encode(self, text, add_special_tokens=False):
        return [ord(c) for c in text]


def scripted_generate(script: dict[str, list[str]], calls: list):
    """A stand-in for fleet.generate in this unit test only: the reply to a prompt is the next scripted text for the
    prompt's first character; it stops after a stop string like the engines do."""

    def generate(prompts, sampling, seeds):
        calls.append((len(prompts), sampling.n, sampling.max_tokens, list(sampling.stop), list(seeds)))
        out = []
        for p in prompts:
            group = []
            for _ in range(sampling.n):
                text = script[chr(p[0])].pop(0)
                cut = min([text.index(s) + len(s) for s in sampling.stop if s in text], default=None)
                text = text[:cut][: sampling.max_tokens] if cut else text[: sampling.max_tokens]
                group.append(Sample(list(p), [ord(c) for c in text], [-0.5] * len(text),
                                    "stop" if cut or len(text) < sampling.max_tokens else "length", text))
            out.append(group)
        return out

    return generate


def test_searches_are_answered_masked_and_limited():
    script = {
        "A": ["<search>capital of France</search>", "I know: <answer>x</answer>",  # turn 0: two samples
              "<answer>Paris</answer>"],  # turn 1: sample 0 answers
        # B0 searches q1, q3, q5 (3 allowed), then q6 (past the limit) and answers; B1 searches q2 and answers
        "B": ["<search>q1</search>", "<search>q2</search>", "<search>q3</search>", "<answer>Oslo</answer>",
              "<search>q5</search>", "<search>q6</search>", "<answer>Rome</answer>"],
    }
    calls, queries = [], []

    def retrieve(q):
        queries.append(q)
        return [f"passage one about {q}", "passage two"]

    cfg = SearchConfig(max_searches=3, top_k=1)
    groups = search_rollout(scripted_generate(script, calls), CharTokenizer(), [[ord("A")], [ord("B")]],
                            SamplingConfig(n=2, max_tokens=400), [11, 22], retrieve, cfg)
    assert queries == ["capital of France", "q1", "q2", "q3", "q5"]  # q6 is past the limit: not retrieved
    a0 = groups[0][0]
    info = information_block(["passage one about capital of France"], cfg.max_passage_words)
    assert a0.text == "<search>capital of France</search>" + info + "<answer>Paris</answer>"
    assert a0.finish_reason == "stop" and len(a0.response_ids) == len(a0.text)
    assert a0.loss_mask == [1] * 34 + [0] * len(info) + [1] * len("<answer>Paris</answer>")
    assert a0.logprobs[34 : 34 + len(info)] == [0.0] * len(info)  # the engine did not sample them
    assert groups[0][1].text == "I know: <answer>x</answer>" and groups[0][1].loss_mask == [1] * 26
    assert all(s.prompt_ids == [ord("A")] for s in groups[0])
    # every turn stops at </search> and gets one continuation per searching sample, seeded per (prompt, sample, turn)
    assert calls[0][:4] == (2, 2, 400, ["</search>"]) and all(c[1] == 1 for c in calls[1:])
    assert len({seed for c in calls[1:] for seed in c[4]}) == sum(c[0] for c in calls[1:])
    b0, b1 = groups[1]
    assert b0.text.count("<search>") == 4 and b0.text.endswith(LIMIT_REACHED + "<answer>Rome</answer>")
    assert b1.text.count("<search>") == 1 and b1.text.endswith("<answer>Oslo</answer>") and LIMIT_REACHED not in b1.text
    assert calls[-1][3] == []  # the answer after the limit may not search again


def test_no_room_left_ends_the_sample_as_truncated():
    script = {"A": ["<search>" + "x" * 20 + "</search>"]}
    groups = search_rollout(scripted_generate(script, []), CharTokenizer(), [[ord("A")]],
                            SamplingConfig(n=1, max_tokens=40), [0], lambda q: ["a long passage " * 10], SearchConfig())
    s = groups[0][0]
    assert s.finish_reason == "length" and s.text.endswith("</search>")


def test_searched_query():
    assert searched_query("think <search> who wrote X </search>\n") == "who wrote X"
    assert searched_query("<search>a</search> then more") is None and searched_query("no search") is None


def test_batch_keeps_retrieved_tokens_out_of_the_loss_mask():
    b = Batch.from_sequences([[1, 2]], [[3, 4, 5, 6]], [[-1.0] * 4], [0], pad_token_id=0, loss_masks=[[1, 0, 0, 1]])
    assert b.response_mask.tolist() == [[0, 0, 1, 0, 0, 1]] and b.attention_mask.tolist() == [[1] * 6]


def test_retrieved_tokens_get_no_gradient(tiny_model_path):
    """One learner update from a batch whose responses hold 'retrieved' tokens (loss mask 0): the update is the same
    whatever advantages and old log-probs those tokens carry, and differs when they are counted."""
    from rl.config.algorithm import PolicyLossConfig
    from rl.train.learner import Learner
    from rl.config.learner import LearnerConfig, OptimConfig

    def update(masks, junk: float) -> dict[str, torch.Tensor]:
        prompts, responses = [[5, 6, 7], [8, 9]], [[10, 11, 12, 13, 14, 15], [16, 17, 18, 19]]
        batch = Batch.from_sequences(prompts, responses, [[-1.0] * len(r) for r in responses], [0, 0], 0, masks)
        full = Batch.from_sequences(prompts, responses, [[-1.0] * len(r) for r in responses], [0, 0], 0).response_mask
        batch.advantages = torch.tensor([[1.0], [-1.0]]) * batch.response_mask + junk * (full - batch.response_mask)
        cfg = LearnerConfig(micro_batch_size=2, optim=OptimConfig(lr=1e-3, grad_clip=0.0), num_threads=1)
        learner = Learner(tiny_model_path, cfg, PolicyLossConfig(), None, total_steps=1, max_response_tokens=8)
        learner.model.to(torch.float64)
        before = {k: v.clone() for k, v in learner.model.state_dict().items()}
        learner.update(batch)
        return {k: learner.model.state_dict()[k] - before[k] for k in before}

    masks = [[1, 1, 0, 0, 0, 1], [1, 0, 0, 1]]
    a, b, counted = update(masks, 0.0), update(masks, 100.0), update(None, 0.0)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.allclose(a[k], counted[k]) for k in a)
