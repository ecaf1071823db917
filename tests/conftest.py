"""Shared fixtures. Tests that read ../shared/datasets skip when it is absent."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

# Under `pytest -n N` (N > 1) each worker, and every CLI it starts, computes on one thread: N
# workers each running PyTorch's default of one thread per core would oversubscribe the cores, and
# oversubscribed OpenMP threads spin and wait on each other (several times slower in total).
if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1:
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ["MKL_NUM_THREADS"] = "1"
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)

# The hundreds of CLI subprocesses the tests start each import freetumor: let them cache its
# compiled modules (__pycache__, git-ignored) instead of compiling every module afresh each time
# when the environment sets PYTHONDONTWRITEBYTECODE (about 0.5 s per process).
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
sys.dont_write_bytecode = False

REPO = Path(__file__).resolve().parents[1]
DATASETS = Path(os.environ.get("FREETUMOR_DATASETS", REPO.parent / "shared" / "datasets"))
TOTALSEG = DATASETS / "totalseg_example"


def need(path: Path) -> Path:
    """Skip the test when a real-data file is not there."""
    if not path.exists():
        pytest.skip(f"real CT not available: {path}")
    return path


@pytest.fixture(scope="session")
def totalseg() -> Path:
    return need(TOTALSEG)


@pytest.fixture(scope="session")
def abdomen_case():
    """A healthy abdominal phantom (image, label), small for speed."""
    from freetumor.phantom import make_case

    return make_case("abdomen", seed=11, tumour=False)


@pytest.fixture(scope="session")
def abdomen_tumour_case():
    from freetumor.phantom import make_case

    return make_case("abdomen", seed=12, tumour=True)


@pytest.fixture(scope="session")
def chest_case():
    from freetumor.phantom import make_case

    return make_case("chest", seed=13, tumour=False)


@pytest.fixture()
def rng():
    return np.random.default_rng(1234)


# The installed console script when there is one (what users run), else the module.
_SCRIPT = Path(sys.executable).parent / "freetumor"
CLI = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "freetumor.cli"]


def run_cli(*args, timeout: int = 600, cwd=None):
    """Run ``freetumor ARGS`` in a subprocess as a user would; returns the CompletedProcess."""
    env = dict(os.environ, COLUMNS="200")
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, env=env, timeout=timeout, cwd=cwd)
