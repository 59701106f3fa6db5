"""The FSDP2 learner on 2 gloo ranks (the NCCL code path, another backend) against the one-rank learner.

Each rank is a process of its own (torch.multiprocessing), joined by rl.train.distributed.init_group as a learner
group actor joins; the policy is sharded with fully_shard, every rank runs its share of the rows. What must hold:
the update equals the one-rank update (to float rounding: the sums are ordered differently), the metrics too, a
checkpoint of 2 ranks resumes exactly on 2 ranks and on 1, and one rank's checkpoint resumes on 2.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from rl.config.algorithm import KLConfig, PolicyLossConfig, TokenWeightConfig
from rl.config.learner import LearnerConfig, LoraConfig, OptimConfig
from rl.core.batch import Batch
from rl.train.distributed import split_rows

pytestmark = pytest.mark.integration


def make_batch(seed: int) -> Batch:
    g = torch.Generator().manual_seed(seed)
    lengths = [(3, 4), (5, 2), (4, 6), (6, 3), (2, 5), (5, 1), (3, 7), (4, 4)]
    prompts = [torch.randint(5, 400, (p,), generator=g).tolist() for p, _ in lengths]
    responses = [torch.randint(5, 400, (r,), generator=g).tolist() for _, r in lengths]
    logprobs = [[-1.0] * len(r) for r in responses]
    batch = Batch.from_sequences(prompts, responses, logprobs, [0, 0, 1, 1, 2, 2, 3, 3], pad_token_id=0)
    batch.advantages = torch.randn(len(lengths), 1, generator=g) * batch.response_mask
    return batch


def learner_cfg(**kw) -> LearnerConfig:
    return LearnerConfig(micro_batch_size=2, ppo_epochs=2, mini_batches=4, num_threads=1,
                         optim=OptimConfig(lr=1e-3, schedule="cosine", warmup_steps=1), **kw)


CASES = {  # what the loss reads across the step: KL's reference (sharded too) and STEER's batch-scope weights (the max
    # over the whole step's tokens). Not 80/20 here: its 0/1 weights flip for a token whose entropy sits at the
    # threshold when the micro-batches (2 ranks' or 1's) round it differently; it reads the same step-wide tensors.
    "kl_steer": dict(kl=KLConfig(coef=0.1), weights=TokenWeightConfig(methods=["steer_exp"], scope="batch")),
    # LoRA sharded with its frozen base in each layer's unit; the reference is the base with the adapter off, the
    # weights out and model/ merged from the gathered A and B, adapter/ written whole by rank 0; and varlen packing
    # (each micro-batch one row of real tokens) through PEFT's and FSDP's wrapped decoder
    "lora_kl_varlen": dict(kl=KLConfig(coef=0.1), weights=None, varlen=True, share_prompts=False,
                           lora=LoraConfig(rank=4, alpha=8, target_modules=["q_proj", "v_proj", "down_proj"])),
}


def build(path: str, case: str, reference: str):
    from rl.train.learner import Learner

    c = CASES[case]
    more = {k: v for k, v in c.items() if k not in ("kl", "weights")}  # LearnerConfig fields
    return Learner(path, learner_cfg(**more), PolicyLossConfig(), c["kl"], total_steps=4, max_response_tokens=8,
                   weights=c["weights"], ref_model_path=reference)


def run(path: str, case: str, steps: range, out: Path, resume: Path | None = None, save_at: int | None = None):
    """Update on batches `steps`; metrics per step and the final weights into `out` (from rank 0). The policy
    starts from `path`, a checkpoint's model/ on resume; the reference is always the first model's."""
    from rl.train.distributed import world

    learner = build(str(resume / "model") if resume is not None else path, case, reference=path)
    if resume is not None:
        learner.load_state(str(resume))
    metrics = []
    if save_at == -1:  # before any update: the optimizer has no state yet
        learner.save(str(out / "ckpt"))
    for s in steps:
        metrics.append(learner.update(make_batch(s)))
        if s == save_at:
            learner.save(str(out / "ckpt"))
    weights = learner.export_weights()
    if world()[0] == 0:
        out.mkdir(parents=True, exist_ok=True)
        torch.save(weights, out / "weights.pt")
        (out / "metrics.json").write_text(json.dumps(metrics))


def _rank(rank: int, world_size: int, port: int, args: tuple) -> None:
    from rl.train.distributed import init_group

    init_group(rank, world_size, "127.0.0.1", port)
    run(*args)
    # leave together: a rank that exits while the other still holds the gloo group can abort in gloo's
    # destructor ("terminate called without an active exception", SIGABRT), which fails the test
    import torch.distributed as dist

    dist.barrier()
    dist.destroy_process_group()


def spawn(world_size: int, *args) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.start_processes(_rank, args=(world_size, port, args), nprocs=world_size, start_method="spawn")


def results(out: Path):
    return torch.load(out / "weights.pt", weights_only=True), json.loads((out / "metrics.json").read_text())


LAYOUT = {"tokens_read", "padding_frac"}  # what the micro-batches read: depends on how rows split over ranks


def assert_close(a: Path, b: Path, exact: bool = False) -> None:
    (wa, ma), (wb, mb) = results(a), results(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        if exact:
            assert torch.equal(wa[k], wb[k]), k
        else:
            # Adam moves a weight by up to lr (1e-3) whatever its gradient's size, so rounding in a tiny gradient
            # shows at 1e-6..1e-5; the gradient's scale is checked by grad_norm in the metrics (Adam would hide it)
            assert torch.allclose(wa[k], wb[k], rtol=1e-4, atol=2e-5), (k, float((wa[k] - wb[k]).abs().max()))
    for step_a, step_b in zip(ma[len(ma) - len(mb):], mb, strict=True):  # a resumed run: its last steps
        assert step_a.keys() == step_b.keys()
        for k in step_a:
            if k in LAYOUT and not exact:
                continue
            if exact:
                assert step_a[k] == step_b[k], k
            else:
                assert step_a[k] == pytest.approx(step_b[k], rel=1e-3, abs=1e-6), k


@pytest.mark.parametrize("case", list(CASES))
def test_two_ranks_update_as_one_and_resume_across_rank_counts(tiny_model_path, tmp_path, case):
    one, two = tmp_path / "one", tmp_path / "two"
    run(tiny_model_path, case, range(4), one, save_at=1)
    spawn(2, tiny_model_path, case, range(4), two, None, 1)
    from safetensors.torch import load_file

    base = load_file(f"{tiny_model_path}/model.safetensors")  # the update moved the weights out (LoRA: merged)
    assert any(not torch.equal(v, base[k]) for k, v in results(two)[0].items() if k in base)
    assert_close(one, two)  # 2 ranks = 1 rank: the same update, steps 0-3 (2 epochs x 2 mini-batches each)
    # the 2-rank checkpoint: the whole weights (loadable anywhere) and the optimizer's DCP shards
    ckpt = two / "ckpt"
    assert (ckpt / "model" / "model.safetensors").exists() and (ckpt / "optimizer" / ".metadata").exists()
    if "lora" in CASES[case]:  # and PEFT's adapter, written whole by rank 0 under PEFT's names
        assert not any(".default." in k for k in load_file(str(ckpt / "adapter" / "adapter_model.safetensors")))
    spawn(2, tiny_model_path, case, range(2, 4), tmp_path / "two_resumed", ckpt)
    assert_close(two, tmp_path / "two_resumed", exact=True)  # resumed on 2 ranks: bitwise the run that went on
    run(tiny_model_path, case, range(2, 4), tmp_path / "one_from_two", resume=ckpt)
    assert_close(one, tmp_path / "one_from_two")  # resharded onto 1 rank
    spawn(2, tiny_model_path, case, range(2, 4), tmp_path / "two_from_one", one / "ckpt")
    assert_close(one, tmp_path / "two_from_one")  # one rank's checkpoint onto 2


def test_some_mini_batch_leaves_a_rank_without_rows():
    """The 2-rank runs above meet a mini-batch of one prompt's 2 rows (whole groups go to one rank): the other rank
    runs fillers only. The learner's shuffles (seed 0, 2 epochs a step, 4 steps) are replayed here to show it."""
    g = torch.Generator().manual_seed(0)
    groups = make_batch(0).group_ids
    one_group = [len(set(groups[c].tolist())) == 1 for _ in range(8) for c in torch.randperm(8, generator=g).chunk(4)]
    assert any(one_group)


def test_rows_split_by_tokens_keep_groups_whole():
    lengths = torch.tensor([10, 10, 3, 3, 8, 8, 1, 1])
    groups = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    parts = [split_rows(lengths, groups, 2, r) for r in range(2)]
    assert sorted(torch.cat(parts).tolist()) == list(range(8))
    assert [sorted({int(groups[i]) for i in p}) for p in parts] == [[0, 3], [1, 2]]  # 22 tokens against 22
    rows = [split_rows(lengths, None, 3, r) for r in range(3)]
    assert sorted(torch.cat(rows).tolist()) == list(range(8))
    loads = sorted(int(lengths[r].sum()) for r in rows)
    assert loads == [14, 14, 16]
    assert split_rows(lengths, groups, 1, 0).tolist() == list(range(8))


def test_a_save_before_any_step_leaves_adam_at_its_first_step(tiny_model_path, tmp_path):
    """torch's get/set_optimizer_state_dict make an empty optimizer's state with a zero-lr step (step=1, zero moments):
    a 2-rank save before any step (or after only skipped ones) would make the next step Adam's second, unlike one
    rank's. The save and the resume leave the optimizer empty instead."""
    one, two = tmp_path / "one", tmp_path / "two"
    run(tiny_model_path, "kl_steer", range(2), one)
    spawn(2, tiny_model_path, "kl_steer", range(2), two, None, -1)
    assert_close(one, two)  # saving changed nothing in the run that went on
    spawn(2, tiny_model_path, "kl_steer", range(2), tmp_path / "resumed", two / "ckpt")
    assert_close(two, tmp_path / "resumed", exact=True)  # nor in one resumed from that checkpoint
