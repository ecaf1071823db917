"""Shape descriptors of lesion masks (freetumor.lesions.shape): analytic shapes, grid invariance."""

from __future__ import annotations

import math

import numpy as np
import pytest

from freetumor.lesions import measure
from freetumor.lesions.shape import SHAPE_FEATURES, ellipsoid_mask, principal_ratios, shape_descriptors, surface


def _bumpy(spacing, amp_mm: float, lobes: int = 6) -> np.ndarray:
    """A 9 mm-radius ball whose radius varies by ``amp_mm`` with ``lobes`` bumps around two axes."""
    sp = np.asarray(spacing)
    half = [int(math.ceil((9.0 + amp_mm) / s)) + 2 for s in sp]
    g = np.ogrid[tuple(slice(-h, h + 1) for h in half)]
    x, y, z = (gi * s for gi, s in zip(g, sp))
    r = np.sqrt(x * x + y * y + z * z)
    theta = np.arctan2(y, x)
    phi = np.arccos(np.clip(z / np.maximum(r, 1e-9), -1, 1))
    return r <= 9.0 + amp_mm * np.cos(lobes * theta) * np.sin(phi) ** 2 * np.cos(lobes * phi)


def test_ball_area_and_volume_close_to_analytic():
    sp = (0.8, 0.8, 0.8)
    centres, areas, normals = surface(ellipsoid_mask((10.0, 10.0, 10.0), sp), sp)
    assert areas.sum() == pytest.approx(4 * math.pi * 100, rel=0.04)
    enclosed = np.sum(np.sum(centres * normals, axis=1) * areas) / 3
    assert enclosed == pytest.approx(4 / 3 * math.pi * 1000, rel=0.04)


@pytest.mark.parametrize("semi", [(6.0, 8.0, 10.0), (5.0, 5.0, 12.0), (9.0, 9.0, 9.0)])
def test_same_ellipsoid_at_fine_and_coarse_spacing(semi):
    fine = shape_descriptors(ellipsoid_mask(semi, (0.7,) * 3), (0.7,) * 3)
    coarse = shape_descriptors(ellipsoid_mask(semi, (2.5,) * 3), (2.5,) * 3)
    ct = shape_descriptors(ellipsoid_mask(semi, (0.7, 0.7, 2.5)), (0.7, 0.7, 2.5))
    for other in (coarse, ct):
        for key in ("sphericity", "elongation", "flatness", "convexity"):
            assert other[key] == pytest.approx(fine[key], abs=0.06), key
        assert abs(other["surface_roughness"] - fine["surface_roughness"]) < 0.05
        assert abs(other["compactness"] - fine["compactness"]) < 0.25


def test_ellipsoid_ratios_match_axes():
    d = shape_descriptors(ellipsoid_mask((4.0, 8.0, 16.0), (0.7,) * 3), (0.7,) * 3)
    assert d["elongation"] == pytest.approx(0.5, abs=0.02)
    assert d["flatness"] == pytest.approx(0.25, abs=0.02)
    # prolate / triaxial ellipsoids are less spherical than a ball but just as smooth and convex
    assert d["sphericity"] < 0.85 and d["convexity"] > 0.95 and d["surface_roughness"] < 0.05


def test_bumps_raise_roughness_and_lower_convexity():
    sp = (0.7, 0.7, 1.25)
    smooth = shape_descriptors(_bumpy(sp, 0.0), sp)
    bumpy = shape_descriptors(_bumpy(sp, 3.0), sp)
    assert bumpy["surface_roughness"] > smooth["surface_roughness"] + 0.05
    assert bumpy["surface_roughness_mm"] > 0.5
    assert bumpy["convexity"] < smooth["convexity"] - 0.05
    assert bumpy["sphericity"] < smooth["sphericity"] - 0.05


def test_cube_has_flat_faces_and_corners():
    cube = shape_descriptors(np.ones((16, 16, 16), bool), (1.0, 1.0, 1.0))
    ball = shape_descriptors(ellipsoid_mask((9.9, 9.9, 9.9), (1.0,) * 3), (1.0,) * 3)
    assert cube["sphericity"] < ball["sphericity"] - 0.1
    assert cube["surface_roughness"] > ball["surface_roughness"] + 0.05  # corners stick out of the ellipsoid


def test_tiny_and_degenerate_masks():
    one = np.zeros((3, 3, 3), bool)
    one[1, 1, 1] = True
    d = shape_descriptors(one, (1.0, 1.0, 1.0))
    assert set(SHAPE_FEATURES) <= set(d)
    assert all(math.isfinite(v) for v in d.values())
    flat = np.zeros((12, 12, 3), bool)
    flat[2:10, 2:10, 1] = True  # one slice thick
    f = shape_descriptors(flat, (1.0, 1.0, 2.5))
    assert all(math.isfinite(v) for v in f.values()) and f["flatness"] < 0.5
    with pytest.raises(ValueError):
        shape_descriptors(one, (1.0, 0.0, 1.0))


def test_measure_keeps_its_api_and_values():
    ball = measure.sphere_mask(12.0, (1.0, 1.0, 1.0))
    assert measure.relative_solidity(ball, (1.0, 1.0, 1.0), float(ball.sum())) == pytest.approx(1.0, abs=0.002)
    assert 0 < measure.solidity(ball, (1.0, 1.0, 1.0)) <= 1
    m = ellipsoid_mask((3.0, 6.0, 9.0), (1.0, 1.0, 1.0))
    pts = np.argwhere(m).astype(float)
    ev = np.sort(np.linalg.eigvalsh(np.cov(pts.T)))[::-1]
    old = (math.sqrt(ev[1] / ev[0]), math.sqrt(ev[2] / ev[0]))  # the profile's voxel-centre ratios
    assert measure._principal_ratios(m, (1.0, 1.0, 1.0)) == pytest.approx(old)
    assert principal_ratios(m, (1.0, 1.0, 1.0))[1] > old[1]  # voxel boxes widen the thin axis
