"""Rewards: plain callables with TRL's signature `fn(prompts, completions, **columns) -> list[float | None]`.

They are named in the config (a built-in `name` or a dotted-path `fn`), weighted, run concurrently, and each one is
logged on its own. `None` means "this reward does not apply to this sample" and is left out of the weighted sum
(as in TRL).
"""

from __future__ import annotations

import functools
import importlib
import threading
import traceback
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from math import isfinite  # not `import math`: a submodule rewards.math would shadow it here
from typing import Any, Callable

import torch

from rewards import answers as _builtins  # noqa: F401  (registers math_verify and format)
from rewards.answers import answers_match, extract_answer
from rewards.registry import REWARDS

__all__ = ["REWARDS", "RewardError", "RewardManager", "RewardOutput", "RewardPolicyConfig", "RewardSpec", "answers_match", "extract_answer", "load_reward"]

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
class RewardPolicyConfig:
    """What happens when a reward function misbehaves (raises, hangs, returns NaN/inf/a non-number/the wrong count)."""

    on_error: str = "fail"  # fail: stop, showing the reward, prompt, completion, traceback | skip: drop the sample
    timeout_s: float | None = 300.0  # per call of one function on one step's samples; null: no limit
    max_skip_frac: float = 0.5  # skip: stop anyway when more than this fraction of a step's samples is dropped


class RewardError(RuntimeError):
    """A reward function failed; the message names it and shows the sample and traceback."""


@dataclass
class RewardFailure:
    label: str
    reason: str  # what went wrong, with the traceback where there is one
    index: int | None  # the sample, or None when the whole call failed (timeout, wrong count)


@dataclass
class RewardOutput:
    total: torch.Tensor  # [N] weighted sum over functions, None entries skipped; NaN where the sample was not scored
    per_function: dict[str, torch.Tensor]  # label -> [N] raw values, NaN for None or failure
    failed: torch.Tensor = None  # [N] bool: a function failed on the sample, or every function returned None
    failures: list[RewardFailure] = field(default_factory=list)


def _run_with_timeout(fn: Callable, timeout: float | None):
    """fn() in a daemon thread; (result, None) or (None, error text). A call that hangs is abandoned, not joined:
    Python cannot stop a thread, but the run goes on (skip) or stops with a message (fail)."""
    box: dict[str, Any] = {}

    def target():
        try:
            box["value"] = fn()
        except BaseException as e:  # noqa: BLE001  (reported with its traceback)
            box["error"] = "".join(traceback.format_exception(e)).rstrip()

    thread = threading.Thread(target=target, daemon=True, name="reward-call")
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        return None, f"did not return within {timeout:g} s (reward_policy.timeout_s)"
    return box.get("value"), box.get("error")


class RewardManager:
    """Runs every configured reward on a batch, one thread per function, and sums them with their weights.

    Specs are loaded (imported, kwargs bound, labels checked) in the constructor, so a config error surfaces before
    any model or engine starts; `RewardManager.validate(specs)` does the same checks without building a manager.
    A function that raises, hangs past the timeout, or returns NaN/inf, a non-number or the wrong count fails the
    samples it was called on; `policy.on_error` says whether that stops the run or drops those samples. It is never
    turned into a zero.
    """

    def __init__(self, specs: list[RewardSpec], policy: RewardPolicyConfig | None = None):
        loaded = self.validate(specs)
        self.policy = policy or RewardPolicyConfig()
        self.functions = [(label, fn, float(s.weight)) for (label, fn), s in zip(loaded, specs)]

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

    @staticmethod
    def _check_values(values, n: int) -> tuple[list[float], dict[int, str], str | None]:
        """(values with NaN for None, {sample: problem}, problem of the whole call)."""
        if values is None or isinstance(values, (str, bytes, dict)) or not hasattr(values, "__len__"):
            return [], {}, f"returned {type(values).__name__}, not a list of floats"
        if len(values) != n:
            return [], {}, f"returned {len(values)} values for {n} completions"
        out, bad = [], {}
        for i, v in enumerate(values):
            try:
                x = _NAN if v is None else float(v)  # bools count as 0/1, as in TRL
            except (TypeError, ValueError):
                x = None
            if x is None or isinstance(v, (str, bytes)):
                bad[i] = f"returned {v!r} (a {type(v).__name__}) for sample {i}; expected a number or None"
            elif v is not None and not isfinite(x):
                bad[i] = f"returned {x} for sample {i}; use None for 'does not apply'"
            out.append(_NAN if i in bad else x)
        return out, bad, None

    def _call(self, label: str, fn: Callable, prompts, completions, columns) -> tuple[torch.Tensor, list[RewardFailure]]:
        """One reward on the batch: [N] float32 (NaN for None and failures) and what failed."""
        n = len(completions)
        values, error = _run_with_timeout(lambda: fn(prompts, completions, **columns), self.policy.timeout_s)
        if error is None:
            out, bad, whole = self._check_values(values, n)
            if whole is not None:
                return torch.full((n,), _NAN), [RewardFailure(label, whole, None)]
            return torch.tensor(out, dtype=torch.float32), [RewardFailure(label, r, i) for i, r in bad.items()]
        if "reward_policy.timeout_s" in error or n == 1:
            return torch.full((n,), _NAN), [RewardFailure(label, error, None if n > 1 else 0)]
        # it raised on the batch: call it sample by sample to find which samples it fails on
        out, failures = [], []
        for i in range(n):
            one = {k: v[i : i + 1] for k, v in columns.items()}
            value, err = _run_with_timeout(lambda: fn(prompts[i : i + 1], completions[i : i + 1], **one),
                                           self.policy.timeout_s)
            if err is None:
                vals, bad, whole = self._check_values(value, 1)
                err = whole or bad.get(0)
            out.append(_NAN if err else vals[0])
            if err:
                failures.append(RewardFailure(label, err, i))
        if not failures:  # it fails only on the whole batch
            failures = [RewardFailure(label, error, None)]
            out = [_NAN] * n
        return torch.tensor(out, dtype=torch.float32), failures

    def __call__(self, prompts: list, completions: list[str], columns: dict[str, list]) -> RewardOutput:
        """All rewards on N samples: `columns` are the data set's columns (lists of N), passed as keyword arguments."""
        n = len(completions)
        with ThreadPoolExecutor(max_workers=len(self.functions), thread_name_prefix="reward") as pool:
            futures = {label: pool.submit(self._call, label, fn, prompts, completions, columns)
                       for label, fn, _ in self.functions}
            results = {label: f.result() for label, f in futures.items()}
        per_function = {label: values for label, (values, _) in results.items()}
        failures = [f for _, fs in results.values() for f in fs]
        failed = torch.zeros(n, dtype=torch.bool)
        for f in failures:
            failed[slice(None) if f.index is None else f.index] = True
        weighted = torch.stack([per_function[label] * w for label, _, w in self.functions])
        total = weighted.nansum(0)
        unscored = weighted.isnan().all(0) & ~failed
        for i in torch.nonzero(unscored).flatten().tolist():
            failures.append(RewardFailure("(all)", "every reward function returned None for this sample", i))
        failed |= unscored
        total[failed] = _NAN
        if failures and self.policy.on_error == "fail":
            raise RewardError(self.describe(failures[0], prompts, completions) +
                              "\n(set reward_policy.on_error=skip to drop such samples from the loss and go on)")
        return RewardOutput(total=total, per_function=per_function, failed=failed, failures=failures)

    @staticmethod
    def describe(f: RewardFailure, prompts: list, completions: list[str]) -> str:
        i = 0 if f.index is None else f.index
        scope = f"on a call with {len(completions)} samples (first shown)" if f.index is None else f"on sample {i}"
        return (f"reward {f.label!r} failed {scope}: {f.reason}\n"
                f"prompt: {str(prompts[i])[:2000]!r}\ncompletion: {str(completions[i])[:2000]!r}")
