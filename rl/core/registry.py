"""Name -> function registries, so that a config string selects an algorithm piece.

A new variant is one function plus one decorator line, in the registry's home module::

    @ADVANTAGE_ESTIMATORS.register("my_adv")
    def my_adv(rewards, group_ids, cfg, lengths=None): ...

Every registry is declared here, with the module(s) whose decorators fill it (its `home`), so that the config can
check a name without importing those modules (and torch): `names()` reads the `@X.register("name")` calls from the
home modules' source when they are not imported yet; `get()` imports them.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import os
import sys
from typing import Callable, Generic, TypeVar

F = TypeVar("F", bound=Callable)


class Registry(Generic[F]):
    """Maps config names to callables; unknown names fail with the list of known ones.

    `home`: the module, or modules, that register the callables; None for a registry filled only at run time."""

    def __init__(self, kind: str, home: str | tuple[str, ...] | None = None):
        self.kind = kind
        self.home: tuple[str, ...] = (home,) if isinstance(home, str) else tuple(home or ())
        self._items: dict[str, F] = {}

    def register(self, name: str) -> Callable[[F], F]:
        def deco(fn: F) -> F:
            if name in self._items:
                raise KeyError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = fn
            return fn

        return deco

    def load(self) -> None:
        """Import the home modules, which fill the registry."""
        for module in self.home:
            importlib.import_module(module)

    def get(self, name: str) -> F:
        if name not in self._items:
            self.load()
        try:
            return self._items[name]
        except KeyError:
            raise KeyError(
                f"unknown {self.kind} {name!r}; choose one of: {', '.join(sorted(self._items))}"
            ) from None

    def __contains__(self, name: str) -> bool:
        return name in self.names()

    def names(self) -> list[str]:
        """The registered names: the live ones for the home modules already imported, the ones their source
        registers (read, not run) for the others, and any registered from elsewhere."""
        names = set(self._items)
        for module in self.home:
            if module not in sys.modules:
                names |= set(self.source_names(module))
        return sorted(names)

    def source_names(self, module: str) -> list[str]:
        """The names `module`'s source registers in this registry (`@X.register("name")` or `X.register("name")(f)`,
        X being this registry's name in rl/core/registry.py), without importing the module."""
        path = _source_path(module)
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read(), path)
        var = self._variable()
        return sorted({node.args[0].value for node in ast.walk(tree)
                       if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                       and node.func.attr == "register" and isinstance(node.func.value, ast.Name)
                       and node.func.value.id == var and len(node.args) == 1
                       and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)})

    def _variable(self) -> str:
        for name, value in globals().items():
            if value is self:
                return name
        raise LookupError(f"the {self.kind} registry reads its names from source only when declared in {__name__}")


def _source_path(module: str) -> str:
    """The file of `module`, found without importing it or its parent packages (whose __init__ may import torch)."""
    top, *rest = module.split(".")
    spec = importlib.util.find_spec(top)  # a top-level name: found, not imported
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(f"no module {module!r}")
    if not rest:
        return spec.origin
    folders = list(spec.submodule_search_locations or ())
    for i, part in enumerate(rest):
        last = i == len(rest) - 1
        for folder in folders:
            package, file = os.path.join(folder, part), os.path.join(folder, part + ".py")
            if os.path.isdir(package):
                if last:
                    return os.path.join(package, "__init__.py")
                folders = [package]
                break
            if last and os.path.isfile(file):
                return file
        else:
            raise ModuleNotFoundError(f"no module {module!r}")
    raise ModuleNotFoundError(f"no module {module!r}")


# -- every registry, with the module(s) that fill it ----------------------------------------------------------------

ADVANTAGE_ESTIMATORS: Registry = Registry("advantage estimator", home="rl.core.advantages")
POLICY_LOSSES: Registry = Registry("policy loss", home="rl.core.losses")
LOSS_AGGREGATIONS: Registry = Registry("loss aggregation", home="rl.core.losses")
KL_ESTIMATORS: Registry = Registry("KL estimator", home="rl.core.kl")
TOKEN_WEIGHTS: Registry = Registry("token weight", home="rl.core.token_weights")
F_DIVERGENCES: Registry = Registry("f-divergence", home="rl.core.divergences")
ROLLOUT_CORRECTIONS: Registry = Registry("rollout correction", home="rl.core.rollout_correction")
# the built-in rewards (name -> callable with TRL's signature); `rewards` imports all of these
REWARDS: Registry = Registry("reward", home=("rewards.answers", "rewards.abstention", "rewards.adaptthink",
                                             "rewards.armed", "rewards.ikea", "rewards.klcf", "rewards.knowrl"))
