"""Loading and running reward functions: specs, the four kinds of scorer, failure policy, the weighted sum.

A spec names a callable (a built-in `name`, an entry point of the `rlvr.rewards` group, or a dotted-path `fn`). What
the callable is decides how it runs:

- a function with TRL's signature `fn(prompts, completions, **columns) -> list` (the default), or `async def`;
- with `per_sample: true`, `fn(prompt, completion, **row) -> value` (or `async def`), called on up to
  `max_concurrency` samples at once (threads, or one event loop for async functions);
- a class: a heavy scorer (an NLI or embedding model, an LLM judge on a vLLM engine) that runs as `actor.replicas`
  Ray actors, built once with `kwargs`, each scoring a contiguous shard of the batch through `__call__(prompts,
  completions, **columns)` (sync or async), on its own CPUs/GPUs so that scoring does not block the driver or learner;
  `actor.replicas: 0` builds it once in the driver instead.

A value is a number, None ("does not apply": left out of the weighted sum, as in TRL), or a dict with a "reward" key
and extra per-sample info (components, facts found, number of searches): numeric extras are logged as
`reward/<label>/<key>`, all of them go to rollouts.jsonl.
"""

from __future__ import annotations

import asyncio
import difflib
import functools
import hashlib
import importlib
import importlib.util
import inspect
import json
import os
import sys
import threading
import traceback
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from math import isfinite  # not `import math`: a submodule rewards.math would shadow it here
from pathlib import Path
from typing import Any, Callable

import torch

from rl.config.rewards import RewardActorConfig, RewardPolicyConfig, RewardSpec, entry_points
from rl.core.registry import REWARDS

_NAN = float("nan")


def _import_file(path: str, file: Path):
    """A user's .py file as a module (named after its absolute path, so two files never clash); its code travels to
    Ray actors by value, since the workers cannot import it by name."""
    name = "rlvr_user_reward_" + hashlib.sha1(str(file.resolve()).encode()).hexdigest()[:12]
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, file)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        try:
            spec.loader.exec_module(mod)
        except BaseException:
            del sys.modules[name]
            raise
        from ray import cloudpickle

        cloudpickle.register_pickle_by_value(mod)
    return sys.modules[name]


def _import_path(path: str) -> Callable:
    module, _, attr = path.partition(":") if ":" in path else path.rpartition(".")
    if not module or not attr:
        raise ValueError(f"reward fn {path!r}: write it as 'package.module:function' or 'path/to/file.py:function'")
    if module.endswith(".py") and not Path(module).expanduser().is_file():
        raise ValueError(f"reward fn {path!r}: {module!r} is not a file (a relative path in a recipe is looked up in "
                         f"the recipe's folder, then the current directory, {os.getcwd()}); fix the path")
    try:
        mod = _import_file(path, Path(module).expanduser()) if module.endswith(".py") else importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name and (module == e.name or module.startswith(e.name + ".")):  # the named module itself
            raise ValueError(f"reward fn {path!r}: cannot import module {module!r} ({e}); put it on PYTHONPATH or "
                             "give the file: fn: path/to/file.py:function") from e
        raise ValueError(f"reward fn {path!r}: {module!r} imports {e.name!r}, which is not installed in this "
                         f"environment ({sys.executable}); install it (e.g. pip install {(e.name or '?').split('.')[0]}; "
                         "the package name may differ)") from e
    except Exception as e:  # the module itself is broken (SyntaxError, an error at import time)
        raise ValueError(f"reward fn {path!r}: importing {module!r} failed: {type(e).__name__}: {e}") from e
    try:
        fn = getattr(mod, attr)
    except AttributeError:
        defined = sorted(n for n, v in vars(mod).items() if not n.startswith("_") and callable(v)
                         and getattr(v, "__module__", None) == mod.__name__)
        close = [n for n in defined if n.lower() == attr.lower()] or difflib.get_close_matches(attr, defined, 1)
        raise ValueError(f"reward fn {path!r}: {module!r} has no attribute {attr!r}"
                         f"{f' (did you mean {close[0]!r}?)' if close else ''}; it defines "
                         f"{', '.join(defined) if defined else 'no functions or classes'}") from None
    if not callable(fn):
        raise ValueError(f"reward fn {path!r} is not callable")
    return fn


def _resolve(spec: RewardSpec) -> Callable:
    if spec.fn is not None:
        return _import_path(spec.fn)
    if spec.name in REWARDS:
        return REWARDS.get(spec.name)
    ep = entry_points()[spec.name]
    try:
        fn = ep.load()
    except Exception as e:
        raise ValueError(f"entry point {spec.name!r} ({ep.value}) failed to load: {type(e).__name__}: {e}") from e
    if not callable(fn):
        raise ValueError(f"entry point {spec.name!r} ({ep.value}) is not callable")
    return fn


def load_reward(spec: RewardSpec, index: int = 0) -> tuple[str, Callable]:
    """(label, scorer) for one spec: a callable `scorer(prompts, completions, columns) -> list of values`.
    A ValueError naming rewards[index] if the spec is wrong; a class's actors start on the first call."""
    spec.check(f"rewards[{index}]")
    try:
        fn = _resolve(spec)
    except ValueError as e:
        raise ValueError(f"rewards[{index}]: {e.args[0]}") from None
    label = spec.label or spec.name or getattr(fn, "__name__", f"reward_{index}")
    _check_signature(fn, spec, index)
    if inspect.isclass(fn) and spec.actor.replicas == 0:  # built here, once, and called in this process
        try:
            return label, BatchScorer(fn(**spec.kwargs))
        except Exception as e:
            raise ValueError(f"rewards[{index}]: {fn.__name__}(**{dict(spec.kwargs)}) failed: "
                             f"{type(e).__name__}: {e}") from e
    if inspect.isclass(fn):
        return label, ActorScorer(fn, dict(spec.kwargs), spec.actor, label)
    bound = functools.partial(fn, **spec.kwargs) if spec.kwargs else fn
    return label, (PerSampleScorer(bound, spec.max_concurrency) if spec.per_sample else BatchScorer(bound))


def _call_form(per_sample: bool) -> str:
    return "fn(prompt, completion, **row)" if per_sample else "fn(prompts, completions, **columns)"


def _bind_problem(fn: Callable, positional: int, keywords, complete: bool = False) -> str | None:
    """Why fn(None x positional, **keywords) cannot bind (an extra or unknown argument; with `complete`, also a
    missing one), or None; also None when the signature cannot be read (a builtin)."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return None
    try:
        (sig.bind if complete else sig.bind_partial)(*[None] * positional, **dict.fromkeys(keywords))
    except TypeError as e:
        return str(e)
    return None


def _check_signature(fn: Callable, spec: RewardSpec, index: int) -> None:
    """Before anything runs: a class's kwargs bind to its __init__ (where its Ray actors would fail to start) and its
    __call__ takes (prompts, completions); a function takes its kwargs and the two positional arguments of the
    trainer's call. The data's columns are checked once they are known (RewardManager.check_columns)."""
    where, name = f"rewards[{index}] ({spec.fn or spec.name})", getattr(fn, "__name__", type(fn).__name__)
    if inspect.isclass(fn):
        if problem := _bind_problem(fn, 0, spec.kwargs, complete=True):
            raise ValueError(f"{where}: {name}{_signature(fn)} cannot be built with kwargs {dict(spec.kwargs)} "
                             f"({problem}); make rewards[{index}].kwargs match the arguments of its __init__")
        if not any("__call__" in vars(k) for k in fn.__mro__[:-1]):
            raise ValueError(f"{where}: class {name} has no __call__; add def __call__(self, prompts, completions, "
                             "**columns) returning one value per completion")
        if problem := _bind_problem(fn.__call__, 3, {}):  # self, prompts, completions
            raise ValueError(f"{where}: {name}.__call__{_signature(fn.__call__)} cannot take (prompts, completions) "
                             f"({problem}); write it as def __call__(self, prompts, completions, **columns)")
        return
    if problem := _bind_problem(fn, 2, spec.kwargs):
        form = _call_form(spec.per_sample)
        given = f" and kwargs {dict(spec.kwargs)}" if spec.kwargs else ""
        fix = f"; or fix rewards[{index}].kwargs" if spec.kwargs else ""
        raise ValueError(f"{where}: {name}{_signature(fn)} cannot be called as {form}{given} ({problem}); write it "
                         f"as def {name}{form[2:]}{fix}")


def _signature(fn: Callable) -> str:
    try:
        return str(inspect.signature(fn))
    except (TypeError, ValueError):
        return "(...)"


# -- the scorers: (prompts, completions, columns) -> list of raw values, or SampleError per failed sample -----


class SampleError:
    """A per-sample call that raised: the traceback stands in for the value."""

    def __init__(self, text: str):
        self.text = text


def _format_exc(e: BaseException) -> str:
    return "".join(traceback.format_exception(e)).rstrip()


def _resolve_awaitable(value):
    if inspect.isawaitable(value):
        async def wait():
            return await value
        return asyncio.run(wait())
    return value


class BatchScorer:
    """TRL's signature, sync or async: one call scores the batch."""

    per_sample = False

    def __init__(self, fn: Callable):
        self.fn = fn
        self.__name__ = getattr(fn, "__name__", type(fn).__name__)

    def __call__(self, prompts: list, completions: list, columns: dict[str, list]) -> list:
        return _resolve_awaitable(self.fn(prompts, completions, **columns))

    def state_dict(self):
        return self.fn.state_dict() if hasattr(self.fn, "state_dict") else None

    def load_state_dict(self, state) -> None:
        self.fn.load_state_dict(state)


class PerSampleScorer:
    """fn(prompt, completion, **row) per sample, up to max_concurrency at once: daemon threads for a sync function
    (so a hung call never blocks the process from exiting), one event loop for an async one."""

    per_sample = True

    def __init__(self, fn: Callable, max_concurrency: int):
        self.fn, self.max_concurrency = fn, max_concurrency
        self.__name__ = getattr(fn, "__name__", type(fn).__name__)

    def __call__(self, prompts: list, completions: list, columns: dict[str, list]) -> list:
        rows = [{k: v[i] for k, v in columns.items()} for i in range(len(completions))]
        if inspect.iscoroutinefunction(self.fn):
            return asyncio.run(self._gather(prompts, completions, rows))
        out: list = [None] * len(completions)
        slots = threading.BoundedSemaphore(self.max_concurrency)
        threads = []

        def one(i: int) -> None:
            try:
                out[i] = self.fn(prompts[i], completions[i], **rows[i])
            except Exception as e:  # noqa: BLE001  (reported per sample with its traceback)
                out[i] = SampleError(_format_exc(e))
            finally:
                slots.release()

        for i in range(len(completions)):
            slots.acquire()
            threads.append(threading.Thread(target=one, args=(i,), daemon=True, name="reward-sample"))
            threads[-1].start()
        for t in threads:
            t.join()
        return out

    async def _gather(self, prompts, completions, rows) -> list:
        slots = asyncio.Semaphore(self.max_concurrency)

        async def one(i: int):
            async with slots:
                try:
                    return await self.fn(prompts[i], completions[i], **rows[i])
                except Exception as e:  # noqa: BLE001
                    return SampleError(_format_exc(e))

        return list(await asyncio.gather(*(one(i) for i in range(len(completions)))))


class _RewardActor:
    """The Ray actor around a user's scorer class (made remote in ActorScorer.start)."""

    def __init__(self, cls: type, kwargs: dict):
        self.scorer = cls(**kwargs)

    async def score(self, prompts: list, completions: list, columns: dict[str, list]) -> list:
        out = self.scorer(prompts, completions, **columns)
        return list(await out) if inspect.isawaitable(out) else list(out)

    def state_dict(self):
        return self.scorer.state_dict() if hasattr(self.scorer, "state_dict") else None

    def load_state_dict(self, state) -> None:
        self.scorer.load_state_dict(state)


class ActorScorer:
    """A scorer class run as Ray actors; the batch is split across them and their calls run in parallel."""

    per_sample = False

    def __init__(self, cls: type, kwargs: dict, cfg: RewardActorConfig, label: str):
        self.cls, self.kwargs, self.cfg, self.label = cls, kwargs, cfg, label
        self.__name__ = cls.__name__
        self.actors: list = []
        self._lock = threading.Lock()

    def start(self) -> None:
        import ray

        with self._lock:
            if self.actors:
                return
            remote = ray.remote(_RewardActor).options(num_cpus=self.cfg.num_cpus, num_gpus=self.cfg.num_gpus,
                                                     max_concurrency=64)
            actors = [remote.remote(self.cls, self.kwargs) for _ in range(self.cfg.replicas)]
            try:
                ray.get([a.__ray_ready__.remote() for a in actors])
            except ray.exceptions.RayActorError as e:
                raise ValueError(f"reward {self.label!r}: its actor failed to start ({self.cls.__name__}"
                                 f"(**{self.kwargs})): {e}") from None
            self.actors = actors

    def __call__(self, prompts: list, completions: list, columns: dict[str, list]) -> list:
        import ray

        self.start()
        k, n = len(self.actors), len(completions)
        bounds = [round(i * n / k) for i in range(k + 1)]
        refs = [a.score.remote(prompts[lo:hi], completions[lo:hi], {c: v[lo:hi] for c, v in columns.items()})
                for a, lo, hi in zip(self.actors, bounds, bounds[1:]) if hi > lo]
        try:
            return [v for shard in ray.get(refs) for v in shard]
        except ray.exceptions.RayTaskError as e:  # the user's exception, with its traceback, raised again here
            raise e.as_instanceof_cause() from None

    def shutdown(self) -> None:
        import ray

        for a in self.actors:
            ray.kill(a)
        self.actors = []

    def state_dict(self):
        """The first replica's state (a stateful scorer should run one replica: each replica sees only its shard)."""
        import ray

        self.start()
        return ray.get(self.actors[0].state_dict.remote())

    def load_state_dict(self, state) -> None:
        import ray

        self.start()
        ray.get([a.load_state_dict.remote(state) for a in self.actors])


# -- running them --------------------------------------------------------------------------------------------


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
    extras: dict[str, torch.Tensor] = field(default_factory=dict)  # "label/key" -> [N] numeric extra info, NaN if absent
    info: list[dict] = field(default_factory=list)  # per sample: {label: {key: value}} as the functions returned it

    def select(self, index) -> RewardOutput:
        """The samples at `index` (a slice or an index tensor)."""
        pick = (lambda xs: xs[index]) if isinstance(index, slice) else (lambda xs: [xs[i] for i in index.tolist()])
        return RewardOutput(self.total[index], {k: v[index] for k, v in self.per_function.items()},
                            self.failed[index], [], {k: v[index] for k, v in self.extras.items()}, pick(self.info))

    def state_dict(self) -> dict:
        """Tensors and strings only (a checkpoint loads with torch.load(weights_only=True)); failures are not kept."""
        return {"total": self.total, "per_function": self.per_function, "failed": self.failed, "extras": self.extras,
                "info": json.dumps(self.info)}

    @classmethod
    def from_state_dict(cls, state: dict) -> RewardOutput:
        return cls(state["total"], state["per_function"], state["failed"], [], state["extras"], json.loads(state["info"]))


def _run_with_timeout(fn: Callable, timeout: float | None):
    """fn() in a daemon thread; (result, None) or (None, error text). A call that hangs is abandoned, not joined:
    Python cannot stop a thread, but the run goes on (skip) or stops with a message (fail)."""
    box: dict[str, Any] = {}

    def target():
        try:
            box["value"] = fn()
        except BaseException as e:  # noqa: BLE001  (reported with its traceback)
            box["error"] = _format_exc(e)

    thread = threading.Thread(target=target, daemon=True, name="reward-call")
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        return None, f"did not return within {timeout:g} s (reward_policy.timeout_s)"
    return box.get("value"), box.get("error")


def _number(v, i: int) -> tuple[float, str | None]:
    """(value, problem) for sample i's value: None -> NaN ("does not apply"); bools count as 0/1, as in TRL."""
    if v is None:
        return _NAN, None
    wrong = f"returned {v!r} (a {type(v).__name__}) for sample {i}; expected a number or None"
    if isinstance(v, (str, bytes)):
        return _NAN, wrong
    try:
        x = float(v)
    except (TypeError, ValueError):
        return _NAN, wrong
    if not isfinite(x):
        return _NAN, f"returned {x} for sample {i}; use None for 'does not apply'"
    return x, None


class RewardManager:
    """Runs every configured reward on a batch, one thread per function, and sums them with their weights.

    Specs are loaded (imported, kwargs bound, labels checked) in the constructor, so a config error surfaces before
    any model or engine starts; `RewardManager.validate(specs)` does the same checks without building a manager.
    A function that raises, hangs past the timeout, or returns NaN/inf, a non-number or the wrong count fails the
    samples it was called on; `policy.on_error` says whether that stops the run or drops those samples. It is never
    turned into a zero. `submit` scores in the background (a Future), so the caller can go on generating.
    """

    def __init__(self, specs: list[RewardSpec], policy: RewardPolicyConfig | None = None):
        loaded = self.validate(specs)
        self.policy = policy or RewardPolicyConfig()
        self.functions = [(label, fn, float(s.weight)) for (label, fn), s in zip(loaded, specs)]
        self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="reward-batch")
        self._actor_state: dict = {}  # state for actors that have not started yet

    @staticmethod
    def validate(specs: list[RewardSpec]) -> list[tuple[str, Callable]]:
        """Load every spec; a ValueError naming rewards[i] for the first bad one. Returns [(label, scorer)]."""
        if not specs:
            raise ValueError("rewards: give at least one reward function")
        loaded = [load_reward(s, i) for i, s in enumerate(specs)]
        labels = [label for label, _ in loaded]
        if len(set(labels)) != len(labels):
            raise ValueError(f"rewards: two rewards share a label ({labels}); set `label` on one of them")
        return loaded

    def check_columns(self, columns: list[str]) -> None:
        """A ValueError naming the reward when it cannot take the data's columns (and trainer_step) as keyword
        arguments, as every call passes them: checked once the data is loaded, before anything starts."""
        for i, (label, fn, _) in enumerate(self.functions):
            target, positional = (fn.cls.__call__, 3) if isinstance(fn, ActorScorer) else (fn.fn, 2)
            try:
                sig = inspect.signature(target)
            except (TypeError, ValueError):
                continue
            try:
                sig.bind(*[None] * positional, **dict.fromkeys(columns))
            except TypeError as e:
                raise ValueError(
                    f"rewards[{i}] ({label!r}): every call passes the data's columns as keyword arguments "
                    f"({', '.join(columns)}), and {getattr(target, '__qualname__', label)}{sig} cannot take them "
                    f"({e}); add **columns to its signature, or name only columns the data has") from None

    def start(self) -> None:
        """Start the Ray actors of class-based rewards (Ray must be up); a constructor error is raised here. State
        loaded before (a resumed run) is handed to them now."""
        for label, fn, _ in self.functions:
            if isinstance(fn, ActorScorer):
                fn.start()
                if label in self._actor_state:
                    fn.load_state_dict(self._actor_state.pop(label))

    def actor_cpus(self) -> dict[str, float]:
        """{label: the CPUs its Ray actors ask for} of the class-based rewards that run as actors."""
        return {label: fn.cfg.replicas * fn.cfg.num_cpus for label, fn, _ in self.functions
                if isinstance(fn, ActorScorer)}

    def state_dict(self) -> dict:
        """{label: state} of the rewards that keep state between calls (a moving threshold, say): saved in checkpoints
        so that a resumed run scores as the uninterrupted one would. Must be JSON-serialisable."""
        out = {}
        for label, fn, _ in self.functions:
            if hasattr(fn, "state_dict") and (state := fn.state_dict()) is not None:
                out[label] = state
        return out

    def load_state_dict(self, state: dict) -> None:
        for label, fn, _ in self.functions:
            if label not in state:
                continue
            if isinstance(fn, ActorScorer) and not fn.actors:  # its actors start with the cluster
                self._actor_state[label] = state[label]
            else:
                fn.load_state_dict(state[label])

    def shutdown(self) -> None:
        for _, fn, _ in self.functions:
            if isinstance(fn, ActorScorer):
                fn.shutdown()

    @staticmethod
    def _check_values(values, n: int) -> tuple[list[float], dict[int, str], str | None, list[dict]]:
        """(values with NaN for None, {sample: problem}, problem of the whole call, per-sample extra info)."""
        if values is None or isinstance(values, (str, bytes, dict)) or not hasattr(values, "__len__"):
            return [], {}, f"returned {type(values).__name__}, not a list of floats", []
        if len(values) != n:
            return [], {}, f"returned {len(values)} values for {n} completions", []
        out, bad, info = [], {}, []
        for i, v in enumerate(values):
            extra = {}
            if isinstance(v, SampleError):
                x, problem = _NAN, v.text
            elif isinstance(v, Mapping):
                if "reward" not in v:
                    x, problem = _NAN, f"returned a dict without a 'reward' key for sample {i} (keys {sorted(v)[:5]})"
                else:
                    x, problem = _number(v["reward"], i)
                    extra = {k: e for k, e in v.items() if k != "reward"}
            else:
                x, problem = _number(v, i)
            if problem is not None:
                bad[i] = problem
            out.append(x)
            info.append(extra)
        return out, bad, None, info

    def _call(self, label: str, fn: Callable, prompts, completions, columns):
        """One reward on the batch: ([N] float32 values with NaN for None and failures, failures, extra info)."""
        n = len(completions)
        values, error = _run_with_timeout(lambda: fn(prompts, completions, columns), self.policy.timeout_s)
        if error is None:
            out, bad, whole, info = self._check_values(values, n)
            if whole is not None:
                return torch.full((n,), _NAN), [RewardFailure(label, whole, None)], [{}] * n
            return (torch.tensor(out, dtype=torch.float32), [RewardFailure(label, r, i) for i, r in bad.items()], info)
        if "reward_policy.timeout_s" in error or n == 1 or fn.per_sample:
            return torch.full((n,), _NAN), [RewardFailure(label, error, None if n > 1 else 0)], [{}] * n
        # it raised on the batch: call it sample by sample to find which samples it fails on
        out, failures, info = [], [], []
        for i in range(n):
            one = {k: v[i : i + 1] for k, v in columns.items()}
            value, err = _run_with_timeout(lambda: fn(prompts[i : i + 1], completions[i : i + 1], one),
                                           self.policy.timeout_s)
            vals, extra = [_NAN], [{}]
            if err is None:
                vals, bad, whole, extra = self._check_values(value, 1)
                err = whole or bad.get(0)
            out.append(_NAN if err else vals[0])
            info.append(extra[0] if extra else {})
            if err:
                failures.append(RewardFailure(label, err, i))
        if not failures:  # it fails only on the whole batch
            failures = [RewardFailure(label, error, None)]
            out = [_NAN] * n
        return torch.tensor(out, dtype=torch.float32), failures, info

    def submit(self, prompts: list, completions: list[str], columns: dict[str, list]) -> Future:
        """`self(prompts, completions, columns)` in the background; the Future's result is the RewardOutput (or the
        RewardError under on_error=fail)."""
        return self._pool.submit(self, prompts, completions, columns)

    def __call__(self, prompts: list, completions: list[str], columns: dict[str, list]) -> RewardOutput:
        """All rewards on N samples: `columns` are the data set's columns (lists of N), passed as keyword arguments."""
        n = len(completions)
        with ThreadPoolExecutor(max_workers=len(self.functions), thread_name_prefix="reward") as pool:
            futures = {label: pool.submit(self._call, label, fn, prompts, completions, columns)
                       for label, fn, _ in self.functions}
            results = {label: f.result() for label, f in futures.items()}
        per_function = {label: values for label, (values, _, _) in results.items()}
        failures = [f for _, fs, _ in results.values() for f in fs]
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
        info = [{label: results[label][2][i] for label in results if results[label][2][i]} for i in range(n)]
        return RewardOutput(total=total, per_function=per_function, failed=failed, failures=failures,
                            extras=_numeric_extras(info, n), info=info)

    @staticmethod
    def describe(f: RewardFailure, prompts: list, completions: list[str]) -> str:
        i = 0 if f.index is None else f.index
        scope = f"on a call with {len(completions)} samples (first shown)" if f.index is None else f"on sample {i}"
        return (f"reward {f.label!r} failed {scope}: {f.reason}\n"
                f"prompt: {str(prompts[i])[:2000]!r}\ncompletion: {str(completions[i])[:2000]!r}")


def _numeric_extras(info: list[dict], n: int) -> dict[str, torch.Tensor]:
    """{"label/key": [N] values} for every extra that is a number (or bool) wherever it is given; NaN where absent."""
    keys = {(label, k) for row in info for label, extra in row.items() for k in extra}
    out = {}
    for label, k in sorted(keys):
        vals = [row.get(label, {}).get(k) for row in info]
        if all(v is None or (isinstance(v, (int, float)) and not isinstance(v, str)) for v in vals):
            out[f"{label}/{k}"] = torch.tensor([_NAN if v is None else float(v) for v in vals], dtype=torch.float32)
    return out
