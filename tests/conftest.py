"""Shared fixtures. Tests that read ../shared/datasets skip when it is absent."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
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


@dataclass(frozen=True)
class PhantomCohorts:
    """Abdominal phantom cohorts for the tests of realism, evaluation and reader studies (all phantoms:
    ``real`` is the role these commands give the labelled tumours, not real CT)."""

    root: Path
    real: Path       # datalist: 4 phantoms with liver tumours (the "real" side of realism / a reader study)
    other: Path      # datalist: 4 more phantoms with tumours, another seed (a control)
    healthy: Path    # datalist: 2 healthy phantoms
    synthetic: Path  # folder: 2 synthetic liver tumours on each healthy phantom (cases syn0, syn1), no figures


@pytest.fixture(scope="session")
def phantom_cohorts(tmp_path_factory) -> PhantomCohorts:
    """One real-plus-synthetic cohort, built once per test process; tests read it and never write into it."""
    from freetumor.phantom import write_cohort
    from freetumor.synthesis import SynthesisOptions, build_synthesizer, synthesize_case

    root = tmp_path_factory.mktemp("cohorts")
    real = write_cohort(root / "real", 4, seed=3, tumour_fraction=1.0)
    other = write_cohort(root / "other", 4, seed=8, tumour_fraction=1.0)
    healthy = write_cohort(root / "healthy", 2, seed=4, tumour_fraction=0.0)
    synth = build_synthesizer(SynthesisOptions("liver"))
    for k, e in enumerate(json.loads(healthy.read_text())["training"]):
        synthesize_case(synth, healthy.parent / e["image"], healthy.parent / e["label"], root / "synthetic",
                        count=2, seed=k, case=f"syn{k}", png=False)
    return PhantomCohorts(root, real, other, healthy, root / "synthetic")


@pytest.fixture()
def rng():
    return np.random.default_rng(1234)


# The installed console script when there is one (what users run), else the module.
_SCRIPT = Path(sys.executable).parent / "freetumor"
CLI = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "freetumor.cli"]


def never_loaded_checkpoint(path):
    """A file that starts like a ``torch.save`` zip, so the CLI's up-front checkpoint check
    (``config.check_checkpoint_file``: first bytes, no PyTorch) passes it, for tests whose command
    must refuse something else before any network is loaded. Returns ``path``."""
    path.write_bytes(b"PK\x03\x04" + bytes(60))
    return path


def run_cli(*args, timeout: int = 600, cwd=None):
    """Run ``freetumor ARGS`` in a subprocess as a user would; returns the CompletedProcess."""
    env = dict(os.environ, COLUMNS="200")
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, env=env, timeout=timeout, cwd=cwd)


# ----------------------------------------------------------------------------- lesion renderer inputs
def lesion_params(**kw) -> dict:
    """One lesion's profile draw (the 11 core features) for the renderer tests; ``kw`` overrides."""
    p = dict(diameter_mm=10.0, axis_ratio_mid=0.9, axis_ratio_min=0.8, solidity=0.95, contrast_hu=750.0,
             edge_norm=0.3, occupancy_outer=0.5, interior_sd=60.0, noise_sd=30.0, corr_length_mm=2.0,
             attached_fraction=0.0)
    p.update(kw)
    return p


def lung_host(shape=(64, 64, 48), spacing=(0.7, 0.7, 1.0), seed=0, noise=20.0):
    """A uniform noisy lung (-850 HU, SD ``noise``), all of it allowed, on an identity-direction grid:
    (image, allowed, grid)."""
    from freetumor.grids import Grid  # deferred: conftest loads before every test, the package only where used

    rng = np.random.default_rng(seed)
    img = (-850 + noise * rng.standard_normal(shape)).astype(np.float32)
    return img, np.ones(shape, bool), Grid(shape, spacing, (0, 1, 2), (1, 1, 1))
