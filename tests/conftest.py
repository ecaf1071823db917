"""Shared fixtures. Tests that read ../shared/datasets skip when it is absent."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

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
