"""Shared fixtures: a tiny random-init Llama with the real SmolLM2 tokenizer, and one real local Ray cluster."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# The data mirror of real public sets (rl/data/sources.py): $RLVR_DATA_DIR (the Makefile sets it to ../shared/data
# when that folder is beside the clone, as on this project's own machines and CI). A user's clone has none: the tests
# of the real sets then skip, and nothing else needs it.
if "RLVR_DATA_DIR" not in os.environ and (REPO.parent / "shared" / "data").is_dir():
    os.environ["RLVR_DATA_DIR"] = str(REPO.parent / "shared" / "data")
SHARED_DATA = Path(os.environ.get("RLVR_DATA_DIR") or REPO.parent / "shared" / "data").absolute()


def requires_mirror(*files: str):
    """Skip unless the data mirror holds these files (relative to it), with a reason naming what is missing."""
    missing = [f for f in files if not (SHARED_DATA / f).exists()]
    where = (f"the data mirror {SHARED_DATA} has no {', '.join(missing)}" if os.environ.get("RLVR_DATA_DIR") else
             f"no data mirror: RLVR_DATA_DIR is unset and {SHARED_DATA} does not exist")
    return pytest.mark.skipif(bool(missing), reason=f"{where} (set RLVR_DATA_DIR to a folder of copies of the public "
                                                    "sets, see rl/data/sources.py)")


@pytest.fixture(scope="session")
def smollm2_path() -> str:
    """The real SmolLM2-135M-Instruct folder (converted once by `make setup`)."""
    from rl.models.resolve import resolve_model_path

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
