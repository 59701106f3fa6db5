"""Model merging: Balanced Actor Initialization, a starting actor interpolated from same-architecture models.

    theta_mid   = w1 theta_A + (1 - w1) theta_B          (A: instruct, B: reasoning)
    theta_actor = w2 theta_mid + (1 - w2) theta_C        (C: base; only with a third model)

tensor by tensor, in float32, stored in the first model's dtype; w = 1 returns the first model exactly. Models must
share the architecture (config), every tensor's shape and the tokenizer's vocabulary. Tensors are read one at a time
from the safetensors files (one model in memory, not three). The result is a `save_pretrained` folder (the first
model's config and tokenizer) with `merge.json` recording the inputs and weights.

    rlvr merge INSTRUCT REASONING [BASE] --w1 0.5 [--w2 0.5] --out runs/bai_actor
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path

import torch

from rl.files import replace_folder_atomic

# config keys that may differ between merge-compatible models (names, versions, generation defaults)
_FREE_CONFIG_KEYS = {"_name_or_path", "transformers_version", "torch_dtype", "dtype", "use_cache", "bos_token_id",
                     "eos_token_id", "pad_token_id"}


def interpolate(a: torch.Tensor, b: torch.Tensor, w: float) -> torch.Tensor:
    """w a + (1 - w) b in float32, returned in a's dtype; exactly a when w = 1 and exactly b when w = 0."""
    if w == 1.0:
        return a.clone()
    if w == 0.0:
        return b.to(a.dtype).clone()
    return (w * a.float() + (1.0 - w) * b.float()).to(a.dtype)


def balanced_actor_tensor(tensors: Sequence[torch.Tensor], w1: float, w2: float | None) -> torch.Tensor:
    """One tensor of the merged actor from the same tensor of 2 models (w1) or 3 models (w1, then w2)."""
    mid = interpolate(tensors[0], tensors[1], w1)
    return mid if len(tensors) == 2 else interpolate(mid, tensors[2], w2)


class _Tensors:
    """Name -> tensor of a save_pretrained folder's safetensors files, read lazily."""

    def __init__(self, folder: Path):
        from safetensors import safe_open

        files = sorted(folder.glob("*.safetensors"))
        if not files:
            raise ValueError(f"{folder}: no *.safetensors weights; merging reads safetensors only (save the model "
                             "with save_pretrained)")
        self.handles = [safe_open(str(f), framework="pt") for f in files]
        self.where = {name: h for h in self.handles for name in h.keys()}

    def __contains__(self, name: str) -> bool:
        return name in self.where

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.where[name].get_tensor(name)

    def shape(self, name: str) -> list[int]:
        return list(self.where[name].get_slice(name).get_shape())


def check_compatible(folders: Sequence[Path]) -> None:
    """Same architecture and tokenizer vocabulary, or a ValueError naming the first difference."""
    from transformers import AutoTokenizer

    configs = [json.loads((f / "config.json").read_text()) for f in folders]
    first = configs[0]
    for folder, cfg in zip(folders[1:], configs[1:]):
        keys = (set(first) | set(cfg)) - _FREE_CONFIG_KEYS
        diff = sorted(k for k in keys if first.get(k) != cfg.get(k))
        if diff:
            shown = ", ".join(f"{k}: {first.get(k)!r} vs {cfg.get(k)!r}" for k in diff[:5])
            raise ValueError(f"cannot merge {folders[0]} and {folder}: their architectures differ ({shown}"
                             f"{'' if len(diff) <= 5 else f'; {len(diff)} config keys in all'}). Merging needs "
                             "models of one architecture, e.g. fine-tunes of the same base model")
    vocabs = []
    for f in folders:
        try:
            vocabs.append(AutoTokenizer.from_pretrained(str(f)).get_vocab())
        except Exception as e:  # noqa: BLE001 - any loading failure is a folder without a usable tokenizer
            raise ValueError(f"{f}: the tokenizer cannot be loaded ({type(e).__name__}: {e}); merging checks that "
                             "the models share one vocabulary") from None
    for folder, vocab in zip(folders[1:], vocabs[1:]):
        if vocab != vocabs[0]:
            only = sorted(set(vocab) ^ set(vocabs[0]))[:3]
            raise ValueError(f"cannot merge {folders[0]} and {folder}: their tokenizers differ ({len(vocabs[0])} vs "
                             f"{len(vocab)} tokens; e.g. {only or 'same tokens, other ids'}); token ids would not "
                             "mean the same in both")


def _local(path: str) -> Path:
    """A folder for a resolved model path: hub ids are downloaded (config, tokenizer and safetensors files only)."""
    if Path(path).is_dir():
        return Path(path)
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(path, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja"]))


def merge_models(models: Sequence[str], w1: float, w2: float | None, out: str | Path, force: bool = False) -> Path:
    """Write the merged actor of 2 or 3 models to `out` (atomically: a temporary folder, renamed when complete)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rl.models.resolve import resolve_model_path

    if len(models) not in (2, 3):
        raise ValueError(f"merge takes 2 or 3 models (instruct, reasoning[, base]); got {len(models)}")
    if not 0.0 <= w1 <= 1.0 or (len(models) == 3 and (w2 is None or not 0.0 <= w2 <= 1.0)):
        raise ValueError(f"weights must lie in [0, 1] (--w1 {w1}, --w2 {w2}); 3 models need --w2")
    if len(models) == 2 and w2 is not None:
        raise ValueError("--w2 weighs the third (base) model; give a third model or drop --w2")
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not force:
        raise ValueError(f"{out} exists and is not empty; choose another --out or pass --force to replace it")
    roles = ("instruct", "reasoning", "base")
    folders = [_local(resolve_model_path(m, f"model {i + 1} ({roles[i]})")) for i, m in enumerate(models)]
    check_compatible(folders)
    sources = [_Tensors(f) for f in folders]
    model = AutoModelForCausalLM.from_pretrained(str(folders[0]), dtype="auto")
    tied = {name for name, _ in model.named_parameters(remove_duplicate=False)} - {
        name for name, _ in model.named_parameters()}
    with torch.no_grad():
        for name, param in model.state_dict(keep_vars=True).items():
            if name in tied and name not in sources[0]:
                continue  # a tied copy (lm_head = embeddings): set through the tensor it shares
            for folder, src in zip(folders, sources):
                if name not in src:
                    raise ValueError(f"{folder}: has no tensor {name!r}; the models' layouts differ")
                if src.shape(name) != list(param.shape):
                    raise ValueError(f"{folder}: tensor {name!r} has shape {src.shape(name)}, not "
                                     f"{list(param.shape)}; the models' sizes differ")
            param.copy_(balanced_actor_tensor([src[name] for src in sources], w1, w2))
    tmp = out.with_name(f".tmp-{out.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    AutoTokenizer.from_pretrained(str(folders[0])).save_pretrained(tmp)
    (tmp / "merge.json").write_text(json.dumps({"models": [str(f) for f in folders], "w1": w1, "w2": w2,
                                                "formula": __doc__.split("\n\n")[1].strip()}, indent=1))
    replace_folder_atomic(tmp, out)
    return out
