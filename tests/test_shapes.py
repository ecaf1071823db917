from __future__ import annotations

import dataclasses
import glob

import nibabel as nib
import numpy as np
import pytest

from conftest import DATASETS, need
from freetumor.errors import ConfigError
from freetumor.organs import LIDC_NODULE_DIAMETER_MM, get_organ
from freetumor.grids import Grid
from freetumor.shapes import ShapeParams, draw_size_class, evaluate_shape, sample_centre, sample_shape


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
    p_coarse = dataclasses.replace(p, centre=(60, 60, 60))
    p_fine = dataclasses.replace(p, centre=(120, 120, 30))
    v_coarse = evaluate_shape(p_coarse, coarse).voxels * coarse.voxel_volume_ml
    v_fine = evaluate_shape(p_fine, fine).voxels * fine.voxel_volume_ml
    assert v_fine == pytest.approx(v_coarse, rel=0.12)
    r = liver.base_radius_mm(size)[0]
    assert r == pytest.approx({"tiny": 6, "small": 12, "medium": 24, "large": 48}[size])  # abdomen unchanged
    assert all(0.75 * r - 1e-9 <= a <= 1.25 * r + 1e-9 for a in p.semi_axes_mm)


def test_flipped_axes_give_mirrored_mask(rng):
    liver = get_organ("liver")
    g = _grid((1.5, 1.5, 1.5), (80, 80, 80))
    gf = _grid((1.5, 1.5, 1.5), (80, 80, 80), flip=(0, 1))
    p = sample_shape(np.ones(g.shape, bool), g, liver, "medium", rng)
    p = dataclasses.replace(p, centre=(40, 40, 40))
    a = evaluate_shape(p, g).full(g.shape)
    pf = dataclasses.replace(p, centre=(39, 39, 40))
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
    plain = dataclasses.replace(p, control=np.zeros_like(p.control))
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


# ------------------------------------------------------------ physical shapes
# Grids holding the same physical region: 0.7 mm isotropic, 0.7 mm in-plane with 5 mm slices, and
# both stored LPS with their voxel axes permuted (file axes: S-I, L-R, P-A).
def _lps_permuted(spacing_xy: float, spacing_z: float, shape_xyz) -> Grid:
    aff = np.zeros((4, 4))
    aff[2, 0], aff[0, 1], aff[1, 2], aff[3, 3] = spacing_z, -spacing_xy, -spacing_xy, 1.0
    return Grid.from_affine(aff, (shape_xyz[2], shape_xyz[0], shape_xyz[1]))


# Only each mask's bounding box is evaluated, so the grids can be large (210 mm across).
GRIDS = {
    "0.7 mm": _grid((0.7, 0.7, 0.7), (300, 300, 300)),
    "5 mm slices": _grid((0.7, 0.7, 5.0), (300, 300, 42)),
    "LPS, permuted, 0.7 mm": _lps_permuted(0.7, 0.7, (300, 300, 300)),
    "LPS, permuted, 5 mm slices": _lps_permuted(0.7, 5.0, (300, 300, 42)),
}


def _centre(grid: Grid) -> tuple[int, int, int]:
    return tuple(n // 2 for n in grid.shape)  # type: ignore[return-value]


def _extent_mm(lesion, grid: Grid) -> np.ndarray:
    """Physical extent (mm) of the mask's bounding box along R-L, A-P, S-I."""
    ext = np.zeros(3)
    for i, s in enumerate(lesion.slices):
        ext[grid.phys_axis[i]] = (s.stop - s.start) * grid.spacing[i]
    return ext


def _phys_spacing(grid: Grid) -> np.ndarray:
    sp = np.zeros(3)
    for i in range(3):
        sp[grid.phys_axis[i]] = grid.spacing[i]
    return sp


def _draws(organ, size, convention, n, seed):
    """``n`` shapes drawn in a 1 mm cube organ (``convention`` None: the default one)."""
    g = _grid((1.0, 1.0, 1.0), (40, 40, 40))
    rng = np.random.default_rng(seed)
    organ_mask = np.ones(g.shape, bool)
    conv = {} if convention is None else {"convention": convention}
    return [sample_shape(organ_mask, g, organ, size, rng, **conv) for _ in range(n)]


@pytest.mark.parametrize("organ_name, size", [(o, s) for o in ("lung", "covid") for s in ("tiny", "small", "medium",
                                               "large")] + [("liver", "tiny"), ("liver", "small")])
def test_same_extent_and_volume_in_mm_at_any_slice_spacing_and_orientation(organ_name, size):
    organ = get_organ(organ_name)
    for p in _draws(organ, size, None, 6, seed=len(organ_name) * 10 + len(size)):
        ref_grid = GRIDS["0.7 mm"]
        ref = evaluate_shape(dataclasses.replace(p, centre=_centre(ref_grid)), ref_grid)
        ref_ext, ref_ml = _extent_mm(ref, ref_grid), ref.voxels * ref_grid.voxel_volume_ml
        assert ref.inside_fraction == 1.0
        # Round in mm: the head-foot extent is within the semi-axis spread (0.75-1.25) plus deformation.
        assert 0.5 < ref_ext[2] / ref_ext[:2].mean() < 2.0, (organ_name, size, ref_ext)
        for name, grid in GRIDS.items():
            lm = evaluate_shape(dataclasses.replace(p, centre=_centre(grid)), grid)
            assert lm.inside_fraction == 1.0
            tol = _phys_spacing(grid) + _phys_spacing(ref_grid)
            assert np.all(np.abs(_extent_mm(lm, grid) - ref_ext) <= tol + 1e-6), (name, _extent_mm(lm, grid), ref_ext)
            # Volume: within 2% at 0.7 mm; at 5 mm slices within 10% once the lesion spans 4 slices.
            fine = max(grid.spacing) < 1.0
            if fine or np.all(ref_ext >= 4 * _phys_spacing(grid)):
                assert lm.voxels * grid.voxel_volume_ml == pytest.approx(ref_ml, rel=0.02 if fine else 0.1), name


@pytest.mark.parametrize("organ_name", ["lung", "covid", "liver", "pancreas", "kidney"])
def test_physical_semi_axes_are_isotropic_in_mm(organ_name):
    organ = get_organ(organ_name)
    for size in organ.size_classes:
        lo, hi = 0.75 * organ.base_radius_mm(size)[0], 1.25 * organ.base_radius_mm(size)[0]
        for p in _draws(organ, size, None, 20, seed=3):
            assert all(lo - 1e-9 <= a <= hi + 1e-9 for a in p.semi_axes_mm), (size, p.semi_axes_mm)
            assert p.voxel_mm == (organ.target_spacing[0],) * 3


def test_released_convention_keeps_the_chest_head_foot_stretch():
    lung = get_organ("lung")
    assert lung.base_radius_mm("tiny", "released") == (5.0, 5.0, 20.0)
    g = GRIDS["0.7 mm"]
    ratios: dict = {}
    for conv in (None, "released"):
        ratios[conv] = []
        for p in _draws(lung, "tiny", conv, 10, seed=4):
            assert p.size_class == "tiny"
            lm = evaluate_shape(dataclasses.replace(p, centre=_centre(g)), g)
            ext = _extent_mm(lm, g)
            ratios[conv].append(ext[2] / ext[:2].mean())
    assert np.median(ratios["released"]) > 3.0
    assert 0.7 < np.median(ratios[None]) < 1.4
    # The released convention draws FreeTumor's classes and probabilities; the physical one the fitted mix.
    rng = np.random.default_rng(0)
    assert {draw_size_class(lung, "mix", rng, "released") for _ in range(200)} == {"tiny", "small"}
    assert {draw_size_class(lung, "mix", rng) for _ in range(200)} == {"tiny", "small", "medium", "large"}
    with pytest.raises(ConfigError, match="unknown shape convention 'native'"):
        lung.voxel_mm("native")


def _equivalent_diameter_mm(voxels, voxel_volume_ml) -> np.ndarray:
    return (6.0 / np.pi * np.asarray(voxels) * voxel_volume_ml * 1000.0) ** (1.0 / 3.0)


def _lung_mix_diameters(convention: str | None, n: int) -> np.ndarray:
    g = Grid.from_affine(np.diag([0.7, 0.7, 0.7, 1.0]), (90, 90, 400))  # room for a released large lesion
    voxels = [evaluate_shape(dataclasses.replace(p, centre=_centre(g)), g).full_voxels
              for p in _draws(get_organ("lung"), "mix", convention, n, seed=5)]
    return _equivalent_diameter_mm(voxels, g.voxel_volume_ml)


def test_lung_mix_follows_real_nodule_sizes():
    real_median = LIDC_NODULE_DIAMETER_MM[50]
    d = _lung_mix_diameters(None, 400)
    assert abs(np.median(d) - real_median) < 2.0, np.median(d)
    # Quartiles and the 5-95% range follow the real ones too, and the classes span about 3-30 mm.
    for q in (5, 25, 75, 95):
        assert np.percentile(d, q) == pytest.approx(LIDC_NODULE_DIAMETER_MM[q], rel=0.2), q
    assert d.min() < 4.5 and d.max() > 24
    # The released convention's lung lesions are far larger than real nodules (what the fit fixes).
    assert np.median(_lung_mix_diameters("released", 40)) > real_median + 5


def test_registry_nodule_sizes_are_the_measured_lidc_ones():
    labels = sorted(glob.glob(str(need(DATASETS / "lidc_nodule_vois" / "labels") / "*.nii.gz")))
    assert len(labels) == 735
    d = []
    for f in labels:
        img = nib.load(f)
        d.append((np.asarray(img.dataobj) > 0).sum() * float(np.prod(img.header.get_zooms()[:3])) / 1000.0)
    d = _equivalent_diameter_mm(d, 1.0)
    for q, v in LIDC_NODULE_DIAMETER_MM.items():
        assert np.percentile(d, q) == pytest.approx(v, abs=0.006), q
