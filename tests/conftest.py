"""Shared test fixtures: locate ../shared (data, assets, references) and skip cleanly without it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("PERCEPTSR_SHARED", REPO_ROOT.parent / "shared"))

# Tests never download: a missing asset must fail fast with its "put it in ..." message.
os.environ["PERCEPTSR_OFFLINE"] = "1"

# One core per xdist worker: oversubscribed OpenMP threads spin against each other and can make
# convolutions tens of times slower on a 2-core machine.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
torch.set_num_threads(max(1, min(2, (os.cpu_count() or 1) // _WORKERS)))

if (SHARED / "assets").is_dir():
    os.environ.setdefault("PERCEPTSR_ASSETS", str(SHARED / "assets"))


def _require(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"needs {path} (the shared data beside the repository is absent)")
    return path


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    return _require(SHARED)


@pytest.fixture(scope="session")
def assets_dir() -> Path:
    return _require(SHARED / "assets")


@pytest.fixture(scope="session")
def benchmark_dir() -> Path:
    return _require(SHARED / "datasets" / "benchmark")


@pytest.fixture(scope="session")
def references_dir() -> Path:
    return _require(SHARED / "references")
