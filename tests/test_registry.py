"""The registries of rl/core/registry.py: the names read from the home modules' source (what a config is checked
against without importing torch) are the names those modules register when imported."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from rl.core import registry as reg

ROOT = Path(__file__).resolve().parent.parent
REGISTRIES = {name: r for name, r in vars(reg).items() if isinstance(r, reg.Registry)}


def _run(code: str) -> dict:
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_every_registry_has_a_home():
    assert {"ADVANTAGE_ESTIMATORS", "POLICY_LOSSES", "LOSS_AGGREGATIONS", "KL_ESTIMATORS", "TOKEN_WEIGHTS",
            "F_DIVERGENCES", "REWARDS"} <= set(REGISTRIES)
    assert all(r.home for r in REGISTRIES.values())


@pytest.mark.parametrize("name", sorted(REGISTRIES))
def test_source_names_are_the_registered_names(name):
    r = REGISTRIES[name]
    from_source = sorted({n for module in r.home for n in r.source_names(module)})
    r.load()
    assert from_source == sorted(r._items) == r.names()
    assert from_source  # a home that registers nothing is a typo


def test_names_need_no_import_of_the_home_modules():
    got = _run("import json, sys\n"
               "from rl.core import registry as reg\n"
               "rs = {k: r for k, r in vars(reg).items() if isinstance(r, reg.Registry)}\n"
               "names = {k: r.names() for k, r in rs.items()}\n"
               "homes = sorted(m for r in rs.values() for m in r.home if m in sys.modules)\n"
               "heavy = sorted(m for m in ('torch', 'numpy', 'rewards', 'rollout') if m in sys.modules)\n"
               "print(json.dumps({'names': names, 'homes': homes, 'heavy': heavy, 'in': 'k3' in reg.KL_ESTIMATORS}))")
    assert got["homes"] == [] and got["heavy"] == [] and got["in"]
    for name, r in REGISTRIES.items():
        r.load()
        assert got["names"][name] == r.names(), name


def test_get_imports_the_home_module():
    got = _run("import json, sys\n"
               "from rl.core.registry import KL_ESTIMATORS\n"
               "fn = KL_ESTIMATORS.get('k3')\n"
               "print(json.dumps({'module': fn.__module__, 'imported': 'rl.core.kl' in sys.modules}))")
    assert got == {"module": "rl.core.kl", "imported": True}
    with pytest.raises(KeyError, match="unknown KL estimator 'k9'; choose one of: k1, k2, k3"):
        reg.KL_ESTIMATORS.get("k9")


def test_every_policy_loss_declares_a_registered_aggregation():
    """agg_mode: null selects the loss's own aggregation; the config checks only explicit ones, so every declared one
    must be registered."""
    from rl.core.losses import DEFAULT_AGG_MODE, LOSS_AGGREGATIONS, POLICY_LOSSES

    for name in POLICY_LOSSES.names():
        assert getattr(POLICY_LOSSES.get(name), "agg_mode", DEFAULT_AGG_MODE) in LOSS_AGGREGATIONS, name


def test_a_registry_without_home_lists_what_was_registered():
    r = reg.Registry("thing")
    r.register("a")(len)
    assert r.names() == ["a"] and "a" in r and "b" not in r
    with pytest.raises(KeyError, match="registered twice"):
        r.register("a")(len)
