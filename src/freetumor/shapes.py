"""Rule-based tumour masks: position, size class, deformed ellipsoid (METHOD §3).

The recipe is SynTumor's, as FreeTumor uses it, re-implemented so that it is
independent of the input's voxel size. Lengths are in *shape voxels*
(:meth:`freetumor.organs.Organ.voxel_mm`): in the default ``physical`` convention one
physical length on every axis (the organ's in-plane target spacing), so tumours are
isotropic in millimetres; in the ``released`` convention the organ's target spacing
per axis, as the released code (chest lesions 4x longer head-foot than across).

* **Position.** The centre lies in the middle 40% of the organ's axial (S-I)
  extent, on that axial slice of the organ eroded by a 5x5 square of
  in-plane target-spacing voxels (so the centre avoids organ edges).
* **Size.** Each semi-axis is drawn from [0.75 r, 1.25 r] where r is the size
  class's base radius in shape voxels (:meth:`~freetumor.organs.Organ.size_table`:
  tiny 4, small 8, medium 16, large 32 for the SynTumor classes; the chest's physical
  classes are fitted to real nodules); it is stored in millimetres, so the same
  physical tumour comes out whatever the input spacing.
* **Shape.** An ellipsoid deformed by a smooth random displacement field: a
  3x3x3 grid of control displacements (std sigma of the class, in shape
  voxels) spanning the 4x-radius box, interpolated with quadratic Lagrange
  polynomials. This replaces the released code's three 2D ``elasticdeform``
  passes (broken under NumPy 2); the per-axis std is sigma * sqrt(2) because each
  axis was displaced by two of the three passes. The mask is evaluated
  analytically on the native grid inside the tumour's bounding box only.
* **Clip.** The mask is intersected with the organ.

Masks are drawn on the CT's own voxel grid (:class:`freetumor.grids.Grid`).

Example:
    >>> import numpy as np
    >>> from freetumor.grids import Grid
    >>> from freetumor.organs import get_organ
    >>> organ = np.zeros((60, 60, 40), bool); organ[10:50, 10:50, 5:35] = True
    >>> grid = Grid.from_affine(np.diag([1.5, 1.5, 1.5, 1.0]), organ.shape)
    >>> p = sample_shape(organ, grid, get_organ("liver"), "small", np.random.default_rng(0))
    >>> lesion = p.mask(grid, organ)
    >>> lesion.voxels > 0 and bool(np.all(organ[lesion.slices][lesion.mask]))
    True
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.ndimage import binary_erosion

from .errors import FreeTumorError
from .grids import Grid
from .organs import DEFAULT_SHAPE_CONVENTION, Organ

# The paper's erosion kernel: a 5x5 square at target spacing (2 voxels either side).
_EROSION_HALF_WIDTH_VOX = 2
# Axial extent used for the centre: the middle 40% of the organ.
_Z_RANGE = (0.3, 0.7)
# Bound on the quadratic-Lagrange tensor-product interpolant (Lebesgue constant 1.25 per axis).
_INTERP_BOUND = 1.25**3


class OrganTooSmallError(FreeTumorError):
    """No valid tumour of the requested size fits in the organ."""


@dataclass(frozen=True)
class ShapeParams:
    """Everything that determines one tumour mask (all physical, spacing-free).

    Attributes:
        size_class: tiny / small / medium / large.
        centre: centre voxel index (file voxel order).
        semi_axes_mm: ellipsoid semi-axes along R-L, A-P, S-I in mm.
        voxel_mm: mm per shape voxel along R-L, A-P, S-I, the unit of ``sigma`` and ``control``.
        sigma: deformation std drawn for the class (shape voxels).
        control: control-point displacements, shape (3 components, 3, 3, 3), shape voxels,
            components and grid in physical (x, y, z) order.
    """

    size_class: str
    centre: tuple[int, int, int]
    semi_axes_mm: tuple[float, float, float]
    voxel_mm: tuple[float, float, float]
    sigma: float
    control: np.ndarray

    def mask(self, grid: Grid, organ_mask: np.ndarray | None = None) -> "LesionMask":
        """Evaluate the mask on ``grid``, clipped to the volume and to ``organ_mask``."""
        return evaluate_shape(self, grid, organ_mask)


@dataclass
class LesionMask:
    """A lesion's mask inside its bounding box.

    Attributes:
        slices: where the box sits in the volume.
        mask: bool array of the box's shape, already clipped to the organ.
        full_voxels: voxels of the deformed ellipsoid before clipping (including any
            part that falls outside the volume).
    """

    slices: tuple[slice, slice, slice]
    mask: np.ndarray
    full_voxels: int

    @property
    def voxels(self) -> int:
        return int(self.mask.sum())

    @property
    def inside_fraction(self) -> float:
        return self.voxels / self.full_voxels if self.full_voxels else 0.0

    def full(self, shape) -> np.ndarray:
        out = np.zeros(shape, bool)
        out[self.slices] = self.mask
        return out


def _lagrange3(s: np.ndarray) -> np.ndarray:
    """Quadratic Lagrange basis on nodes -1, 0, 1; s clipped to [-1, 1]. Returns (n, 3)."""
    s = np.clip(s, -1.0, 1.0)
    return np.stack([0.5 * s * (s - 1.0), 1.0 - s * s, 0.5 * s * (s + 1.0)], axis=-1)


def evaluate_shape(params: ShapeParams, grid: Grid, organ_mask: np.ndarray | None = None) -> LesionMask:
    """Rasterise a deformed ellipsoid on a native grid (bounding box only)."""
    t_phys = np.asarray(params.voxel_mm, np.float64)
    a_phys = np.asarray(params.semi_axes_mm, np.float64) / t_phys  # semi-axes in shape voxels
    ctrl = np.asarray(params.control, np.float64)
    # Half extent in shape voxels: ellipsoid + the largest displacement, inside the 4x box.
    max_disp = np.abs(ctrl).reshape(3, -1).max(axis=1) * _INTERP_BOUND
    half_phys = np.minimum(a_phys + max_disp, 2.0 * a_phys)

    axes = list(grid.phys_axis)
    spacing = np.asarray(grid.spacing, np.float64)
    t_vox, a_vox, half_vox = t_phys[axes], a_phys[axes], half_phys[axes]
    sign = np.asarray(grid.phys_sign, np.float64)
    h = np.ceil(half_vox * t_vox / spacing).astype(int) + 1

    centre = np.asarray(params.centre, int)
    lo, hi = centre - h, centre + h + 1
    # Coordinates of the (unclipped) box in shape voxels, relative to the centre, per voxel axis.
    coords = [sign[i] * np.arange(-h[i], h[i] + 1) * spacing[i] / t_vox[i] for i in range(3)]
    # Control grid into voxel-axis order: components and spatial dims permuted.
    # Coordinates are physical, so no flip is needed: voxel order only lists the sample points.
    c = ctrl[axes].transpose(0, *(1 + np.asarray(axes)))
    bases = [_lagrange3(coords[i] / (2.0 * a_vox[i])) for i in range(3)]
    q = np.zeros([len(x) for x in coords], np.float32)
    for i in range(3):
        disp = np.einsum("abc,xa,yb,zc->xyz", c[i], *bases, optimize=True)
        term = (coords[i].reshape([-1 if k == i else 1 for k in range(3)]) + disp) / a_vox[i]
        q += (term * term).astype(np.float32)
    full = q <= 1.0
    full_voxels = int(full.sum())

    clo = np.maximum(lo, 0)
    chi = np.minimum(hi, grid.shape)
    if np.any(chi <= clo):
        return LesionMask((slice(0, 0),) * 3, np.zeros((0, 0, 0), bool), full_voxels)
    inner = tuple(slice(int(a - l), int(b - l)) for a, b, l in zip(clo, chi, lo))
    mask = full[inner]
    slices = tuple(slice(int(a), int(b)) for a, b in zip(clo, chi))
    if organ_mask is not None:
        mask = mask & organ_mask[slices]
    # Shrink the box to the mask itself.
    if mask.any():
        idx = [np.flatnonzero(mask.any(axis=tuple(k for k in range(3) if k != i))) for i in range(3)]
        sub = tuple(slice(int(ix[0]), int(ix[-1]) + 1) for ix in idx)
        mask = mask[sub]
        slices = tuple(slice(s.start + u.start, s.start + u.stop) for s, u in zip(slices, sub))
    return LesionMask(slices, np.ascontiguousarray(mask), full_voxels)  # type: ignore[arg-type]


def draw_size_class(organ: Organ, size: str, rng: np.random.Generator,
                    convention: str = DEFAULT_SHAPE_CONVENTION) -> str:
    """A fixed class, or (``mix``) one drawn with the organ's class probabilities in ``convention``."""
    if size != "mix":
        return organ.size_class(size, convention).name
    mix = organ.mix_probs(convention)
    names = list(mix)
    probs = np.asarray([mix[n] for n in names], np.float64)
    return names[int(rng.choice(len(names), p=probs / probs.sum()))]


def sample_centre(organ_mask: np.ndarray, grid: Grid, organ: Organ, rng: np.random.Generator):
    """A centre voxel on the eroded axial slice in the middle 40% of the organ, or ``None``.

    The erosion is in-plane, in voxels of the in-plane target spacing (the same in both conventions).
    """
    ax = grid.axial_axis
    present = np.flatnonzero(organ_mask.any(axis=tuple(k for k in range(3) if k != ax)))
    if present.size == 0:
        return None
    z0, z1 = int(present[0]), int(present[-1])
    z = z0 + int(round(rng.uniform(*_Z_RANGE) * (z1 - z0)))
    sl = organ_mask[(slice(None),) * ax + (z,)]
    inplane = [i for i in range(3) if i != ax]
    native = grid.voxels_per(organ.target_spacing)
    half = [max(1, int(round(_EROSION_HALF_WIDTH_VOX * native[i]))) for i in inplane]
    eroded = binary_erosion(sl, structure=np.ones((2 * half[0] + 1, 2 * half[1] + 1), bool))
    cand = np.argwhere(eroded)
    if len(cand) == 0:
        return None
    u, v = cand[int(rng.integers(len(cand)))]
    centre = [0, 0, 0]
    centre[ax], centre[inplane[0]], centre[inplane[1]] = z, int(u), int(v)
    return tuple(centre)


def sample_shape(
    organ_mask: np.ndarray, grid: Grid, organ: Organ, size: str, rng: np.random.Generator,
    convention: str = DEFAULT_SHAPE_CONVENTION,
) -> ShapeParams | None:
    """Draw centre, semi-axes and deformation for one tumour (``None`` if no centre exists)."""
    size_class = draw_size_class(organ, size, rng, convention)
    sc = organ.size_class(size_class, convention)
    centre = sample_centre(organ_mask, grid, organ, rng)
    if centre is None:
        return None
    t = np.asarray(organ.voxel_mm(convention), np.float64)
    semi_vox = rng.uniform(0.75 * sc.radius_vox, 1.25 * sc.radius_vox, size=3)
    if sc.sigma_integer:
        sigma = float(rng.integers(int(sc.sigma[0]), int(sc.sigma[1]) + 1))
    else:
        sigma = float(rng.uniform(*sc.sigma))
    control = rng.normal(0.0, sigma * math.sqrt(2.0), size=(3, 3, 3, 3))
    return ShapeParams(
        size_class=size_class,
        centre=centre,
        semi_axes_mm=tuple(float(v) for v in semi_vox * t),  # type: ignore[arg-type]
        voxel_mm=tuple(float(v) for v in t),  # type: ignore[arg-type]
        sigma=sigma,
        control=control,
    )


def nominal_volume_ml(organ: Organ, size_class: str, convention: str = DEFAULT_SHAPE_CONVENTION) -> float:
    """Volume (mL) of the smallest ellipsoid a size class can draw."""
    r = np.asarray(organ.base_radius_mm(size_class, convention)) * 0.75
    return float(4.0 / 3.0 * math.pi * np.prod(r) / 1000.0)
