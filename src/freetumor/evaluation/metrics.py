"""Overlap and surface metrics for one case: Dice, normalised surface Dice (NSD), HD95.

All functions take boolean (or 0/1) numpy arrays of one shape and a voxel ``spacing`` in
millimetres, one value per array axis (2D or 3D). Every metric is computed on the bounding
box of ``pred | gt`` plus a one-voxel margin, so a 512 x 512 x N CT with a small organ costs
about as much as the organ's box.

Two NSD definitions are implemented (``method=``), because published numbers use both:

``"surface-distance"`` (default; DeepMind's ``surface_distance`` package, Nikolov et al. 2021)
    The surface lives on the grid of voxel *corners*. Every corner whose 2x2x2 neighbourhood
    is neither all inside nor all outside is a surface element ("surfel"), weighted by the area
    of the marching-cubes surface inside that neighbourhood (in mm^2, so anisotropic spacing is
    accounted for). NSD = (area of gt surfels within ``tolerance_mm`` of the predicted surface
    + area of predicted surfels within ``tolerance_mm`` of the gt surface) / total area.

``"monai"`` (``monai.metrics.compute_surface_dice`` with ``use_subvoxels=False``)
    The surface is the set of *boundary voxels* (foreground voxels with a 6-neighbour outside,
    ``mask ^ binary_erosion(mask)``), every one counted once regardless of its orientation or
    the spacing, and distances are measured between voxel centres (in float32, as MONAI does).
    NSD = (number of boundary voxels within the tolerance, both ways) / number of boundary voxels.

The two agree closely for smooth shapes and tolerances of a few voxels, but are not equal:
the corner grid sits half a voxel off the voxel-centre grid, a staircase surface has more
boundary voxels than area where it runs diagonally, and a thick through-plane voxel counts
once in MONAI but with its (larger) face area in surface-distance. At tolerances below one
voxel the two can differ by several points. Both return 1.0 when both masks are empty and 0.0
when exactly one is (MONAI itself returns nan for two empty masks; surface-distance returns nan
or, under NumPy 2, fails).

Example:
    >>> import numpy as np
    >>> gt = np.zeros((12, 12, 12), bool); gt[3:9, 3:9, 3:9] = True
    >>> pred = np.roll(gt, 1, axis=0)
    >>> round(dice(pred, gt), 4)
    0.8333
    >>> nsd(pred, gt, (1.0, 1.0, 1.0), tolerance_mm=1.0)
    1.0
    >>> round(nsd(pred, gt, (1.0, 1.0, 1.0), tolerance_mm=0.5), 4)
    0.6652
    >>> round(nsd(pred, gt, (1.0, 1.0, 1.0), tolerance_mm=0.5, method="monai"), 4)
    0.6579
    >>> hd95(pred, gt, (1.0, 1.0, 1.0))
    1.0
    >>> nsd(pred, np.zeros_like(gt), (1, 1, 1)), nsd(gt[:0], gt[:0], (1, 1, 1))
    (0.0, 1.0)
"""

from __future__ import annotations

import functools
import itertools
import math
from typing import Iterable, Sequence

import numpy as np
from scipy import ndimage

from ..errors import ConfigError
from ..grids import bounding_box
from .masks import mask_pair, mask_spacing

__all__ = ["dice", "nsd", "hd95", "case_metrics", "surface_distances", "NSD_METHODS"]

NSD_METHODS = ("surface-distance", "monai")


# --------------------------------------------------------------------------- input checks
def _tolerance(tolerance_mm: float) -> float:
    tol = float(tolerance_mm)
    if not (math.isfinite(tol) and tol >= 0):
        raise ConfigError(f"tolerance_mm must be a finite number >= 0, got {tolerance_mm!r}")
    return tol


def _crop(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Both masks cut to the bounding box of ``pred | gt``; ``None`` when both are empty."""
    box = bounding_box(pred | gt)
    return None if box is None else (pred[box], gt[box])


# --------------------------------------------------------------------------- Dice
def dice(pred: object, gt: object, empty: float = 1.0) -> float:
    """Volumetric Dice ``2|P & G| / (|P| + |G|)`` of two masks; ``empty`` when both are empty.

    >>> dice([1, 1, 0, 0], [0, 1, 1, 0])
    0.5
    >>> dice([0, 0], [0, 0]), dice([0, 0], [0, 0], empty=float("nan"))
    (1.0, nan)
    """
    p, g = mask_pair(pred, gt)
    total = int(np.count_nonzero(p)) + int(np.count_nonzero(g))
    if total == 0:
        return float(empty)
    return 2.0 * int(np.count_nonzero(p & g)) / total


# --------------------------------------------------------------------------- surfel areas
# The surface-distance definition weights each boundary corner of the voxel-corner grid by the
# area of the marching-cubes surface inside its 2x2x2 neighbourhood (the length of the
# marching-squares contour in 2D). The pieces are derived here from first principles: the
# surface passes through the midpoints of the cube edges whose two corners differ; on a face
# with two diagonal inside corners the minority class (inside corners when at most half of the
# cube is inside, else outside corners) is cut off corner by corner, so a code and its
# complement get the same surface; the closed polygons are split into triangles (pentagons:
# cut off the largest ear, the rest is a planar quadrilateral; hexagons: three alternate ears
# and the central triangle). Each triangle is stored as its area vector (half the cross
# product), which scales with the spacing as (s1*s2, s0*s2, s0*s1). This reproduces the
# ``surface_distance`` lookup tables for every one of the 256 (16 in 2D) neighbourhood codes.


def _corner_bit(corner: tuple[int, ...]) -> int:
    """Bit of a neighbourhood corner in the code (the first corner is the highest bit)."""
    index = 0
    for c in corner:
        index = 2 * index + c
    return (1 << len(corner)) - 1 - index


def _cube_edges(ndim: int) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    corners = list(itertools.product((0, 1), repeat=ndim))
    return [(a, b) for a in corners for b in corners if a < b and sum(x != y for x, y in zip(a, b)) == 1]


def _midpoint(edge: tuple[tuple[int, ...], tuple[int, ...]]) -> np.ndarray:
    return (np.asarray(edge[0], float) + np.asarray(edge[1], float)) / 2.0


def _face_segments(code: int, corners_on_face: list, edges_on_face: list, separate: int) -> list[tuple]:
    """Edges (pairs) joined by the surface on one square face (or the 2D square itself)."""
    inside = {c: (code >> _corner_bit(c)) & 1 for c in corners_on_face}
    cut = [e for e in edges_on_face if inside[e[0]] != inside[e[1]]]
    if len(cut) == 2:
        return [tuple(cut)]
    if len(cut) == 4:  # diagonal corners: cut off each corner of the separated class
        return [tuple(e for e in cut if c in e) for c in corners_on_face if inside[c] == separate]
    return []


def _polygons_3d(code: int) -> list[list[np.ndarray]]:
    corners = list(itertools.product((0, 1), repeat=3))
    edges = _cube_edges(3)
    separate = 1 if bin(code).count("1") <= 4 else 0
    segments: list[tuple] = []
    for axis in range(3):
        for value in (0, 1):
            fc = [c for c in corners if c[axis] == value]
            fe = [e for e in edges if e[0][axis] == value and e[1][axis] == value]
            segments += _face_segments(code, fc, fe, separate)
    polygons = []
    while segments:
        first = segments.pop(0)
        loop = [first[0], first[1]]
        while True:
            nxt = next((s for s in segments if loop[-1] in s), None)
            if nxt is None:
                break
            segments.remove(nxt)
            other = nxt[1] if nxt[0] == loop[-1] else nxt[0]
            if other == loop[0]:
                break
            loop.append(other)
        polygons.append([_midpoint(e) for e in loop])
    return polygons


def _triangle(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    return np.cross(b - a, c - a) / 2.0


def _triangulate(poly: list[np.ndarray]) -> list[np.ndarray]:
    n = len(poly)
    if n == 6:  # three alternate ears plus the central triangle
        tris = [(0, 1, 2), (2, 3, 4), (4, 5, 0), (0, 2, 4)]
        return [_triangle(*(poly[i] for i in t)) for t in tris]
    out = []
    if n == 5:  # cut off the largest ear; the remaining quadrilateral is planar
        areas = [np.linalg.norm(_triangle(poly[i - 1], poly[i], poly[(i + 1) % n])) for i in range(n)]
        i = int(np.argmax(areas))
        out.append(_triangle(poly[i - 1], poly[i], poly[(i + 1) % n]))
        poly = poly[i + 1:] + poly[:i]
    return out + [_triangle(poly[0], poly[j], poly[j + 1]) for j in range(1, len(poly) - 1)]


@functools.lru_cache(maxsize=None)
def _unit_elements(ndim: int) -> tuple[np.ndarray, ...]:
    """Per neighbourhood code: area vectors (3D) or segment vectors (2D) on the unit grid."""
    if ndim == 3:
        return tuple(
            np.array([v for poly in _polygons_3d(code) for v in _triangulate(poly)] or np.zeros((0, 3))).reshape(-1, 3)
            for code in range(256)
        )
    if ndim == 2:
        corners = list(itertools.product((0, 1), repeat=2))
        edges = _cube_edges(2)
        out = []
        for code in range(16):
            separate = 1 if bin(code).count("1") <= 2 else 0
            segs = _face_segments(code, corners, edges, separate)
            out.append(np.array([_midpoint(b) - _midpoint(a) for a, b in segs]).reshape(-1, 2))
        return tuple(out)
    raise ConfigError(f"surface metrics need 2D or 3D masks, got {ndim}D")


@functools.lru_cache(maxsize=64)
def _surfel_area_table(spacing: tuple[float, ...]) -> np.ndarray:
    """Area (mm^2, 3D) or length (mm, 2D) of the surface for each neighbourhood code."""
    ndim = len(spacing)
    if ndim == 3:
        s0, s1, s2 = spacing
        scale = np.array([s1 * s2, s0 * s2, s0 * s1])
    else:
        scale = np.array(spacing)
    return np.array([float(np.sum(np.linalg.norm(v * scale, axis=1))) for v in _unit_elements(ndim)])


def _neighbour_codes(mask: np.ndarray) -> np.ndarray:
    """Code of every corner of the voxel grid (shape + 1): one bit per touching voxel."""
    padded = np.pad(mask, 1)
    shape = tuple(n + 1 for n in mask.shape)
    codes = np.zeros(shape, np.uint8)
    for corner in itertools.product((0, 1), repeat=mask.ndim):
        sl = tuple(slice(c, c + n) for c, n in zip(corner, shape))
        codes |= padded[sl].view(np.uint8) << np.uint8(_corner_bit(corner))
    return codes


def surface_distances(pred: object, gt: object, spacing: Sequence[float]) -> dict[str, np.ndarray]:
    """Surfel distances and areas in the surface-distance definition (unsorted).

    Returns a dict with ``distances_gt_to_pred``, ``distances_pred_to_gt`` (mm, float64),
    ``surfel_areas_gt`` and ``surfel_areas_pred`` (mm^2; mm in 2D), like
    ``surface_distance.compute_surface_distances(gt, pred, spacing)`` but not sorted. The
    distances of one mask's surfels are ``inf`` when the other mask is empty.

    >>> m = np.zeros((4, 4, 4), bool); m[1:3, 1:3, 1:3] = True
    >>> d = surface_distances(m, m, (1.0, 1.0, 2.0))
    >>> round(float(d["surfel_areas_gt"].sum()), 4), float(d["distances_gt_to_pred"].max())
    (27.6011, 0.0)
    """
    p, g = mask_pair(pred, gt)
    sp = mask_spacing(spacing, p.ndim)
    _unit_elements(p.ndim)  # validates the dimension
    cropped = _crop(p, g)
    empty = np.zeros(0)
    if cropped is None:
        return {"distances_gt_to_pred": empty, "distances_pred_to_gt": empty,
                "surfel_areas_gt": empty, "surfel_areas_pred": empty}
    table = _surfel_area_table(sp)
    full = (1 << (1 << p.ndim)) - 1
    out: dict[str, np.ndarray] = {}
    borders, codes = {}, {}
    for name, m in (("pred", cropped[0]), ("gt", cropped[1])):
        codes[name] = _neighbour_codes(m)
        borders[name] = (codes[name] != 0) & (codes[name] != full)
    for src, dst in (("gt", "pred"), ("pred", "gt")):
        if borders[dst].any():
            dist = ndimage.distance_transform_edt(~borders[dst], sampling=sp)[borders[src]]
        else:
            dist = np.full(int(np.count_nonzero(borders[src])), np.inf)
        out[f"distances_{src}_to_{dst}"] = dist
        out[f"surfel_areas_{src}"] = table[codes[src][borders[src]]]
    return out


# --------------------------------------------------------------------------- NSD
def _nsd_surface_distance(p: np.ndarray, g: np.ndarray, sp: tuple[float, ...], tol: float) -> float:
    d = surface_distances(p, g, sp)
    area_g, area_p = d["surfel_areas_gt"], d["surfel_areas_pred"]
    good = area_g[d["distances_gt_to_pred"] <= tol].sum() + area_p[d["distances_pred_to_gt"] <= tol].sum()
    return float(good / (area_g.sum() + area_p.sum()))


def _nsd_monai(p: np.ndarray, g: np.ndarray, sp: tuple[float, ...], tol: float) -> float:
    p, g = (np.pad(m, 1) for m in _crop(p, g))  # type: ignore[misc]
    edge_p = p & ~ndimage.binary_erosion(p)
    edge_g = g & ~ndimage.binary_erosion(g)
    tol32 = np.float32(tol)
    d_pg = ndimage.distance_transform_edt(~edge_g, sampling=sp)[edge_p].astype(np.float32)
    d_gp = ndimage.distance_transform_edt(~edge_p, sampling=sp)[edge_g].astype(np.float32)
    good = int(np.count_nonzero(d_pg <= tol32)) + int(np.count_nonzero(d_gp <= tol32))
    return good / (d_pg.size + d_gp.size)


def nsd(
    pred: object,
    gt: object,
    spacing: Sequence[float],
    tolerance_mm: float = 2.0,
    method: str = "surface-distance",
) -> float:
    """Normalised surface Dice of two masks at ``tolerance_mm`` (see the module docstring).

    Args:
        pred, gt: masks of one shape (2D or 3D), bool or 0/1.
        spacing: voxel size in mm per axis.
        tolerance_mm: surface points closer than or at this distance count as correct.
        method: ``"surface-distance"`` (surfels weighted by area on the voxel-corner grid,
            equal to DeepMind's ``compute_surface_dice_at_tolerance``) or ``"monai"``
            (boundary voxels counted one by one, equal to ``monai.metrics.compute_surface_dice``
            with ``use_subvoxels=False``).

    Returns:
        NSD in [0, 1]; 1.0 when both masks are empty, 0.0 when exactly one is.

    >>> m = np.zeros((8, 8), bool); m[2:6, 2:6] = True
    >>> nsd(m, m, (0.5, 0.5), tolerance_mm=0.0)
    1.0
    """
    if method not in NSD_METHODS:
        raise ConfigError(f"unknown NSD method {method!r}; choose one of {', '.join(NSD_METHODS)}")
    p, g = mask_pair(pred, gt)
    sp = mask_spacing(spacing, p.ndim)
    tol = _tolerance(tolerance_mm)
    if p.ndim not in (2, 3):
        raise ConfigError(f"surface metrics need 2D or 3D masks, got shape {p.shape}")
    has_p, has_g = bool(p.any()), bool(g.any())
    if not (has_p or has_g):
        return 1.0
    if not (has_p and has_g):
        return 0.0
    if method == "monai":
        return _nsd_monai(p, g, sp, tol)
    return _nsd_surface_distance(p, g, sp, tol)


def _percentile_distance(dist: np.ndarray, areas: np.ndarray, percent: float) -> float:
    order = np.lexsort((areas, dist))
    dist, areas = dist[order], areas[order]
    cum = np.cumsum(areas) / np.sum(areas)
    idx = int(np.searchsorted(cum, percent / 100.0))
    return float(dist[min(idx, len(dist) - 1)])


def hd95(pred: object, gt: object, spacing: Sequence[float], percent: float = 95.0) -> float:
    """Robust (95th percentile) symmetric Hausdorff distance in mm, surface-distance definition.

    Equal to ``surface_distance.compute_robust_hausdorff(compute_surface_distances(gt, pred,
    spacing), percent)``: the area-weighted ``percent``-th percentile of the surfel distances,
    the larger of the two directions. ``nan`` when either mask is empty.

    >>> m = np.zeros((6, 6, 6), bool); m[1:4, 1:4, 1:4] = True
    >>> hd95(m, np.roll(m, 2, axis=2), (1.0, 1.0, 0.5))
    1.0
    """
    p, g = mask_pair(pred, gt)
    if not (p.any() and g.any()):
        return float("nan")
    d = surface_distances(p, g, spacing)
    return max(
        _percentile_distance(d["distances_gt_to_pred"], d["surfel_areas_gt"], percent),
        _percentile_distance(d["distances_pred_to_gt"], d["surfel_areas_pred"], percent),
    )


# --------------------------------------------------------------------------- one case
def _ids(ids: Iterable[int] | int | None, name: str) -> tuple[int, ...]:
    if ids is None:
        return ()
    if np.isscalar(ids):
        ids = (ids,)  # type: ignore[assignment]
    try:
        return tuple(int(i) for i in ids)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be label ids (integers), got {ids!r}") from None


def case_metrics(
    pred_labels: object,
    gt_labels: object,
    spacing: Sequence[float],
    organ_ids: Iterable[int] | int,
    tumour_ids: Iterable[int] | int,
    pred_organ_ids: Iterable[int] | int | None = None,
    pred_tumour_ids: Iterable[int] | int | None = None,
    tolerance_mm: float = 2.0,
    nsd_method: str = "surface-distance",
) -> dict:
    """Tumour and organ Dice / NSD of one labelled case, as reported in the FreeTumor paper.

    The organ mask is the organ ids together with the tumour ids (the organ including its
    tumour). ``tumour_dice`` and ``tumour_nsd`` are ``None`` when the ground truth has no
    tumour: such cases are left out of tumour averages (use detection metrics for them).

    Args:
        pred_labels, gt_labels: integer label maps of one shape.
        spacing: voxel size in mm.
        organ_ids, tumour_ids: label values of the organ and its tumour in ``gt_labels``.
        pred_organ_ids, pred_tumour_ids: the same in ``pred_labels`` (default: the gt ids).
        tolerance_mm: NSD tolerance.
        nsd_method: see :func:`nsd`.

    Returns:
        dict with ``tumour_dice``, ``tumour_nsd``, ``organ_dice``, ``organ_nsd``,
        ``gt_tumour_voxels``, ``pred_tumour_voxels``, ``tumour_volume_ml_gt``,
        ``tumour_volume_ml_pred``.

    >>> gt = np.zeros((10, 10, 10), np.uint8); gt[2:8, 2:8, 2:8] = 1; gt[4:6, 4:6, 4:6] = 2
    >>> m = case_metrics(gt, gt, (1, 1, 2), organ_ids=[1], tumour_ids=[2])
    >>> m["tumour_dice"], m["organ_nsd"], m["tumour_volume_ml_gt"]
    (1.0, 1.0, 0.016)
    >>> case_metrics(gt, np.where(gt == 2, 1, gt), (1, 1, 2), 1, 2)["tumour_dice"] is None
    True
    """
    pred = np.asarray(pred_labels)
    gt = np.asarray(gt_labels)
    if pred.shape != gt.shape:
        raise ConfigError(f"pred and gt label maps must have the same shape, got pred {pred.shape} and gt {gt.shape}")
    sp = mask_spacing(spacing, gt.ndim)
    organ, tumour = _ids(organ_ids, "organ_ids"), _ids(tumour_ids, "tumour_ids")
    if not organ and not tumour:
        raise ConfigError("case_metrics needs at least one organ or tumour label id")
    p_organ = organ if pred_organ_ids is None else _ids(pred_organ_ids, "pred_organ_ids")
    p_tumour = tumour if pred_tumour_ids is None else _ids(pred_tumour_ids, "pred_tumour_ids")

    gt_t = np.isin(gt, tumour) if tumour else np.zeros(gt.shape, bool)
    pr_t = np.isin(pred, p_tumour) if p_tumour else np.zeros(pred.shape, bool)
    gt_o = np.isin(gt, organ + tumour)
    pr_o = np.isin(pred, p_organ + p_tumour)
    n_gt, n_pred = int(np.count_nonzero(gt_t)), int(np.count_nonzero(pr_t))
    ml = float(np.prod(sp)) / 1000.0
    has_tumour = n_gt > 0
    return {
        "tumour_dice": dice(pr_t, gt_t) if has_tumour else None,
        "tumour_nsd": nsd(pr_t, gt_t, sp, tolerance_mm, nsd_method) if has_tumour else None,
        "organ_dice": dice(pr_o, gt_o),
        "organ_nsd": nsd(pr_o, gt_o, sp, tolerance_mm, nsd_method),
        "gt_tumour_voxels": n_gt,
        "pred_tumour_voxels": n_pred,
        "tumour_volume_ml_gt": n_gt * ml,
        "tumour_volume_ml_pred": n_pred * ml,
    }
