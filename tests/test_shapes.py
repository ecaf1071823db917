from __future__ import annotations

import numpy as np
import pytest

from freetumor.organs import SIZE_CLASSES, get_organ
from freetumor.grids import Grid
from freetumor.shapes import ShapeParams, evaluate_shape, sample_centre, sample_shape


def _grid(spacing, shape, flip=()):
    aff = np.diag([*spacing, 1.0])
    for ax in flip:
        aff[ax, ax] *= -1
    return Grid.from_affine(aff, shape)


def _box_organ(shape, lo, hi):
    m = np.zeros(shape, bool)
    m[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = True
    return m


@pytest.mark.parametrize("size", ["tiny", "small", "medium", "large"])
def test_same_physical_tumour_at_any_spacing(size, rng):
    liver = get_organ("liver")
    coarse = _grid((1.5, 1.5, 1.5), (120, 120, 120))
    fine = _grid((0.75, 0.75, 3.0), (240, 240, 60))
    organ = np.ones(coarse.shape, bool)
    p = sample_shape(organ, coarse, liver, size, rng)
    # Same physical centre on both grids (voxel centre of coarse (60,60,60) -> 90 mm).
    p_coarse = ShapeParams(p.size_class, (60, 60, 60), p.semi_axes_mm, p.target_spacing, p.sigma, p.control)
    p_fine = ShapeParams(p.size_class, (120, 120, 30), p.semi_axes_mm, p.target_spacing, p.sigma, p.control)
    v_coarse = evaluate_shape(p_coarse, coarse).voxels * coarse.voxel_volume_ml
    v_fine = evaluate_shape(p_fine, fine).voxels * fine.voxel_volume_ml
    assert v_fine == pytest.approx(v_coarse, rel=0.12)
    r = SIZE_CLASSES[size].radius_vox * 1.5
    assert all(0.75 * r - 1e-9 <= a <= 1.25 * r + 1e-9 for a in p.semi_axes_mm)


def test_flipped_axes_give_mirrored_mask(rng):
    liver = get_organ("liver")
    g = _grid((1.5, 1.5, 1.5), (80, 80, 80))
    gf = _grid((1.5, 1.5, 1.5), (80, 80, 80), flip=(0, 1))
    p = sample_shape(np.ones(g.shape, bool), g, liver, "medium", rng)
    p = ShapeParams(p.size_class, (40, 40, 40), p.semi_axes_mm, p.target_spacing, p.sigma, p.control)
    a = evaluate_shape(p, g).full(g.shape)
    pf = ShapeParams(p.size_class, (39, 39, 40), p.semi_axes_mm, p.target_spacing, p.sigma, p.control)
    b = evaluate_shape(pf, gf).full(gf.shape)
    assert a.sum() > 1000
    assert np.array_equal(a, b[::-1, ::-1, :])


def test_mask_clipped_to_organ_and_deformed(rng):
    liver = get_organ("liver")
    g = _grid((1.5, 1.5, 1.5), (90, 90, 90))
    organ = _box_organ(g.shape, (20, 20, 20), (70, 70, 70))
    p = sample_shape(organ, g, liver, "large", rng)
    m = evaluate_shape(p, g, organ)
    full = m.full(g.shape)
    assert full.any() and not (full & ~organ).any()
    unclipped = evaluate_shape(p, g).full(g.shape)
    assert m.voxels < unclipped.sum()  # the large tumour pokes out of the box organ
    # Deformation: the mask is not the plain ellipsoid with the same semi-axes.
    plain = ShapeParams(p.size_class, p.centre, p.semi_axes_mm, p.target_spacing, p.sigma, np.zeros_like(p.control))
    assert (evaluate_shape(plain, g).full(g.shape) != unclipped).sum() > 100


def test_centre_in_middle_40_percent_on_eroded_slice(rng):
    liver = get_organ("liver")
    g = _grid((1.5, 1.5, 1.5), (60, 60, 100))
    organ = _box_organ(g.shape, (10, 10, 20), (50, 50, 80))  # z extent 20..79
    zs = []
    for _ in range(200):
        c = sample_centre(organ, g, liver, rng)
        zs.append(c[2])
        assert 12 <= c[0] <= 47 and 12 <= c[1] <= 47  # eroded by 2 voxels
    assert min(zs) >= 20 + round(0.3 * 59) - 1 and max(zs) <= 20 + round(0.7 * 59) + 1


def test_centre_uses_superior_axis_whatever_the_file_order(rng):
    liver = get_organ("liver")
    aff = np.zeros((4, 4))
    aff[0, 2] = aff[1, 0] = aff[2, 1] = 1.5  # voxel axis 1 runs S-I
    aff[3, 3] = 1
    g = Grid.from_affine(aff, (60, 100, 60))
    assert g.axial_axis == 1
    organ = _box_organ(g.shape, (10, 20, 10), (50, 80, 50))
    for _ in range(50):
        c = sample_centre(organ, g, liver, rng)
        assert 20 + 17 <= c[1] <= 20 + 42


def test_no_centre_in_too_thin_organ(rng):
    g = _grid((1.5, 1.5, 1.5), (40, 40, 40))
    organ = _box_organ(g.shape, (10, 10, 10), (13, 30, 30))  # 3 voxels wide: erosion empties it
    assert sample_centre(organ, g, get_organ("liver"), rng) is None


def test_seeded():
    liver = get_organ("liver")
    g = _grid((1.5, 1.5, 1.5), (60, 60, 60))
    organ = np.ones(g.shape, bool)
    a = sample_shape(organ, g, liver, "mix", np.random.default_rng(5))
    b = sample_shape(organ, g, liver, "mix", np.random.default_rng(5))
    c = sample_shape(organ, g, liver, "mix", np.random.default_rng(6))
    assert a.centre == b.centre and np.array_equal(a.control, b.control)
    assert not np.array_equal(a.control, c.control)
