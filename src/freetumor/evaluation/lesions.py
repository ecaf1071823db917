"""Lesion-wise evaluation: connected lesions, their sizes, and detection of (early) tumours.

A lesion is a connected component of a tumour mask (26-neighbourhood by default). Its size is
the diameter of the sphere of equal volume, ``(6 V / pi) ** (1/3)``, which puts it in one of
:data:`DIAMETER_BINS`; tumours under :data:`EARLY_MM` (20 mm) are "early" tumours, as in the
FreeTumor paper's detection analysis. The largest axial extent (as in RECIST) is kept too.

Matching (:func:`match_lesions`) is by overlap: a ground-truth lesion is detected when some
predicted component covers at least ``min_overlap_voxels`` of it. A lesion hit by several
predicted components (split) is one true positive; a predicted component that touches several
lesions (merged) detects all of them; a predicted component that covers none is a false
positive. :func:`detection_summary` pools matches over scans into lesion sensitivity (overall,
per size bin and for early tumours), false positives per scan and patient-level sensitivity
and specificity, with 95% confidence intervals.

Example:
    >>> import numpy as np
    >>> gt = np.zeros((20, 20, 20), bool); gt[2:5, 2:5, 2:5] = True; gt[12:16, 12:16, 12:16] = True
    >>> pred = np.zeros_like(gt); pred[3:5, 3:5, 3:5] = True; pred[8:10, 1:3, 1:3] = True
    >>> m = match_lesions(pred, gt, (1.0, 1.0, 1.0))
    >>> m.tp, m.fn, m.fp, m.split, m.merged
    (1, 1, 1, 0, 0)
    >>> [(g["bin"], g["detected"]) for g in m.gt]
    [('<10 mm', True), ('<10 mm', False)]
    >>> s = detection_summary([m])
    >>> s["lesion_sensitivity"]["k"], s["lesion_sensitivity"]["n"], s["false_positives_per_scan"]["value"]
    (1, 2, 1.0)
"""

from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass, field
from typing import Sequence

import numpy as np
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError

from ..errors import ConfigError
from ..grids import bounding_box
from .masks import as_mask, mask_pair, mask_spacing
from .stats import poisson_rate_ci, wilson_ci

__all__ = [
    "DIAMETER_BINS",
    "EARLY_MM",
    "Lesion",
    "LesionMatch",
    "connected_lesions",
    "match_lesions",
    "patient_level",
    "detection_summary",
    "diameter_bin",
]

DIAMETER_BINS: tuple[tuple[str, float, float], ...] = (
    ("<10 mm", 0.0, 10.0),
    ("10-20 mm", 10.0, 20.0),
    ("20-50 mm", 20.0, 50.0),
    (">=50 mm", 50.0, math.inf),
)
"""Size classes by equivalent-sphere diameter: (label, lower bound inclusive, upper exclusive)."""

EARLY_MM = 20.0
"""Tumours with an equivalent diameter below this many mm are "early" tumours."""


def diameter_bin(diameter_mm: float) -> str:
    """Label of the :data:`DIAMETER_BINS` class of a diameter.

    >>> diameter_bin(9.99), diameter_bin(10.0), diameter_bin(50.0)
    ('<10 mm', '10-20 mm', '>=50 mm')
    """
    for label, lo, hi in DIAMETER_BINS:
        if lo <= diameter_mm < hi:
            return label
    raise ConfigError(f"diameter must be a number >= 0, got {diameter_mm!r}")


@dataclass
class Lesion:
    """One connected lesion.

    Attributes:
        index: its label in the labelled array returned with it (1, 2, ...).
        voxels: number of voxels.
        volume_mm3: volume in mm^3.
        diameter_mm: diameter of the sphere of the same volume, ``(6 V / pi) ** (1/3)``.
        max_axial_diameter_mm: largest in-plane extent over its axial slices, measured between
            voxel centres (so a lesion one voxel wide in-plane measures 0; add about one in-plane
            voxel for an edge-to-edge extent).
        centroid_voxel: centre of mass in voxel coordinates.
        bbox: bounding box as slices into the array.
        bin: :data:`DIAMETER_BINS` label of ``diameter_mm``.
    """

    index: int
    voxels: int
    volume_mm3: float
    diameter_mm: float
    max_axial_diameter_mm: float
    centroid_voxel: tuple[float, ...]
    bbox: tuple[slice, ...]
    bin: str

    @property
    def early(self) -> bool:
        """Whether it is an early tumour (equivalent diameter below :data:`EARLY_MM`)."""
        return self.diameter_mm < EARLY_MM

    def as_dict(self) -> dict:
        """Fields as plain values: ``bbox`` becomes ``[[start, stop], ...]`` (JSON-friendly)."""
        d = asdict(self)
        d["bbox"] = [[s.start, s.stop] for s in self.bbox]
        d["centroid_voxel"] = list(self.centroid_voxel)
        return d


def neighbourhood(ndim: int, connectivity: int) -> np.ndarray:
    """The structuring element of connected lesions (and FROC candidates): 3 = 26-neighbourhood in 3D."""
    if not (isinstance(connectivity, numbers.Integral) and 1 <= int(connectivity) <= ndim):
        raise ConfigError(f"connectivity must be 1..{ndim} for {ndim}D masks, got {connectivity!r}")
    return ndimage.generate_binary_structure(ndim, int(connectivity))


def _max_pairwise(points: np.ndarray) -> float:
    """Largest distance between 2D points (exact; convex hull first when there are many)."""
    if len(points) < 2:
        return 0.0
    if len(points) > 64:
        try:
            points = points[ConvexHull(points).vertices]
        except (QhullError, ValueError):  # collinear: the extremes along the line suffice
            centred = points - points.mean(axis=0)
            axis = np.linalg.svd(centred, full_matrices=False)[2][0]
            proj = centred @ axis
            points = points[[int(np.argmin(proj)), int(np.argmax(proj))]]
    best = 0.0
    for i in range(len(points) - 1):  # hulls are small; avoids an n x n matrix for big ones
        best = max(best, float(np.max(np.sum((points[i + 1:] - points[i]) ** 2, axis=1))))
    return math.sqrt(best)


def _max_axial_diameter(component: np.ndarray, spacing: Sequence[float], axial_axis: int) -> float:
    """Largest in-plane centre-to-centre extent over the slices across ``axial_axis``."""
    if component.ndim == 2:
        slices, in_plane = [component], list(spacing)
    else:
        moved = np.moveaxis(component, axial_axis, 0)
        slices = [s for s in moved if s.any()]
        in_plane = [s for a, s in enumerate(spacing) if a != axial_axis % component.ndim]
    scale = np.asarray(in_plane, float)
    best = 0.0
    for sl in slices:
        edge = sl & ~ndimage.binary_erosion(sl)  # the extremes lie on the boundary
        best = max(best, _max_pairwise(np.argwhere(edge) * scale))
    return best


def connected_lesions(
    mask: object,
    spacing: Sequence[float],
    connectivity: int = 3,
    min_voxels: int = 1,
    axial_axis: int = 2,
) -> tuple[np.ndarray, list[Lesion]]:
    """Label the connected lesions of a mask and measure them.

    Args:
        mask: 3D (or 2D) tumour mask, bool or 0/1.
        spacing: voxel size in mm per axis.
        connectivity: 3 = 26-neighbourhood (faces, edges and corners), 2 = 18, 1 = 6 (faces).
        min_voxels: components smaller than this are dropped (set to 0 in the labels).
        axial_axis: the array axis across axial slices (2 for RAS-like ``(x, y, z)`` arrays;
            ``Volume.axis_of("S")`` in general).

    Returns:
        ``(labels, lesions)``: an int32 array with 0 background and lesion ``i`` labelled
        ``lesions[i - 1].index == i``, and the :class:`Lesion` list in label order.

    >>> m = np.zeros((5, 5, 3), bool); m[0, 0, 0] = m[1, 1, 1] = True; m[3:5, 3:5, :] = True
    >>> labels, found = connected_lesions(m, (1.0, 1.0, 1.0))
    >>> [(x.index, x.voxels) for x in found]
    [(1, 2), (2, 12)]
    >>> [x.voxels for x in connected_lesions(m, (1, 1, 1), connectivity=1)[1]]
    [1, 1, 12]
    >>> round(found[1].max_axial_diameter_mm, 3), found[1].bbox[2]
    (1.414, slice(0, 3, None))
    """
    m = as_mask(mask)
    sp = mask_spacing(spacing, m.ndim)
    if m.ndim == 3 and not -3 <= int(axial_axis) < 3:
        raise ConfigError(f"axial_axis must be 0, 1 or 2, got {axial_axis!r}")
    structure = neighbourhood(m.ndim, connectivity)
    labels = np.zeros(m.shape, np.int32)
    box = bounding_box(m)
    if box is None:
        return labels, []
    sub, n = ndimage.label(m[box], structure=structure)  # label only the occupied box: fast on big CTs
    sub = sub.astype(np.int32, copy=False)
    counts = np.bincount(sub.ravel(), minlength=n + 1)
    keep = np.flatnonzero(counts >= max(int(min_voxels), 1))
    keep = keep[keep > 0]
    if len(keep) < n:  # drop small components and renumber 1..k
        remap = np.zeros(n + 1, np.int32)
        remap[keep] = np.arange(1, len(keep) + 1, dtype=np.int32)
        sub = remap[sub]
        counts = np.concatenate([[0], counts[keep]])
        n = len(keep)
    labels[box] = sub
    voxel_mm3 = float(np.prod(sp))
    offset = [s.start for s in box]
    lesions = []
    for i, local in enumerate(ndimage.find_objects(sub, max_label=n), start=1):
        comp = sub[local] == i
        bbox = tuple(slice(s.start + o, s.stop + o) for s, o in zip(local, offset))
        idx = np.argwhere(comp)
        centroid = tuple(float(c + s.start) for c, s in zip(idx.mean(axis=0), bbox))
        volume = int(counts[i]) * voxel_mm3
        diameter = (6.0 * volume / math.pi) ** (1.0 / 3.0)
        lesions.append(
            Lesion(
                index=i,
                voxels=int(counts[i]),
                volume_mm3=volume,
                diameter_mm=diameter,
                max_axial_diameter_mm=_max_axial_diameter(comp, sp, int(axial_axis)),
                centroid_voxel=centroid,
                bbox=bbox,
                bin=diameter_bin(diameter),
            )
        )
    return labels, lesions


@dataclass
class LesionMatch:
    """Lesion-wise comparison of one predicted mask with its ground truth.

    Attributes:
        gt: one dict per ground-truth lesion: the :class:`Lesion` fields (``Lesion.as_dict``),
            ``detected`` and ``matched_pred`` (indices of the predicted components covering it).
        pred: one dict per predicted component: the fields, ``true_positive`` and ``matched_gt``.
        tp: detected ground-truth lesions (a split lesion counts once).
        fn: missed ground-truth lesions.
        fp: predicted components that cover no ground-truth lesion.
        split: ground-truth lesions covered by two or more predicted components.
        merged: predicted components that cover two or more ground-truth lesions.
    """

    gt: list[dict] = field(default_factory=list)
    pred: list[dict] = field(default_factory=list)
    tp: int = 0
    fn: int = 0
    fp: int = 0
    split: int = 0
    merged: int = 0

    @property
    def n_gt(self) -> int:
        return len(self.gt)

    @property
    def n_pred(self) -> int:
        return len(self.pred)

    def by_bin(self) -> dict[str, tuple[int, int]]:
        """``{bin label: (detected, total)}`` over the ground-truth lesions, every bin listed."""
        out = {label: [0, 0] for label, _, _ in DIAMETER_BINS}
        for g in self.gt:
            out[g["bin"]][0] += int(g["detected"])
            out[g["bin"]][1] += 1
        return {k: (v[0], v[1]) for k, v in out.items()}


def match_lesions(
    pred: object,
    gt: object,
    spacing: Sequence[float],
    min_overlap_voxels: int = 1,
    connectivity: int = 3,
    axial_axis: int = 2,
) -> LesionMatch:
    """Match the connected components of a predicted tumour mask to the ground-truth lesions.

    A ground-truth lesion is detected when a predicted component overlaps it by at least
    ``min_overlap_voxels`` voxels; a predicted component is a true positive when it overlaps
    some lesion that much and a false positive otherwise (so a component touching a lesion by
    fewer voxels is a false positive). See the module docstring for splits and merges.

    >>> gt = np.zeros((12, 12, 12), bool); gt[1:4, 1:4, 1:4] = True; gt[1:4, 6:9, 1:4] = True
    >>> pred = np.zeros_like(gt); pred[2:3, 2:8, 2:3] = True          # one blob over both
    >>> m = match_lesions(pred, gt, (1, 1, 1))
    >>> m.tp, m.fp, m.merged, m.pred[0]["matched_gt"]
    (2, 0, 1, [1, 2])
    """
    p, g = mask_pair(pred, gt)
    if int(min_overlap_voxels) < 1:
        raise ConfigError(f"min_overlap_voxels must be >= 1, got {min_overlap_voxels!r}")
    g_lab, g_les = connected_lesions(g, spacing, connectivity, axial_axis=axial_axis)
    p_lab, p_les = connected_lesions(p, spacing, connectivity, axial_axis=axial_axis)
    ng, npr = len(g_les), len(p_les)
    box = bounding_box(p & g) or tuple(slice(0, 0) for _ in g.shape)
    g_sub, p_sub = g_lab[box], p_lab[box]
    both = (g_sub > 0) & (p_sub > 0)
    pair_ids = g_sub[both].astype(np.int64) * (npr + 1) + p_sub[both]
    overlap = np.bincount(pair_ids, minlength=(ng + 1) * (npr + 1)).reshape(ng + 1, npr + 1)
    hit = overlap >= int(min_overlap_voxels)
    hit[0, :] = False
    hit[:, 0] = False

    gt_rows = []
    for les in g_les:
        matched = [int(j) for j in np.flatnonzero(hit[les.index])]
        gt_rows.append({**les.as_dict(), "detected": bool(matched), "matched_pred": matched})
    pred_rows = []
    for les in p_les:
        matched = [int(i) for i in np.flatnonzero(hit[:, les.index])]
        pred_rows.append({**les.as_dict(), "true_positive": bool(matched), "matched_gt": matched})
    tp = sum(r["detected"] for r in gt_rows)
    return LesionMatch(
        gt=gt_rows,
        pred=pred_rows,
        tp=tp,
        fn=ng - tp,
        fp=sum(not r["true_positive"] for r in pred_rows),
        split=sum(len(r["matched_pred"]) >= 2 for r in gt_rows),
        merged=sum(len(r["matched_gt"]) >= 2 for r in pred_rows),
    )


def patient_level(pred_has_tumour: bool, gt_has_tumour: bool) -> str:
    """Patient-level outcome: ``"TP"``, ``"FN"``, ``"FP"`` or ``"TN"``.

    >>> patient_level(True, True), patient_level(False, True), patient_level(True, False)
    ('TP', 'FN', 'FP')
    """
    if gt_has_tumour:
        return "TP" if pred_has_tumour else "FN"
    return "FP" if pred_has_tumour else "TN"


def _proportion(k: int, n: int, alpha: float = 0.05) -> dict:
    if n == 0:
        return {"k": 0, "n": 0, "value": None, "ci95": None}
    lo, hi = wilson_ci(k, n, alpha)
    return {"k": int(k), "n": int(n), "value": k / n, "ci95": (lo, hi)}


def detection_summary(
    matches: Sequence[LesionMatch],
    patients: Sequence[tuple[bool, bool]] | None = None,
) -> dict:
    """Pool lesion matches over scans into detection rates with 95% confidence intervals.

    Args:
        matches: one :class:`LesionMatch` per scan.
        patients: one ``(pred_has_tumour, gt_has_tumour)`` per patient; by default one per
            scan in ``matches`` (any predicted component, any ground-truth lesion).

    Returns:
        dict with ``lesion_sensitivity``, ``per_bin`` (one entry per :data:`DIAMETER_BINS`
        label), ``early_sensitivity`` (lesions under :data:`EARLY_MM`),
        ``patient_sensitivity`` and ``patient_specificity``, each ``{"k", "n", "value",
        "ci95"}`` with a Wilson interval (``value`` and ``ci95`` are ``None`` when ``n`` is 0),
        plus ``false_positives_per_scan`` ``{"k": false positives, "n": scans, "value",
        "ci95"}`` whose interval is the exact Poisson interval of the rate (a rate is not a
        proportion, so Wilson does not apply), and ``split`` / ``merged`` totals.

    >>> s = detection_summary([], patients=[(True, True), (False, True), (False, False)])
    >>> s["patient_sensitivity"]["value"], s["patient_specificity"]["k"], s["lesion_sensitivity"]["value"]
    (0.5, 1, None)
    """
    rows = [g for m in matches for g in m.gt]
    out: dict = {
        "scans": len(matches),
        "lesions": len(rows),
        "lesion_sensitivity": _proportion(sum(g["detected"] for g in rows), len(rows)),
    }
    per_bin = {}
    for label, _, _ in DIAMETER_BINS:
        sel = [g for g in rows if g["bin"] == label]
        per_bin[label] = _proportion(sum(g["detected"] for g in sel), len(sel))
    out["per_bin"] = per_bin
    early = [g for g in rows if g["diameter_mm"] < EARLY_MM]
    out["early_sensitivity"] = _proportion(sum(g["detected"] for g in early), len(early))
    fp = sum(m.fp for m in matches)
    if matches:
        lo, hi = poisson_rate_ci(fp, len(matches))
        out["false_positives_per_scan"] = {"k": fp, "n": len(matches), "value": fp / len(matches), "ci95": (lo, hi)}
    else:
        out["false_positives_per_scan"] = {"k": 0, "n": 0, "value": None, "ci95": None}
    out["split"] = sum(m.split for m in matches)
    out["merged"] = sum(m.merged for m in matches)

    if patients is None:
        patients = [(m.n_pred > 0, m.n_gt > 0) for m in matches]
    outcomes = [patient_level(bool(p), bool(g)) for p, g in patients]
    n_pos = sum(o in ("TP", "FN") for o in outcomes)
    out["patients"] = len(outcomes)
    out["patient_sensitivity"] = _proportion(outcomes.count("TP"), n_pos)
    out["patient_specificity"] = _proportion(outcomes.count("TN"), len(outcomes) - n_pos)
    return out
