"""Proof that a refactor changed no behaviour: short seeded runs of two commits, compared step by step and bit by bit.

For each case (the quickstart and one CPU recipe of each method, at small sizes: 3 steps of 2 prompts x 4 samples,
48 new tokens), each commit is checked out in its own git worktree and run there with this checkout's .venv: its
offline preparation step if the method has one (DPH-RL's pi0 samples, AdaptThink's R_ref), then `rlvr train`. A case
is the same when every per-step metric (all of metrics.jsonl but time/*), every logged rollout (rollouts.jsonl), the
prepared data files, and the final checkpoint's weights (each tensor's bytes, in safetensors) are identical.
CPU runs here are deterministic, so any difference is a change of behaviour.

    python benchmarks/same_behaviour.py --base main~3 --head HEAD       # or --head WORKTREE (uncommitted changes)
    python benchmarks/same_behaviour.py --base A --head B --cases quickstart steer
    python benchmarks/same_behaviour.py --base A --head /tmp/copy   # a copied tree (no .git), e.g. a snapshot

The knowrl and ikea_search cases read the knowrl questions (a data mirror: RLVR_DATA_DIR, see README "Data").
Each commit's records are kept under --runs (by commit id), so a second comparison against the same base does not
rerun it. The report goes to --out (default benchmarks/results/same_behaviour.md).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from arms import REPO  # noqa: E402

SMALL = [
    "trainer.total_steps=3", "trainer.prompts_per_step=2", "rollout.sampling.n=4", "rollout.sampling.max_tokens=48",
    "learner.micro_batch_size=4", "trainer.eval_at_start=false", "trainer.eval_every=0", "data.eval=null",
    "eval_sets={}", "trainer.save_every=0", "trainer.keep_checkpoints=1", "logging.tensorboard=false",
    "logging.progress=false", "resume=none", "seed=0",
    # one learner thread: with two, the same commit twice gave gradients that differ in the last bits now and then
    # (a multi-threaded reduction whose order varies; 2 of 11 cases ran twice), which would hide a real difference
    "learner.num_threads=1",
]
ARITH = ["data.arithmetic.num_train=16"]
FACTS = ["data.train.limit=16", "rollout.max_model_len=768"]
# name: (recipe, overrides, preparation command or None); the preparation gets the same overrides
CASES: dict[str, tuple[str, list[str], list[str] | None]] = {
    "quickstart": ("quickstart.yaml", [], None),
    "steer": ("steer_cpu.yaml", [], None),
    "high_entropy": ("high_entropy_cpu.yaml", [], None),
    "hicra": ("hicra_cpu.yaml", ["algorithm.hicra.refit_every=2"], None),
    "cure_stage1": ("cure_stage1_cpu.yaml", ["rollout.sampling.n=2"], None),
    # 4 samples per question, mastered at 2 of 4 right: some questions are mastered, so the divergence term runs
    "dph_forward_kl": ("dph_forward_kl_cpu.yaml", ARITH + ["algorithm.divergence.prepare_k=4",
                                                          "algorithm.divergence.perfect_threshold=0.5",
                                                          "algorithm.divergence.data=runs/same_behaviour_pi0"],
                       ["dph-prepare"]),
    "knowrl": ("knowrl_cpu.yaml", FACTS, None),
    "ikea_search": ("ikea_search_cpu.yaml", FACTS, None),
    "adaptthink": ("adaptthink_cpu.yaml", ARITH, ["adaptthink-prepare", "--k", "2"]),
    # GRPO options that enter the loop as methods too: DAPO's filter and shaping, the KL penalty in the reward
    "dapo": ("quickstart.yaml", ["algorithm.dynamic_sampling.max_tries=3", "algorithm.overlong.buffer=16",
                                 "algorithm.overlong.mask_truncated=true"], None),
    "kl_in_reward": ("quickstart.yaml", ["algorithm.kl.coef=0.05", "algorithm.kl.in_reward=true"], None),
    # LoRA with KL: the reference is the base with the adapter off; model/ merged, adapter/ in PEFT's format
    "lora_kl": ("quickstart.yaml", ["learner.lora={rank: 8}", "algorithm.kl.coef=0.05"], None),
}
# overrides in the spelling of a tree from before the method sections became optional (present = on), for those
# trees; a tree is of that age when its rl/config/algorithm.py still has DynamicSamplingConfig.enabled
OLD_SPELLING = {"algorithm.dynamic_sampling.max_tries=3": ["algorithm.dynamic_sampling.enabled=true",
                                                           "algorithm.dynamic_sampling.max_tries=3"]}
PREPARED = {"dph_forward_kl": "runs/same_behaviour_pi0", "adaptthink": "runs/adaptthink_cpu_data"}


def git(*args: str, cwd: Path = REPO) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def checkout(rev: str, runs: Path) -> tuple[str, Path]:
    """(commit id, a worktree of it); rev WORKTREE is this checkout as it is, uncommitted changes included."""
    if rev == "WORKTREE":
        return "WORKTREE", REPO
    if Path(rev).is_dir() and not (Path(rev) / ".git").exists():  # a copy of a tree (e.g. rsync of a checkout)
        return "TREE-" + Path(rev).name, Path(rev).absolute()
    commit = git("rev-parse", "--verify", f"{rev}^{{commit}}")
    tree = runs / "trees" / commit[:12]
    if not (tree / ".git").exists():
        shutil.rmtree(tree, ignore_errors=True)
        tree.parent.mkdir(parents=True, exist_ok=True)
        git("worktree", "add", "--detach", str(tree), commit)
    return commit, tree


def tensor_digest(folder: Path) -> dict[str, str]:
    """sha256 of each tensor's name, dtype, shape and bytes in the model's safetensors files."""
    import torch
    from safetensors.torch import load_file

    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        for name, t in sorted(load_file(f).items()):
            h = hashlib.sha256(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
            h.update(t.contiguous().view(torch.uint8).numpy().tobytes())
            out[name] = h.hexdigest()
    return out


def file_digest(path: Path) -> dict[str, str]:
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path] if path.exists() else []
    return {str(p.relative_to(path if path.is_dir() else path.parent)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in files}


def run_case(name: str, tree: Path, out: Path) -> dict:
    recipe, extra, prepare = CASES[name]
    overrides = SMALL + extra
    if "enabled: bool = False  # DAPO" in (tree / "rl" / "config" / "algorithm.py").read_text():
        overrides = [o for x in overrides for o in OLD_SPELLING.get(x, [x])]
    run_dir = out / name
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    env = {**os.environ, "PYTHONPATH": str(tree), "PYTHONHASHSEED": "0"}
    rlvr = [str(REPO / ".venv" / "bin" / "python"), "-m", "rl.cli"]
    record: dict = {"case": name, "recipe": recipe, "overrides": overrides}
    t0 = time.time()
    for label, cmd in ([("prepare", rlvr + prepare + [f"recipes/{recipe}"] + overrides)] if prepare else []) + [
            ("train", rlvr + ["train", f"recipes/{recipe}", f"output_dir={run_dir / 'run'}"] + overrides)]:
        log = run_dir / f"{label}.log"
        with open(log, "w") as f:
            rc = subprocess.run(cmd, cwd=tree, env=env, stdout=f, stderr=subprocess.STDOUT).returncode
        if rc != 0:
            raise SystemExit(f"{name}: `{' '.join(cmd[2:])}` failed (rc {rc}) in {tree}; see {log}")
    record["seconds"] = round(time.time() - t0, 1)
    run = run_dir / "run"
    steps = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    record["metrics"] = [{k: v for k, v in m.items() if not k.startswith("time/")} for m in steps]
    record["rollouts"] = hashlib.sha256((run / "rollouts.jsonl").read_bytes()).hexdigest()
    last = sorted((run / "checkpoints").glob("step_*"))[-1]
    record["checkpoint"] = last.name
    record["weights"] = tensor_digest(last / "model")
    if name in PREPARED:
        record["prepared"] = file_digest(tree / PREPARED[name])
    shutil.rmtree(run, ignore_errors=True)  # a checkpoint with optimizer state is ~1.5 GiB; the record is what counts
    return record


def record_rev(rev: str, cases: list[str], runs: Path) -> tuple[str, dict]:
    commit, tree = checkout(rev, runs)
    store = runs / "records" / f"{commit[:12]}.json"
    records = json.loads(store.read_text()) if store.exists() and commit[:4] not in ("WORK", "TREE") else {}
    for name in cases:
        if name in records:
            print(f"  {commit[:12]} {name}: recorded before", flush=True)
            continue
        records[name] = run_case(name, tree, runs / "out" / commit[:12])
        print(f"  {commit[:12]} {name}: {records[name]['seconds']:.0f} s", flush=True)
        store.parent.mkdir(parents=True, exist_ok=True)
        store.write_text(json.dumps(records, indent=1))
    return commit, records


def first_difference(a: dict, b: dict) -> str:
    """'' when the two records agree in everything that is behaviour, else where they first differ."""
    ma, mb = a["metrics"], b["metrics"]
    if len(ma) != len(mb):
        return f"{len(ma)} metric lines against {len(mb)}"
    for x, y in zip(ma, mb):
        for k in sorted(set(x) | set(y)):
            if x.get(k) != y.get(k):
                return f"step {x.get('step')}: {k} {x.get(k)!r} against {y.get(k)!r}"
    if a["rollouts"] != b["rollouts"]:
        return "rollouts.jsonl differs"
    if a.get("prepared") != b.get("prepared"):
        return "the prepared data differ"
    if a["checkpoint"] != b["checkpoint"]:
        return f"last checkpoint {a['checkpoint']} against {b['checkpoint']}"
    bad = [k for k in sorted(set(a["weights"]) | set(b["weights"])) if a["weights"].get(k) != b["weights"].get(k)]
    return f"{len(bad)} tensors differ, first {bad[0]}" if bad else ""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", required=True, help="the commit before the change")
    p.add_argument("--head", default="WORKTREE", help="the commit after it (WORKTREE: this checkout as it is)")
    p.add_argument("--cases", nargs="+", choices=list(CASES), default=list(CASES))
    p.add_argument("--runs", type=Path, default=REPO / "runs" / "same_behaviour_1t")  # records kept per SMALL
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "same_behaviour.md")
    a = p.parse_args()
    runs = a.runs.absolute()
    base, rb = record_rev(a.base, a.cases, runs)
    head, rh = record_rev(a.head, a.cases, runs)
    rows, same = [], True
    for name in a.cases:
        diff = first_difference(rb[name], rh[name])
        same &= not diff
        m = rh[name]["metrics"]
        rows.append(f"| {name} | `{rb[name]['recipe']}` | {len([x for x in m if x.get('step', 0) >= 1])} | "
                    f"{len(rh[name]['weights'])} | {'identical' if not diff else 'DIFFERENT: ' + diff} |")
    text = "\n".join([
        "# Same behaviour before and after a change", "",
        f"Base {base[:12]} (`{a.base}`), head {head[:12]} (`{a.head}`). Command: "
        f"`python benchmarks/same_behaviour.py --base {a.base} --head {a.head}"
        + (f" --cases {' '.join(a.cases)}" if a.cases != list(CASES) else "") + "`.", "",
        "Each case: seed 0, " + " ".join(f"`{o}`" for o in SMALL) + ", plus the case's own overrides "
        "(benchmarks/same_behaviour.py CASES). Compared: every metrics.jsonl value but time/*, rollouts.jsonl, "
        "the prepared data files, and every tensor of the last checkpoint's model (sha256 of its bytes).", "",
        "| case | recipe | steps | tensors | base against head |", "|---|---|---|---|---|", *rows, "",
        f"**{'All cases identical.' if same else 'Behaviour changed.'}**", ""])
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(text)
    print(text)
    sys.exit(0 if same else 1)


if __name__ == "__main__":
    main()
