"""What may change between a checkpoint's config and its resumed run: the keys whose field carries
`metadata={"resume": "any"}` (rl/config/errors.py ANY_ON_RESUME), a whole section or mapping when the field holds one."""

from __future__ import annotations

import copy
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


# How a method's section said "off" before sections became optional (absent: off, present: on), and the key that
# said "on" then and is gone now: a checkpoint's config of that age reads as today's spelling (`upgrade`)
OLD_OFF = {
    "rollout.cure": lambda s: s.get("enabled") is False,
    "rollout.search": lambda s: s.get("enabled") is False,
    "rollout.adaptive_thinking": lambda s: s.get("enabled") is False,
    "algorithm.dynamic_sampling": lambda s: s.get("enabled") is False,
    "algorithm.kl": lambda s: not s.get("coef"),
    "algorithm.token_weights": lambda s: not s.get("methods"),
    "algorithm.divergence": lambda s: s.get("name") in (None, "none"),
    "algorithm.hicra": lambda s: not s.get("alpha"),
    "algorithm.overlong": lambda s: not s.get("buffer") and not s.get("mask_truncated"),
    "algorithm.length_penalty": lambda s: not s.get("coef"),
}


def upgrade(old: dict) -> dict:
    """A checkpoint's config (a dict) in today's spelling: a method section that was off in the old spelling is
    dropped (absent), one that was on loses its `enabled` key. Today's configs pass through unchanged."""
    old = copy.deepcopy(old)
    for key, was_off in OLD_OFF.items():
        parent, name = key.split(".")
        section = (old.get(parent) or {}).get(name)
        if isinstance(section, dict):
            if was_off(section):
                del old[parent][name]
            else:
                section.pop("enabled", None)
    return old


def config_changes(old: dict, new: dict) -> tuple[list[str], list[str]]:
    """(changes that would change the run, harmless changes) between a checkpoint's config and this run's,
    each as 'key: old -> new'. A key the checkpoint's config lacks is harmless at its default value: it was added to
    rlvr after the checkpoint was written, and its default is what the run did before."""
    a, b, defaults = _flatten(upgrade(old)), _flatten(new), _defaults()
    harmful, harmless = [], []
    for key in sorted(set(a) | set(b)):
        if a.get(key, "<unset>") != b.get(key, "<unset>"):
            line = f"{key}: {a.get(key, '<unset>')!r} -> {b.get(key, '<unset>')!r}"
            ok = any(key == h or key.startswith(h + ".") or key.startswith(h + "[") for h in harmless_on_resume()) or (
                key not in a and key in defaults and b.get(key) == defaults[key])
            (harmless if ok else harmful).append(line)
    return harmful, harmless
