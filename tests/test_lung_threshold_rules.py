"""The model-free lung mask refuses air that is not lungs (issue 25, items 4 and 6): too small to
be a lung, gas (bowel, stomach), or below the lungs; real chest CTs still pass."""

from __future__ import annotations

import numpy as np
import pytest

from freetumor.errors import InputError
from freetumor.io import Volume
from freetumor.lung_threshold import GAS_HU, MIN_LUNG_ML, threshold_lung_mask

from conftest import DATASETS, need, run_cli

VOXEL_MM = 5.0  # 0.125 mL a voxel
VOXEL_ML = VOXEL_MM ** 3 / 1000.0


def body(shape=(40, 30, 40)) -> np.ndarray:
    x = np.full(shape, -1000, np.int16)  # air around the body
    x[3:37, 3:27, :] = 40                  # soft tissue
    return x


def toy(x: np.ndarray, name: str = "toy") -> Volume:
    return Volume(x, np.diag([VOXEL_MM, VOXEL_MM, VOXEL_MM, 1.0]), None, name)


@pytest.mark.parametrize("voxels,accepted", [(384, False), (416, True)], ids=["48 mL", "52 mL"])
def test_a_lung_is_at_least_50_ml(voxels, accepted):
    """Rule: the largest air region inside the body must hold at least MIN_LUNG_ML (50 mL) to be a
    lung; 48 mL is refused, 52 mL is a lung (mutant: 5 mL would accept 48 mL)."""
    x = body()
    depth = voxels // (8 * 8)
    x[10:18, 10:18, 10:10 + depth] = -850
    if voxels % 64:
        x[10:18, 10:10 + (voxels % 64) // 8, 10 + depth] = -850
    assert np.count_nonzero(x == -850) * VOXEL_ML == pytest.approx(voxels * VOXEL_ML)
    if accepted:
        assert threshold_lung_mask(toy(x)).sum() >= voxels
    else:
        with pytest.raises(InputError, match=r"toy: no lungs found: the largest air region inside the body is 48 mL"):
            threshold_lung_mask(toy(x))


def _two_lungs() -> np.ndarray:
    x = body()
    x[6:18, 8:22, 20:38] = x[22:34, 8:22, 20:38] = -850  # 378 mL each, the upper half of the scan
    return x


def test_two_lungs_pass():
    assert threshold_lung_mask(toy(_two_lungs())).sum() == 2 * 12 * 14 * 18


def test_gas_is_not_lung():
    """Rule: an air region whose median is below GAS_HU (-950) is gas in the bowel or stomach."""
    x = _two_lungs()
    x[12:28, 8:22, 4:14] = -1000  # 280 mL of gas, beside the lungs' level or below: refused as gas
    with pytest.raises(InputError, match=r"toy: an air region of 280 mL reads -1000 HU \(median\), below -950 HU"):
        threshold_lung_mask(toy(x))
    x[12:28, 8:22, 4:14] = int(GAS_HU) + 20  # the same region at lung density is not gas
    with pytest.raises(InputError, match="lies below the lungs"):
        threshold_lung_mask(toy(x))


def test_air_below_the_lungs_is_refused():
    """Rule: a candidate whose centre lies below the lowest slice of the largest one is under the
    diaphragm; one whose centre is level with the lungs is a lung."""
    x = _two_lungs()
    x[6:18, 8:22, 20:38] = 40
    x[6:18, 8:22, 2:19] = -850  # centre 10 < the other lung's lowest slice 20
    with pytest.raises(InputError, match=r"toy: an air region of \d+ mL lies below the lungs"):
        threshold_lung_mask(toy(x))
    x[6:18, 8:22, 2:19] = 40
    x[6:18, 8:22, 12:36] = -850  # lower than the other lung, but its centre (23.5) is above its bottom (20)
    assert threshold_lung_mask(toy(x)).sum() == 12 * 14 * 18 + 12 * 14 * 24


@pytest.mark.parametrize("path", [pytest.param("ircadb01_liver01/image.nii.gz", marks=pytest.mark.slow),
                                  "totalseg_example/ct3mm_image.nii.gz"],
                         ids=["ircadb01 abdomen", "totalseg upper abdomen"])
def test_abdominal_ct_is_refused(path, tmp_path):
    """Real abdominal CTs with lung bases and colon gas: one line naming the scan, no output
    (before: a "lung" that was mostly colon gas)."""
    image = need(DATASETS / path)
    out = tmp_path / "masks"
    r = run_cli("organs", "--image", image, "--out", out, "--engine", "threshold", "--quiet", timeout=600)
    assert r.returncode == 1, r.stdout + r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and image.name in lines[0], r.stderr
    assert "gas in the bowel or stomach, not lung" in lines[0] and "not a chest CT" in lines[0]
    assert not out.exists()


@pytest.mark.slow
@pytest.mark.parametrize("case", ["LIDC-IDRI-0001", "LIDC-IDRI-0003"])
def test_real_chest_ct_still_passes(case):
    """The LIDC chest CTs keep their lungs (several litres, all of them passing the rules)."""
    from freetumor.io import load_volume

    volume = load_volume(need(DATASETS / "lidc_full_scans" / case / "image.nii.gz"))
    lungs = threshold_lung_mask(volume)
    litres = lungs.sum() * float(np.prod(volume.spacing)) / 1e6
    assert 3.0 < litres < 7.0, litres
