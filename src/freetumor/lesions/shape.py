"""Shape descriptors of one binary lesion mask, in physical units (voxel spacing in mm).

All descriptors are measured on the mask's own grid (any spacing, anisotropic allowed) and are
built to change little with the grid: the same lesion sampled at 0.7 mm or 2.5 mm gives close
values (``tests/test_shape.py`` checks it).

The surface
    The mask is smoothed with a Gaussian of :data:`SURFACE_SIGMA_VOXELS` voxels per axis (this
    removes the voxel staircase; a binary mask's staircase would add about 50 % to the area of any
    smooth surface at every resolution) and its 0.5 level set is triangulated by *marching
    tetrahedra* (each voxel cube cut into the 6 tetrahedra around its main diagonal; in each
    tetrahedron the linearly interpolated level set is a triangle or a planar quad). Positions are
    in mm. :func:`surface` returns the patch centres and areas; the area is their sum.
The volume
    ``V`` is the volume the traced surface encloses (divergence theorem on the patches), so that
    area and volume come from the same surface (``volume_mm3``, voxel count x voxel volume, is
    reported beside it).

Descriptors (:func:`shape_descriptors`, names as in :data:`SHAPE_FEATURES`):

* ``sphericity``: ``pi^(1/3) (6V)^(2/3) / A``, the area of the ball of equal volume over the
  surface area ``A`` (1 for a ball, lower for any other shape; IBSI QCFX).
* ``compactness``: ``V`` over the volume of the ball whose diameter is the lesion's maximum 3D
  diameter (the largest distance between two surface points): 1 for a ball (about 0.9 as measured:
  the maximum picks the surface's outermost bumps), low for a lesion with a long axis or a spicule
  reaching out. An extreme value, it is the descriptor most sensitive to the grid: on slices
  thicker than in-plane voxels the flat ends of a lesion lengthen its diagonals (a ball of 16 mm
  on 0.7 x 0.7 x 2.5 mm voxels: 0.70, against 0.93 on 0.7 mm voxels); compare it at matched
  slice thickness.
* ``elongation`` and ``flatness``: ``sqrt(l2 / l1)`` and ``sqrt(l3 / l1)`` of the eigenvalues
  ``l1 >= l2 >= l3`` of the covariance of the lesion's points (mm; each voxel counted as a uniform
  box, so its own ``s^2 / 12`` per axis is added; IBSI Q3CK, N17B): 1 for a ball, low for a
  cigar (elongation) or a disc (flatness).
* ``surface_roughness``: the area-weighted RMS of the radial distance (mm) between the surface
  and the lesion's moment ellipsoid (the solid ellipsoid of the same principal axes and
  covariance, scaled to the lesion's volume), measured along the ray from the centroid through
  each surface patch, divided by the equivalent radius ``(3V / 4pi)^(1/3)``. 0 for an ellipsoid
  of any proportions; lobulation, spicules and bumps raise it (dimensionless; the mm value is
  ``surface_roughness_mm``).
* ``convexity`` (solidity): ``V`` over the volume of the convex hull of the surface patches
  (at most 1; 1 for a convex lesion, low for a lobulated or spiculated one).

Example (the ``1.0`` of a ball is exact up to the estimator's few-percent error):
    >>> ball = ellipsoid_mask((8.0, 8.0, 8.0), (1.0, 1.0, 1.0))
    >>> d = shape_descriptors(ball, (1.0, 1.0, 1.0))
    >>> [round(d[k], 1) for k in ("sphericity", "elongation", "flatness", "convexity")]
    [1.0, 1.0, 1.0, 1.0]
    >>> d["compactness"] > 0.85, d["surface_roughness"] < 0.03
    (True, True)
    >>> cigar = shape_descriptors(ellipsoid_mask((4.0, 4.0, 16.0), (0.7, 0.7, 1.25)), (0.7, 0.7, 1.25))
    >>> abs(cigar["elongation"] - 0.25) < 0.02, abs(cigar["flatness"] - 0.25) < 0.02, cigar["sphericity"] < 0.8
    (True, True, True)
    >>> cube = np.ones((20, 20, 20), bool)  # corners and flat faces: less round than a ball
    >>> c = shape_descriptors(cube, (1.0, 1.0, 1.0))
    >>> 0.75 < c["sphericity"] < 0.9, round(c["elongation"], 2), c["convexity"] > 0.95
    (True, 1.0, True)
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError

__all__ = [
    "SHAPE_DEFINITIONS",
    "SHAPE_FEATURES",
    "SURFACE_SIGMA_VOXELS",
    "ellipsoid_mask",
    "principal_ratios",
    "relative_solidity",
    "shape_descriptors",
    "solidity",
    "sphere_mask",
    "surface",
]

SURFACE_SIGMA_VOXELS = 0.75  # Gaussian smoothing of the mask (voxels, per axis) before its surface is traced

SHAPE_DEFINITIONS: dict[str, str] = {
    "sphericity": "area of the ball of equal volume / surface area (1 = ball; IBSI QCFX)",
    "compactness": "volume / volume of the ball with the maximum 3D diameter (1 = ball)",
    "elongation": "sqrt(second / largest principal variance), mm, voxels as boxes (IBSI Q3CK)",
    "flatness": "sqrt(smallest / largest principal variance), mm, voxels as boxes (IBSI N17B)",
    "surface_roughness": "area-weighted RMS radial distance of the surface from the volume-matched "
                         "moment ellipsoid / equivalent radius",
    "convexity": "volume / convex-hull volume of the surface (solidity; 1 = convex)",
}
SHAPE_FEATURES: tuple[str, ...] = tuple(SHAPE_DEFINITIONS)

# Kuhn triangulation of the unit cube: corner k is (x, y, z) = (k & 1, k >> 1 & 1, k >> 2 & 1); every
# tetrahedron holds the main diagonal 0-7 and two neighbours of the cycle 1-3-2-6-4-5.
_TETRA = ((0, 7, 1, 3), (0, 7, 3, 2), (0, 7, 2, 6), (0, 7, 6, 4), (0, 7, 4, 5), (0, 7, 5, 1))
_CORNER = np.array([[k & 1, (k >> 1) & 1, (k >> 2) & 1] for k in range(8)])  # offsets along axes 0, 1, 2


def _spacing(spacing) -> np.ndarray:
    sp = np.broadcast_to(np.asarray(spacing, np.float64), (3,)).copy()
    if not np.all(np.isfinite(sp)) or np.any(sp <= 0):
        raise ValueError(f"spacing must be 3 positive numbers in mm, got {spacing!r}")
    return sp


def ellipsoid_mask(semi_axes_mm, spacing) -> np.ndarray:
    """A solid ellipsoid of semi-axes ``semi_axes_mm`` (along array axes 0, 1, 2) rasterised at voxel
    centres on a grid of ``spacing`` mm, centred, with one empty voxel around it."""
    sp = _spacing(spacing)
    half = [int(math.ceil(a / s)) + 1 for a, s in zip(semi_axes_mm, sp)]
    g = np.ogrid[tuple(slice(-h, h + 1) for h in half)]
    return sum(((gi * s) / a) ** 2 for gi, s, a in zip(g, sp, semi_axes_mm)) <= 1.0


def sphere_mask(diameter_mm: float, spacing) -> np.ndarray:
    """A ball of ``diameter_mm`` rasterised (voxel centres) on a grid of ``spacing``."""
    r = diameter_mm / 2.0
    half = [int(math.ceil(r / s)) + 1 for s in spacing]
    g = np.ogrid[tuple(slice(-h, h + 1) for h in half)]
    return sum((gi * s) ** 2 for gi, s in zip(g, spacing)) <= r * r


def solidity(mask: np.ndarray, spacing) -> float:
    """Voxel volume over the volume of the convex hull of the voxels' corners (a staircase measure:
    a ball of few voxels scores below 1; :func:`relative_solidity` corrects for that)."""
    idx = np.argwhere(mask).astype(np.float64)
    if len(idx) < 2:
        return 1.0
    corners = (idx[:, None, :] + np.array([[a, b, c] for a in (-.5, .5) for b in (-.5, .5) for c in (-.5, .5)]))
    pts = corners.reshape(-1, 3) * np.asarray(spacing, np.float64)
    try:
        hull = ConvexHull(np.unique(pts, axis=0))
    except QhullError:
        return 1.0
    vol = float(mask.sum()) * float(np.prod(spacing))
    return float(min(1.0, vol / hull.volume)) if hull.volume > 0 else 1.0


def relative_solidity(mask: np.ndarray, spacing, volume_mm3: float) -> float:
    """Solidity over that of a ball of the same volume on the same grid (1 = as convex as a ball),
    so that voxelisation does not make small lesions look lobulated."""
    ref = solidity(sphere_mask((6.0 * volume_mm3 / math.pi) ** (1.0 / 3.0), spacing), spacing)
    return float(min(1.0, solidity(mask, spacing) / ref)) if ref > 0 else 1.0


def _moments(mask: np.ndarray, sp: np.ndarray, voxel_extent: bool):
    pts = np.argwhere(mask) * sp
    centre = pts.mean(axis=0)
    cov = np.cov(pts.T, bias=True) if len(pts) > 1 else np.zeros((3, 3))
    if voxel_extent:
        cov = cov + np.diag(sp ** 2 / 12.0)  # each voxel a uniform box, not a point
    ev, vec = np.linalg.eigh(cov)
    order = np.argsort(ev)[::-1]
    return centre, np.maximum(ev[order], 1e-12), vec[:, order]


def principal_ratios(mask: np.ndarray, spacing, voxel_extent: bool = True) -> tuple[float, float]:
    """``(sqrt(l2 / l1), sqrt(l3 / l1))`` of the covariance eigenvalues ``l1 >= l2 >= l3`` (mm^2) of
    the lesion's points: elongation and flatness. With ``voxel_extent`` each voxel is a uniform box
    (its ``s^2 / 12`` per axis added), so a lesion one slice thick is not a flat disc of zero width;
    without it, voxel centres (the profile measurement ``axis_ratio_mid`` / ``axis_ratio_min``).
    Fewer than 4 voxels: ``(1.0, 1.0)``."""
    sp = _spacing(spacing)
    if int(np.count_nonzero(mask)) < 4:
        return 1.0, 1.0
    _, ev, _ = _moments(np.asarray(mask, bool), sp, voxel_extent)
    ev = np.maximum(ev, 1e-6)
    return float(math.sqrt(ev[1] / ev[0])), float(math.sqrt(ev[2] / ev[0]))


def surface(mask: np.ndarray, spacing, sigma_voxels: float = SURFACE_SIGMA_VOXELS
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The smoothed surface of ``mask``: ``(centres, areas, normals)``, one row per surface patch (a
    triangle or planar quad of the 0.5 level set of the mask smoothed by ``sigma_voxels``), centres
    in mm in array coordinates (voxel ``i`` at ``i * spacing``), areas in mm^2, outward unit
    normals (so ``sum(centres . normals * areas) / 3`` is the enclosed volume)."""
    sp = _spacing(spacing)
    m = np.asarray(mask, bool)
    if not m.any():
        return np.zeros((0, 3)), np.zeros(0), np.zeros((0, 3))
    pad = int(math.ceil(3 * sigma_voxels)) + 2
    sl = ndimage.find_objects(m.astype(np.int8))[0]
    m = np.pad(m[sl], pad)
    offset = np.array([s.start - pad for s in sl], np.float64)
    f = ndimage.gaussian_filter(m.astype(np.float64), sigma_voxels) if sigma_voxels > 0 else m.astype(np.float64)
    inside = f > 0.5
    # cubes with corners on both sides of the level
    n0, n1, n2 = (s - 1 for s in f.shape)
    corner_in = [inside[dx:dx + n0, dy:dy + n1, dz:dz + n2] for dx, dy, dz in _CORNER]
    n_in = sum(c.astype(np.int8) for c in corner_in)
    cubes = np.argwhere((n_in > 0) & (n_in < 8))
    if not len(cubes):
        return np.zeros((0, 3)), np.zeros(0), np.zeros((0, 3))
    pos = cubes[:, None, :] + _CORNER[None, :, :]                     # (n, 8, 3) voxel coordinates
    val = f[pos[..., 0], pos[..., 1], pos[..., 2]]                   # (n, 8)
    centres, areas, normals = [], [], []

    def patch(centre, cross, outward):
        norm = np.linalg.norm(cross, axis=1)
        unit = cross / np.maximum(norm, 1e-300)[:, None]
        unit *= np.where(np.sum(unit * outward, axis=1) < 0, -1.0, 1.0)[:, None]
        centres.append(centre)
        areas.append(0.5 * norm)
        normals.append(unit)

    for tet in _TETRA:
        p = (pos[:, tet, :] + offset) * sp                            # (n, 4, 3) mm
        v = val[:, tet]
        ins = v > 0.5
        k = ins.sum(axis=1)
        order = np.argsort(~ins, axis=1, kind="stable")               # inside corners first
        p = np.take_along_axis(p, order[..., None], axis=1)
        v = np.take_along_axis(v, order, axis=1)

        def cut(i, j, p=p, v=v, rows=None):
            pi, pj, vi, vj = p[rows, i], p[rows, j], v[rows, i], v[rows, j]
            t = ((0.5 - vi) / (vj - vi))[:, None]
            return pi + t * (pj - pi)

        for lone, others in ((1, (0, (1, 2, 3))), (3, (3, (0, 1, 2)))):
            rows = np.nonzero(k == lone)[0]
            if not len(rows):
                continue
            a, (b, c, d) = others
            q = [cut(a, o, rows=rows) for o in (b, c, d)]
            away = (p[rows, b] + p[rows, c] + p[rows, d]) / 3.0 - p[rows, a]  # from the lone corner
            patch((q[0] + q[1] + q[2]) / 3.0, np.cross(q[1] - q[0], q[2] - q[0]), away if lone == 1 else -away)
        rows = np.nonzero(k == 2)[0]
        if len(rows):
            # inside a, b (0, 1); outside c, d (2, 3): the quad ac, ad, bd, bc in cyclic order
            ac, ad, bd, bc = cut(0, 2, rows=rows), cut(0, 3, rows=rows), cut(1, 3, rows=rows), cut(1, 2, rows=rows)
            outward = (p[rows, 2] + p[rows, 3] - p[rows, 0] - p[rows, 1]) / 2.0
            patch((ac + ad + bd + bc) / 4.0, np.cross(bd - ac, bc - ad), outward)
    return np.concatenate(centres), np.concatenate(areas), np.concatenate(normals)


def _max_diameter(points: np.ndarray) -> float:
    if len(points) < 2:
        return 0.0
    try:
        points = points[ConvexHull(points).vertices]
    except QhullError:
        pass
    best = 0.0
    for start in range(0, len(points), 512):  # pairwise distances in blocks
        d = np.linalg.norm(points[start:start + 512, None, :] - points[None, :, :], axis=-1)
        best = max(best, float(d.max()))
    return best


def shape_descriptors(mask: np.ndarray, spacing) -> dict[str, float]:
    """The :data:`SHAPE_FEATURES` of one lesion mask on a grid of ``spacing`` mm (see the module
    doc), plus ``volume_mm3``, ``surface_mm2``, ``max_diameter_mm`` and ``surface_roughness_mm``.

    A mask too small to have a surface (no surface patch, or fewer than 4 voxels) gets the values
    of a ball (1, and roughness 0).
    """
    sp = _spacing(spacing)
    m = np.asarray(mask, bool)
    if m.ndim != 3:
        raise ValueError(f"mask must be 3D, got shape {m.shape}")
    n = int(m.sum())
    volume = n * float(np.prod(sp))
    r_eq = (3.0 * volume / (4.0 * math.pi)) ** (1.0 / 3.0)
    out = {"volume_mm3": volume, "surface_volume_mm3": volume, "surface_mm2": 0.0, "max_diameter_mm": 2.0 * r_eq,
           "sphericity": 1.0, "compactness": 1.0, "elongation": 1.0, "flatness": 1.0,
           "surface_roughness": 0.0, "surface_roughness_mm": 0.0, "convexity": 1.0}
    if n < 4:
        return out
    centres, areas, normals = surface(m, sp)
    area = float(areas.sum())
    enclosed = float(np.sum(np.sum(centres * normals, axis=1) * areas) / 3.0)
    if area <= 0 or enclosed <= 0:
        return out
    centre, ev, vec = _moments(m, sp, voxel_extent=True)
    r_s = (3.0 * enclosed / (4.0 * math.pi)) ** (1.0 / 3.0)
    out["surface_mm2"] = area
    out["surface_volume_mm3"] = enclosed
    out["sphericity"] = float(math.pi ** (1.0 / 3.0) * (6.0 * enclosed) ** (2.0 / 3.0) / area)
    dmax = max(_max_diameter(centres), 1e-9)
    out["max_diameter_mm"] = dmax
    out["compactness"] = float(min(1.0, enclosed / (math.pi * dmax ** 3 / 6.0)))
    out["elongation"] = float(math.sqrt(ev[1] / ev[0]))
    out["flatness"] = float(math.sqrt(ev[2] / ev[0]))
    # moment ellipsoid: a solid ellipsoid of semi-axis a has variance a^2 / 5 along it
    semi = np.sqrt(5.0 * ev)
    semi *= (enclosed / (4.0 / 3.0 * math.pi * float(np.prod(semi)))) ** (1.0 / 3.0)
    rel = (centres - centre) @ vec                                    # principal coordinates
    r = np.linalg.norm(rel, axis=1)
    u = rel / np.maximum(r, 1e-12)[:, None]
    r_ell = 1.0 / np.sqrt(np.sum((u / semi) ** 2, axis=1))
    rough = float(math.sqrt(np.sum(areas * (r - r_ell) ** 2) / area))
    out["surface_roughness_mm"] = rough
    out["surface_roughness"] = rough / r_s
    try:
        hull = ConvexHull(centres).volume
    except QhullError:
        hull = 0.0
    out["convexity"] = float(min(1.0, enclosed / hull)) if hull > 0 else 1.0
    return out
