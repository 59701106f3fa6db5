"""What may change between a checkpoint's config and its resumed run: the keys whose field carries
`metadata={"resume": "any"}` (rl/config/errors.py ANY_ON_RESUME), a whole section or mapping when the field holds one."""

from __future__ import annotations

import dataclasses
from functools import lru_cache

from rl.config.run import Config


def _harmless(obj, prefix: str = "") -> list[str]:
    out = []
    for f in dataclasses.fields(obj):
        key = f"{prefix}{f.name}"
        value = getattr(obj, f.name)
        if f.metadata.get("resume") == "any":
            out.append(key)
        elif dataclasses.is_dataclass(value):
            out += _harmless(value, key + ".")
    return out


@lru_cache(maxsize=1)
def harmless_on_resume() -> tuple[str, ...]:
    """The keys (a section's key covers all keys below it) that may change between a checkpoint and its resumed run
    without changing what the run computes, read from the fields of the default Config's tree."""
    return tuple(_harmless(Config()))


@lru_cache(maxsize=1)
def _defaults() -> dict:
    from omegaconf import OmegaConf

    return _flatten(OmegaConf.to_container(OmegaConf.structured(Config())))


def _flatten(tree, prefix: str = "") -> dict:
    if isinstance(tree, dict) and tree:
        return {k: v for key, sub in tree.items() for k, v in _flatten(sub, f"{prefix}{key}.").items()}
    if isinstance(tree, list) and tree:
        return {k: v for i, sub in enumerate(tree) for k, v in _flatten(sub, f"{prefix[:-1]}[{i}].").items()}
    return {prefix[:-1]: tree}


def config_changes(old: dict, new: dict) -> tuple[list[str], list[str]]:
    """(changes that would change the run, harmless changes) between a checkpoint's config and this run's,
    each as 'key: old -> new'. A key the checkpoint's config lacks is harmless at its default value: it was added to
    rlvr after the checkpoint was written, and its default is what the run did before."""
    a, b, defaults = _flatten(old), _flatten(new), _defaults()
    harmful, harmless = [], []
    for key in sorted(set(a) | set(b)):
        if a.get(key, "<unset>") != b.get(key, "<unset>"):
            line = f"{key}: {a.get(key, '<unset>')!r} -> {b.get(key, '<unset>')!r}"
            ok = any(key == h or key.startswith(h + ".") or key.startswith(h + "[") for h in harmless_on_resume()) or (
                key not in a and key in defaults and b.get(key) == defaults[key])
            (harmless if ok else harmful).append(line)
    return harmful, harmless
