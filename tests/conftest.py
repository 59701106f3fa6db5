"""Shared fixtures: a tiny random-init Llama with the real SmolLM2 tokenizer, and one real local Ray cluster."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def smollm2_path() -> str:
    """The real SmolLM2-135M-Instruct folder (converted once by `make setup`)."""
    from rl.models import resolve_model_path

    return resolve_model_path("smollm2-135m-instruct")


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory, smollm2_path) -> str:
    """A 2-layer Llama with SmolLM2's tokenizer (tests/resume_harness.py:write_tiny_llama)."""
    from tests.resume_harness import write_tiny_llama

    return write_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def ray_cluster():
    import ray

    ray.init(num_cpus=os.cpu_count() or 2, include_dashboard=False, logging_level="WARNING")
    yield ray
    ray.shutdown()
