"""The architecture as tests: no import cycle between the project's modules (lazy imports inside functions count,
since they run too), and the package boundaries the README's Layout states."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("rl", "rewards", "rollout")


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for f in (ROOT / pkg).rglob("*.py"):
            parts = list(f.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = f
    return out


def import_graph() -> dict[str, set[str]]:
    """module -> the project modules it imports anywhere in its file. An imported module's parent packages count
    (importing a.b.c runs a/__init__ and a/b/__init__), except the packages the importer is itself inside: their
    __init__ is already running."""
    mods = _modules()

    def targets(name: str, importer: str) -> set[str]:
        parts = name.split(".")
        parents = {".".join(parts[:i]) for i in range(1, len(parts))}
        return ({name} | {p for p in parents if not importer.startswith(p + ".")}) & set(mods)

    graph = {}
    for mod, f in mods.items():
        deps: set[str] = set()
        is_pkg = f.name == "__init__.py"
        for node in ast.walk(ast.parse(f.read_text(), str(f))):
            if isinstance(node, ast.Import):
                for a in node.names:
                    deps |= targets(a.name, mod)
            elif isinstance(node, ast.ImportFrom):
                if node.level:  # relative: from . import x
                    base = mod.split(".")[: len(mod.split(".")) - node.level + (1 if is_pkg else 0)]
                    name = ".".join(base + ([node.module] if node.module else []))
                else:
                    name = node.module or ""
                deps |= targets(name, mod)
                deps |= {f"{name}.{a.name}" for a in node.names if f"{name}.{a.name}" in mods}
        deps.discard(mod)
        graph[mod] = deps
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_import_graph_has_no_cycle():
    graph = import_graph()
    assert "rl.train.trainer" in graph and "rl.core.batch" in graph["rl.train.trainer"]
    assert cycles(graph) == []


def test_core_math_imports_nothing_of_the_project_but_core():
    """rl/core may read its config dataclasses from rl/config, a leaf (next test)."""
    graph = import_graph()
    core = [m for m in graph if m.startswith("rl.core")]
    assert core
    for m in core:
        assert {d for d in graph[m] if not d.startswith(("rl.core", "rl.config"))} <= {"rl"}, (m, graph[m])


def test_config_is_a_leaf():
    """rl/config imports nothing of the project but itself and rl.core.registry (stdlib only), so that reading and
    checking a config imports no torch."""
    graph = import_graph()
    config = [m for m in graph if m == "rl.config" or m.startswith("rl.config.")]
    assert "rl.config.run" in config
    for m in config:
        assert {d for d in graph[m] if not (d == "rl.config" or d.startswith("rl.config."))} <= {"rl", "rl.core",
                                                                                                 "rl.core.registry"}, \
            (m, graph[m])
    assert graph["rl.core.registry"] <= {"rl", "rl.core"}


def test_rewards_and_rollout_use_only_the_leaves_of_rl():
    """Rewards and rollouts read configs, core math, models, files and the data mirror's file lookup; never the
    trainer, the learner, the methods or the data pipeline (which import them)."""
    graph = import_graph()
    allowed = ("rl.config", "rl.core", "rl.models", "rl.files", "rl.data.sources", "rl.cluster")
    for m, deps in graph.items():
        if m.split(".")[0] in ("rewards", "rollout"):
            outside = {d for d in deps if d.startswith("rl.") and not d.startswith(allowed)} - {"rl.data"}
            assert not outside, (m, outside)
