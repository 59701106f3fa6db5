"""Rewards: plain callables with TRL's signature `fn(prompts, completions, **columns) -> list[float | None]`.

They are named in the config (a built-in `name` or a dotted-path `fn`), weighted, run concurrently, and each one is
logged on its own. `None` means "this reward does not apply to this sample" and is left out of the weighted sum
(as in TRL).
"""

from __future__ import annotations

import functools
import importlib
import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from rewards import answers as _builtins  # noqa: F401  (registers math_verify and format)
from rewards.answers import answers_match, extract_answer
from rewards.registry import REWARDS

__all__ = ["REWARDS", "RewardManager", "RewardOutput", "RewardSpec", "answers_match", "extract_answer", "load_reward"]


@dataclass
class RewardSpec:
    name: str | None = None  # a built-in: math_verify, format
    fn: str | None = None  # or a dotted path: "my_pkg.my_mod:my_reward" (or "my_pkg.my_mod.my_reward")
    weight: float = 1.0
    kwargs: dict[str, Any] = field(default_factory=dict)  # bound to the function as keyword arguments
    label: str | None = None  # name in the metrics; default: name or the function's __name__


def _import_path(path: str) -> Callable:
    module, _, attr = path.partition(":") if ":" in path else path.rpartition(".")
    if not module or not attr:
        raise ValueError(f"reward fn {path!r}: write it as 'package.module:function'")
    try:
        mod = importlib.import_module(module)
    except ImportError as e:
        raise ValueError(f"reward fn {path!r}: cannot import module {module!r} ({e}); is it on PYTHONPATH?") from e
    try:
        fn = getattr(mod, attr)
    except AttributeError:
        raise ValueError(f"reward fn {path!r}: module {module!r} has no attribute {attr!r}") from None
    if not callable(fn):
        raise ValueError(f"reward fn {path!r} is not callable")
    return fn


def load_reward(spec: RewardSpec, index: int = 0) -> tuple[str, Callable]:
    """(label, callable) for one spec; fails with the config key rewards[index] named."""
    if (spec.name is None) == (spec.fn is None):
        raise ValueError(f"rewards[{index}]: give exactly one of name (a built-in) or fn (a dotted path)")
    try:
        fn = REWARDS.get(spec.name) if spec.name is not None else _import_path(spec.fn)
    except (KeyError, ValueError) as e:
        raise ValueError(f"rewards[{index}]: {e.args[0]}") from None
    label = spec.label or spec.name or getattr(fn, "__name__", f"reward_{index}")
    return label, functools.partial(fn, **spec.kwargs) if spec.kwargs else fn


@dataclass
class RewardOutput:
    total: torch.Tensor  # [N] weighted sum over functions, None entries skipped; NaN where every function abstained
    per_function: dict[str, torch.Tensor]  # label -> [N] raw values, NaN for None


class RewardManager:
    def __init__(self, specs: list[RewardSpec], num_workers: int = 4):
        loaded = [load_reward(s, i) for i, s in enumerate(specs)]
        labels = [label for label, _ in loaded]
        if len(set(labels)) != len(labels):
            raise ValueError(f"rewards: two rewards share a label ({labels}); set `label` on one of them")
        self.functions = [(label, fn, s.weight) for (label, fn), s in zip(loaded, specs)]
        self.pool = ThreadPoolExecutor(max_workers=max(1, min(num_workers, len(self.functions))))

    def _call(self, label: str, fn: Callable, prompts, completions, columns) -> torch.Tensor:
        try:
            values = fn(prompts, completions, **columns)
        except Exception as e:
            raise RuntimeError(f"reward {label!r} raised {type(e).__name__}: {e}") from e
        if values is None or isinstance(values, (str, bytes)) or not hasattr(values, "__len__"):
            raise RuntimeError(f"reward {label!r} returned {type(values).__name__}, not a list of floats")
        if len(values) != len(completions):
            raise RuntimeError(f"reward {label!r} returned {len(values)} values for {len(completions)} completions")
        out = []
        for i, v in enumerate(values):
            if v is None:
                out.append(math.nan)
            elif isinstance(v, bool) or not isinstance(v, (int, float)) and not hasattr(v, "__float__"):
                raise RuntimeError(f"reward {label!r} returned {v!r} (a {type(v).__name__}) for sample {i}")
            else:
                out.append(float(v))
        return torch.tensor(out, dtype=torch.float32)

    def __call__(self, prompts: list, completions: list[str], columns: dict[str, list]) -> RewardOutput:
        futures = {label: self.pool.submit(self._call, label, fn, prompts, completions, columns)
                   for label, fn, _ in self.functions}
        per_function = {label: f.result() for label, f in futures.items()}
        weighted = torch.stack([per_function[label] * w for label, _, w in self.functions])
        total = weighted.nansum(0)
        total[weighted.isnan().all(0)] = math.nan
        return RewardOutput(total=total, per_function=per_function)
