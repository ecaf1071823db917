"""Measurements of one lesion mask that synthesis, fitting and the realism scores share.

* :func:`edge_sharpness`: mean gradient magnitude (HU/mm) on the lesion's boundary band;
* :func:`lesion_core`: the voxels a lesion's contrast is measured on;
* :func:`solidity` and :func:`relative_solidity`: volume over convex-hull volume, and the same
  relative to a ball of equal volume on the same grid (so voxelisation does not make small
  lesions look lobulated).

Example:
    >>> import numpy as np
    >>> ball = sphere_mask(12.0, (1.0, 1.0, 1.0))
    >>> round(relative_solidity(ball, (1.0, 1.0, 1.0), float(ball.sum())), 3)
    1.0
    >>> img = np.where(ball, 100.0, 0.0)
    >>> round(edge_sharpness(img, ball, None, (1.0, 1.0, 1.0)), 1)  # a step of 100 HU, central differences
    63.3
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError

CORE_MM = 1.5  # a lesion's core: voxels at least this far inside its label


def lesion_core(mask: np.ndarray, spacing, salience: np.ndarray) -> np.ndarray:
    """The lesion's core: voxels at least :data:`CORE_MM` inside ``mask``; for a lesion thinner than
    that (fewer than 4 such voxels), the quarter of its voxels highest in ``salience`` (e.g. the
    distance of their HU from the host's, or a rendered occupancy)."""
    inside = ndimage.distance_transform_edt(mask, sampling=spacing)
    core = mask & (inside >= CORE_MM)
    if core.sum() < 4 and mask.any():
        core = mask & (salience >= np.percentile(salience[mask], 75))
    return core


def edge_sharpness(img: np.ndarray, mask: np.ndarray, other: np.ndarray | None, spacing) -> float:
    """Mean gradient magnitude (HU/mm, central differences) on the band of voxels with a 6-neighbour
    on the other side of the lesion edge (both sides), ``other`` tumours excluded."""
    band = ndimage.binary_dilation(mask) & ~ndimage.binary_erosion(mask, border_value=1)
    if other is not None:
        band &= ~other
    idx = np.nonzero(band)
    if not idx[0].size:
        return 0.0
    g2 = np.zeros(idx[0].size)
    for ax in range(3):
        n = img.shape[ax]
        if n < 2:
            continue
        lo = np.maximum(idx[ax] - 1, 0)
        hi = np.minimum(idx[ax] + 1, n - 1)
        lo_idx = list(idx)
        hi_idx = list(idx)
        lo_idx[ax], hi_idx[ax] = lo, hi
        g = (img[tuple(hi_idx)] - img[tuple(lo_idx)]) / ((hi - lo) * float(spacing[ax]))
        g2 += g * g
    return float(np.mean(np.sqrt(g2)))


def sphere_mask(diameter_mm: float, spacing) -> np.ndarray:
    """A ball of ``diameter_mm`` rasterised (voxel centres) on a grid of ``spacing``."""
    r = diameter_mm / 2.0
    half = [int(math.ceil(r / s)) + 1 for s in spacing]
    g = np.ogrid[tuple(slice(-h, h + 1) for h in half)]
    return sum((gi * s) ** 2 for gi, s in zip(g, spacing)) <= r * r


def solidity(mask: np.ndarray, spacing) -> float:
    """Voxel volume over the volume of the convex hull of the voxels' corners."""
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
