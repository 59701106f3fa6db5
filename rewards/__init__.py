"""Rewards: plain callables with TRL's signature `fn(prompts, completions, **columns) -> list[float | None]`.

They are named in the config (a built-in `name` or a dotted-path `fn`), weighted, run concurrently, and each one is
logged on its own. `None` means "this reward does not apply to this sample" and is left out of the weighted sum
(as in TRL).
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from math import isfinite  # not `import math`: a submodule rewards.math would shadow it here
from typing import Any, Callable

import torch

from rewards import answers as _builtins  # noqa: F401  (registers math_verify and format)
from rewards.answers import answers_match, extract_answer
from rewards.registry import REWARDS

__all__ = ["REWARDS", "RewardManager", "RewardOutput", "RewardSpec", "answers_match", "extract_answer", "load_reward"]

_NAN = float("nan")


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
    except Exception as e:  # the module itself is broken (SyntaxError, an error at import time)
        raise ValueError(f"reward fn {path!r}: importing {module!r} failed: {type(e).__name__}: {e}") from e
    try:
        fn = getattr(mod, attr)
    except AttributeError:
        raise ValueError(f"reward fn {path!r}: module {module!r} has no attribute {attr!r}") from None
    if not callable(fn):
        raise ValueError(f"reward fn {path!r} is not callable")
    return fn


def load_reward(spec: RewardSpec, index: int = 0) -> tuple[str, Callable]:
    """(label, callable) for one spec, the spec's kwargs bound; a ValueError naming rewards[index] if it is wrong."""
    if (spec.name is None) == (spec.fn is None):
        raise ValueError(f"rewards[{index}]: give exactly one of name (a built-in) or fn (a dotted path)")
    if not isinstance(spec.kwargs, Mapping):
        raise ValueError(f"rewards[{index}].kwargs must be a mapping, got {type(spec.kwargs).__name__}")
    if isinstance(spec.weight, bool) or not isinstance(spec.weight, (int, float)) or not isfinite(spec.weight):
        raise ValueError(f"rewards[{index}].weight must be a finite number, got {spec.weight!r}")
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
    """Runs every configured reward on a batch, one thread per function, and sums them with their weights.

    Specs are loaded (imported, kwargs bound, labels checked) in the constructor, so a config error surfaces before
    any model or engine starts; `RewardManager.validate(specs)` does the same checks without building a manager.
    """

    def __init__(self, specs: list[RewardSpec], num_workers: int = 4):
        loaded = self.validate(specs)
        self.functions = [(label, fn, float(s.weight)) for (label, fn), s in zip(loaded, specs)]
        self.pool = ThreadPoolExecutor(max_workers=max(1, min(num_workers, len(self.functions))),
                                       thread_name_prefix="reward")

    @staticmethod
    def validate(specs: list[RewardSpec]) -> list[tuple[str, Callable]]:
        """Load every spec; a ValueError naming rewards[i] for the first bad one. Returns [(label, callable)]."""
        if not specs:
            raise ValueError("rewards: give at least one reward function")
        loaded = [load_reward(s, i) for i, s in enumerate(specs)]
        labels = [label for label, _ in loaded]
        if len(set(labels)) != len(labels):
            raise ValueError(f"rewards: two rewards share a label ({labels}); set `label` on one of them")
        return loaded

    def _call(self, label: str, fn: Callable, prompts, completions, columns) -> torch.Tensor:
        """One reward on the batch, its values checked: [N] float32, NaN for None."""
        try:
            values = fn(prompts, completions, **columns)
        except Exception as e:
            raise RuntimeError(f"reward {label!r} raised {type(e).__name__}: {e}") from e
        if values is None or isinstance(values, (str, bytes, dict)) or not hasattr(values, "__len__"):
            raise RuntimeError(f"reward {label!r} returned {type(values).__name__}, not a list of floats")
        if len(values) != len(completions):
            raise RuntimeError(f"reward {label!r} returned {len(values)} values for {len(completions)} completions")
        out = []
        for i, v in enumerate(values):
            try:
                x = _NAN if v is None else float(v)  # bools count as 0/1, as in TRL
            except (TypeError, ValueError):
                x = None
            if x is None or isinstance(v, (str, bytes)):
                raise RuntimeError(f"reward {label!r} returned {v!r} (a {type(v).__name__}) for sample {i}; "
                                   "expected a number or None")
            if abs(x) == float("inf"):  # NaN is allowed: it means None
                raise RuntimeError(f"reward {label!r} returned {x} for sample {i}")
            out.append(x)
        return torch.tensor(out, dtype=torch.float32)

    def __call__(self, prompts: list, completions: list[str], columns: dict[str, list]) -> RewardOutput:
        """All rewards on N samples: `columns` are the data set's columns (lists of N), passed as keyword arguments."""
        futures = {label: self.pool.submit(self._call, label, fn, prompts, completions, columns)
                   for label, fn, _ in self.functions}
        per_function = {label: f.result() for label, f in futures.items()}
        weighted = torch.stack([per_function[label] * w for label, _, w in self.functions])
        total = weighted.nansum(0)
        total[weighted.isnan().all(0)] = _NAN
        return RewardOutput(total=total, per_function=per_function)
