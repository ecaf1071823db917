"""FROC: whole-scan lesion detection from tumour probability maps (``freetumor froc``).

A *candidate* is a connected component of ``prob >= threshold`` (26-neighbourhood by default)
of at least ``min_size_mm3``; its score is the highest probability inside it. Ground-truth
lesions are the connected components of the ground-truth tumour mask
(:func:`~freetumor.evaluation.lesions.connected_lesions`, same connectivity).

Matching is by overlap: a candidate *hits* a lesion when they share at least one voxel. A lesion
is detected at score threshold ``t`` when some candidate with score ``>= t`` hits it, so each
lesion counts once, with the score of the highest-scoring candidate that hits it; further
candidates on the same lesion are neither true nor false positives. A candidate that hits no
lesion is a false positive; with a region mask (e.g. the lungs) only such candidates that
overlap the region (any voxel) are counted, those wholly outside it are ignored. Candidates are
extracted once at ``threshold`` and only their scores are thresholded, so the sweep does not
re-segment the map (a blob with one peak of 0.9 and a shoulder of 0.3 stays one candidate).

The FROC curve is sensitivity (detected / all lesions) against the mean number of false
positives per scan, one point per distinct score of a lesion's best candidate or of a counted
false positive, from the highest score down. ``sensitivity_at[r]`` is read off it without
interpolation: the sensitivity of the lowest score threshold whose mean false positives per
scan is at most ``r`` (sensitivity and false positives never rise as the threshold rises, so
this is the best sensitivity any operating point within the budget reaches; 0 when even the highest-scoring false positive
exceeds it). The competition performance metric ``cpm`` is the mean over ``fp_rates`` (LUNA16
uses 1/8 .. 8 and interpolates linearly; the step reading here never credits sensitivity that
no threshold reaches). ``sensitivity_at_small`` is the sensitivity over lesions whose
equivalent-sphere diameter (``(6 V / pi) ** (1/3)``, as :data:`~freetumor.evaluation.lesions.DIAMETER_BINS`)
is below ``small_mm`` (10 mm), at the same thresholds: false positives are not split by size,
so the small lesions get the whole scan's false-positive budget. ``operating_point`` is the
point at score threshold ``operating_threshold`` (0.5), the usual cut of a probability map.

Only numpy and scipy are needed for :func:`froc`; :func:`froc_folders` (the command) reads
NIfTI files and imports the I/O modules when called.

Example:
    >>> import numpy as np
    >>> gt = np.zeros((16, 16, 16), bool); gt[1:6, 1:6, 1:6] = True   # one lesion
    >>> prob = np.zeros(gt.shape)
    >>> prob[1:3, 1:3, 1:3] = 0.9                                   # a hit
    >>> prob[4:6, 4:6, 4:6] = 0.3                                   # a second hit: counts once
    >>> prob[10:12, 10:12, 10:12] = 0.6                             # a false positive
    >>> r = froc([Scan(prob, gt, (1.0, 1.0, 1.0))], fp_rates=(0.5, 1))
    >>> [(p["threshold"], p["sensitivity"], p["fp_per_scan"]) for p in r["curve"]]
    [(0.9, 1.0, 0.0), (0.6, 1.0, 1.0)]
    >>> r["sensitivity_at"], r["cpm"], r["operating_point"]["fp_per_scan"]
    ({'0.5': 1.0, '1': 1.0}, 1.0, 1.0)
"""

from __future__ import annotations

import json
import math
import numbers
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
from scipy import ndimage

from ..errors import ConfigError, InputError
from ..grids import bounding_box
from .lesions import connected_lesions, neighbourhood
from .masks import as_mask, mask_spacing

__all__ = [
    "DEFAULT_FP_RATES",
    "SMALL_MM",
    "Candidate",
    "Scan",
    "candidates",
    "check_probability",
    "froc",
    "froc_folders",
    "label_candidates",
    "score_scan",
]

DEFAULT_FP_RATES: tuple[float, ...] = (1, 2, 4, 8)
"""Mean false positives per scan at which sensitivity is reported (and averaged into the CPM)."""

SMALL_MM = 10.0
"""Lesions with an equivalent-sphere diameter below this many mm are reported apart."""

PROB_SUFFIXES = ("_prob.nii.gz", "_prob.nii")
_PROB_TOL = 1e-3  # float16 / float32 softmax sums may overshoot 1 by a few ulps


@dataclass
class Candidate:
    """One connected component of a thresholded probability map.

    Attributes:
        label: its value in the label array of :func:`label_candidates` (1, 2, ...).
        score: the highest probability inside it.
        voxels: number of voxels.
        volume_mm3: volume in mm^3.
        centroid_voxel: centre of its voxels (unweighted) in voxel coordinates.
        bbox: bounding box as slices into the array.
        mask: its voxels within ``bbox`` (bool, ``prob[bbox][mask]`` are its probabilities).
    """

    label: int
    score: float
    voxels: int
    volume_mm3: float
    centroid_voxel: tuple[float, ...]
    bbox: tuple[slice, ...]
    mask: np.ndarray = field(repr=False)

    def as_dict(self) -> dict:
        """Plain values without the mask: ``bbox`` becomes ``[[start, stop], ...]`` (JSON-friendly)."""
        return {"label": self.label, "score": self.score, "voxels": self.voxels, "volume_mm3": self.volume_mm3,
                "centroid_voxel": list(self.centroid_voxel), "bbox": [[s.start, s.stop] for s in self.bbox]}


@dataclass
class Scan:
    """One scan for :func:`froc`: arrays of the same shape on one voxel grid.

    Args:
        prob: tumour probability, 0..1 (as ``predict --probabilities`` writes it).
        gt: ground-truth lesion mask (non-zero is lesion); lesions are its connected components.
        spacing: voxel size in mm per axis.
        region: optional mask (non-zero inside, e.g. the lungs): a candidate that hits no lesion
            is a false positive only when it overlaps the region.
        name: used in reports and error messages.
        axial_axis: the array axis across axial slices (for the lesions' max axial diameter).
    """

    prob: np.ndarray
    gt: np.ndarray
    spacing: Sequence[float]
    region: np.ndarray | None = None
    name: str = "<scan>"
    axial_axis: int = 2


def check_probability(prob: object, name: str = "<array>") -> np.ndarray:
    """``prob`` as a float array in 0..1, else a one-line :class:`InputError` naming ``name``.

    Values within 0.001 outside 0..1 (rounding of a softmax sum) are clipped; NaN, infinities and
    larger values are refused (a label map is not a probability map).

    >>> check_probability(np.array([0.0, 0.5, 1.0001])).tolist()
    [0.0, 0.5, 1.0]
    >>> check_probability(np.array([0, 2]), "x_prob.nii.gz")
    Traceback (most recent call last):
    ...
    freetumor.errors.InputError: x_prob.nii.gz: probabilities must lie in 0..1, found 0..2 (a label map?)
    """
    arr = np.asarray(prob)
    if arr.dtype == bool or not np.issubdtype(arr.dtype, np.floating):
        arr = arr.astype(np.float32)
    if arr.size == 0:
        raise InputError(name, "probability map is empty")
    finite = np.isfinite(arr)
    if not finite.all():
        bad = int(arr.size - np.count_nonzero(finite))
        raise InputError(name, f"probability map holds {bad} NaN or infinite voxels")
    lo, hi = float(arr.min()), float(arr.max())
    if lo < -_PROB_TOL or hi > 1 + _PROB_TOL:
        raise InputError(name, f"probabilities must lie in 0..1, found {lo:g}..{hi:g} (a label map?)")
    if lo < 0 or hi > 1:
        arr = np.clip(arr, 0.0, 1.0)
    return arr


def _real(x: object) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool) and math.isfinite(float(x))


def _check_threshold(threshold: float) -> float:
    if not (_real(threshold) and 0 < threshold <= 1):
        raise ConfigError(f"candidate threshold must be a probability in (0, 1], got {threshold!r}")
    return float(threshold)


def _check_min_size(min_size_mm3: float) -> float:
    if not (_real(min_size_mm3) and min_size_mm3 >= 0):
        raise ConfigError(f"minimum candidate size must be a number of mm^3 >= 0, got {min_size_mm3!r}")
    return float(min_size_mm3)


def label_candidates(
    prob: object,
    spacing: Sequence[float],
    threshold: float = 0.1,
    min_size_mm3: float = 0.0,
    connectivity: int = 3,
) -> tuple[np.ndarray, list[Candidate]]:
    """Label the candidates of a probability map.

    Args:
        prob: 3D (or 2D) probability map, values 0..1.
        spacing: voxel size in mm per axis.
        threshold: a voxel belongs to a candidate when ``prob >= threshold`` (0 < threshold <= 1).
        min_size_mm3: candidates smaller than this volume are dropped (0 keeps every one).
        connectivity: 3 = 26-neighbourhood, 2 = 18, 1 = 6 (faces).

    Returns:
        ``(labels, candidates)``: an int32 array with 0 outside every candidate and candidate
        ``i`` labelled ``candidates[i - 1].label == i``, and the :class:`Candidate` list in
        label order.
    """
    p = check_probability(prob)
    sp = mask_spacing(spacing, p.ndim)
    t = _check_threshold(threshold)
    min_mm3 = _check_min_size(min_size_mm3)
    structure = neighbourhood(p.ndim, connectivity)
    fg = p >= t
    labels = np.zeros(p.shape, np.int32)
    box = bounding_box(fg)
    if box is None:
        return labels, []
    sub, n = ndimage.label(fg[box], structure=structure)  # label only the occupied box
    sub = sub.astype(np.int32, copy=False)
    voxel_mm3 = float(np.prod(sp))
    counts = np.bincount(sub.ravel(), minlength=n + 1)
    keep = np.flatnonzero(counts * voxel_mm3 >= min_mm3 * (1 - 1e-9))
    keep = keep[keep > 0]
    if len(keep) < n:  # drop small components and renumber 1..k
        remap = np.zeros(n + 1, np.int32)
        remap[keep] = np.arange(1, len(keep) + 1, dtype=np.int32)
        sub = remap[sub]
        counts = np.concatenate([[0], counts[keep]])
        n = len(keep)
    labels[box] = sub
    if n == 0:
        return labels, []
    index = np.arange(1, n + 1)
    scores = ndimage.maximum(p[box], sub, index)
    centres = ndimage.center_of_mass(np.ones(sub.shape, np.float32), sub, index)
    offset = [s.start for s in box]
    found = []
    for i, local in enumerate(ndimage.find_objects(sub, max_label=n), start=1):
        bbox = tuple(slice(s.start + o, s.stop + o) for s, o in zip(local, offset))
        found.append(Candidate(
            label=i,
            score=float(scores[i - 1]),
            voxels=int(counts[i]),
            volume_mm3=int(counts[i]) * voxel_mm3,
            centroid_voxel=tuple(float(c + o) for c, o in zip(centres[i - 1], offset)),
            bbox=bbox,
            mask=sub[local] == i,
        ))
    return labels, found


def candidates(
    prob: object,
    spacing: Sequence[float],
    threshold: float = 0.1,
    min_size_mm3: float = 0.0,
    connectivity: int = 3,
) -> list[Candidate]:
    """The candidates of a probability map (:func:`label_candidates` without the label array).

    >>> prob = np.zeros((8, 8, 8)); prob[1:3, 1:3, 1:3] = 0.4; prob[1, 1, 1] = 0.8; prob[6, 6, 6] = 0.5
    >>> [(c.label, c.score, c.voxels) for c in candidates(prob, (1.0, 1.0, 1.0))]
    [(1, 0.8, 8), (2, 0.5, 1)]
    >>> [c.voxels for c in candidates(prob, (1.0, 1.0, 1.0), threshold=0.5, min_size_mm3=2)]
    []
    """
    return label_candidates(prob, spacing, threshold, min_size_mm3, connectivity)[1]


def _as_scan(s: object) -> Scan:
    if isinstance(s, Scan):
        return s
    if isinstance(s, Mapping):
        return Scan(**s)
    raise ConfigError("a scan must be a Scan or a mapping with prob, gt, spacing (and region, name), "
                      f"got {type(s).__name__}")


def score_scan(
    scan: Scan | Mapping,
    threshold: float = 0.1,
    min_size_mm3: float = 0.0,
    connectivity: int = 3,
) -> dict:
    """Candidates and lesions of one scan, matched by overlap (see the module docstring).

    Returns:
        ``{"name", "lesions", "candidates"}``: one dict per lesion (its
        :class:`~freetumor.evaluation.lesions.Lesion` measures less ``bbox``, ``score``: the
        best score of a candidate hitting it or ``None``, ``hit_by``: those candidates' labels)
        and one per candidate (:meth:`Candidate.as_dict` less ``bbox``, ``hits``: lesion
        indices, ``in_region``, ``false_positive``: hits nothing and counts).

    >>> gt = np.zeros((10, 10, 10), bool); gt[1:4, 1:4, 1:4] = True
    >>> prob = np.zeros(gt.shape); prob[3:5, 3:5, 3:5] = 0.7; prob[8, 8, 8] = 0.2; prob[8, 1, 1] = 0.3
    >>> region = np.zeros(gt.shape, bool); region[:, :5, :5] = True   # [8, 8, 8] lies outside
    >>> s = score_scan(Scan(prob, gt, (1, 1, 1), region=region))
    >>> [(c["score"], c["hits"], c["in_region"], c["false_positive"]) for c in s["candidates"]]
    [(0.7, [1], True, False), (0.3, [], True, True), (0.2, [], False, False)]
    >>> s["lesions"][0]["score"], s["lesions"][0]["hit_by"]
    (0.7, [1])
    """
    scan = _as_scan(scan)
    name = str(scan.name)
    prob = check_probability(scan.prob, name)
    gt = as_mask(scan.gt)
    if gt.shape != prob.shape:
        raise InputError(name, f"ground truth shape {gt.shape} does not match the probability map's {prob.shape}")
    region = None
    if scan.region is not None:
        region = as_mask(scan.region)
        if region.shape != prob.shape:
            raise InputError(name, f"region mask shape {region.shape} does not match the probability map's "
                                   f"{prob.shape}")
    c_lab, cands = label_candidates(prob, scan.spacing, threshold, min_size_mm3, connectivity)
    g_lab, lesions = connected_lesions(gt, scan.spacing, connectivity, axial_axis=scan.axial_axis)
    nc = len(cands)
    hits: dict[int, list[int]] = {c.label: [] for c in cands}
    hit_by: dict[int, list[int]] = {les.index: [] for les in lesions}
    box = bounding_box((c_lab > 0) & (g_lab > 0))
    if box is not None:
        both = (c_lab[box] > 0) & (g_lab[box] > 0)
        pairs = np.unique(g_lab[box][both].astype(np.int64) * (nc + 1) + c_lab[box][both])
        for g, c in zip((pairs // (nc + 1)).tolist(), (pairs % (nc + 1)).tolist()):
            hits[c].append(g)
            hit_by[g].append(c)
    if region is None:
        in_region = np.ones(nc + 1, bool)
    else:
        in_region = np.bincount(c_lab[region], minlength=nc + 1) > 0
    scores = {c.label: c.score for c in cands}
    lesion_rows = []
    for les in lesions:
        d = les.as_dict()
        d.pop("bbox")
        by = sorted(hit_by[les.index])
        d["score"] = max((scores[c] for c in by), default=None)
        d["hit_by"] = by
        lesion_rows.append(d)
    cand_rows = []
    for c in cands:
        d = c.as_dict()
        d.pop("bbox")
        d["hits"] = sorted(hits[c.label])
        d["in_region"] = bool(in_region[c.label])
        d["false_positive"] = not d["hits"] and d["in_region"]
        cand_rows.append(d)
    return {"name": name, "lesions": lesion_rows, "candidates": cand_rows}


def _rate_key(rate: float) -> str:
    return f"{rate:g}"


def _check_rates(fp_rates: Iterable[float]) -> tuple[float, ...]:
    try:
        rates = tuple(float(r) for r in fp_rates)
    except (TypeError, ValueError):
        raise ConfigError(f"false-positive rates must be numbers, got {fp_rates!r}") from None
    if not rates or not all(math.isfinite(r) and r > 0 for r in rates):
        raise ConfigError(f"false-positive rates must be positive numbers per scan, got {list(rates)}")
    return rates


def froc(
    scans: Iterable[Scan | Mapping],
    fp_rates: Sequence[float] = DEFAULT_FP_RATES,
    *,
    threshold: float = 0.1,
    min_size_mm3: float = 0.0,
    connectivity: int = 3,
    small_mm: float = SMALL_MM,
    operating_threshold: float = 0.5,
) -> dict:
    """The FROC analysis of probability maps against ground-truth lesions (module docstring).

    Args:
        scans: :class:`Scan` objects (or mappings of their fields), read one at a time (a
            generator that loads each scan keeps memory to one scan).
        fp_rates: mean false positives per scan at which sensitivity is reported.
        threshold: candidate extraction threshold (``prob >= threshold``).
        min_size_mm3: smallest candidate volume kept (0 keeps all).
        connectivity: neighbourhood of candidates and lesions: 3 = 26, 2 = 18, 1 = 6.
        small_mm: lesions with an equivalent-sphere diameter below this are "small".
        operating_threshold: score threshold of ``operating_point`` (a threshold below
            ``threshold`` means every candidate).

    Returns:
        dict with ``curve`` (``[{"threshold", "sensitivity", "fp_per_scan"}, ...]`` from the
        highest score down), ``sensitivity_at`` / ``threshold_at`` / ``sensitivity_at_small``
        keyed by rate (``"1"``, ``"2"``, ...; ``threshold_at`` is ``None`` where no threshold fits
        the budget), ``cpm`` and ``cpm_small`` (their means), ``lesions``, ``small_lesions``,
        ``scans``, ``false_positives`` (counted candidates that hit nothing, at ``threshold``),
        ``operating_point`` (``threshold``, ``sensitivity``, ``sensitivity_small``, ``detected``,
        ``false_positives``, ``fp_per_scan``), ``settings``, and the rows ``per_scan``,
        ``per_lesion`` and ``candidates``. Sensitivities are ``None`` when there is no
        (small) lesion.

    Raises:
        ConfigError: a bad setting, or no scans.
        InputError: a scan's arrays differ in shape or its map is not probabilities.
    """
    rates = _check_rates(fp_rates)
    t0 = _check_threshold(threshold)
    min_mm3 = _check_min_size(min_size_mm3)
    neighbourhood(3, connectivity)
    if not (_real(small_mm) and small_mm > 0):
        raise ConfigError(f"small-lesion diameter must be a positive number of mm, got {small_mm!r}")
    if not (_real(operating_threshold) and 0 <= operating_threshold <= 1):
        raise ConfigError(f"operating threshold must be a probability in 0..1, got {operating_threshold!r}")

    per_scan, per_lesion, cand_rows = [], [], []
    lesion_scores, lesion_small, fp_scores = [], [], []
    for s in scans:
        r = score_scan(s, t0, min_mm3, connectivity)
        for les in r["lesions"]:
            small = les["diameter_mm"] < small_mm
            lesion_scores.append(-np.inf if les["score"] is None else les["score"])
            lesion_small.append(small)
            per_lesion.append({"scan": r["name"], "index": les["index"], "voxels": les["voxels"],
                               "volume_mm3": les["volume_mm3"], "diameter_mm": les["diameter_mm"],
                               "max_axial_diameter_mm": les["max_axial_diameter_mm"], "small": small,
                               "centroid_voxel": les["centroid_voxel"], "score": les["score"]})
        for c in r["candidates"]:
            if c["false_positive"]:
                fp_scores.append(c["score"])
            cand_rows.append({"scan": r["name"], **c})
        per_scan.append({"scan": r["name"], "lesions": len(r["lesions"]),
                         "detected": sum(les["score"] is not None for les in r["lesions"]),
                         "candidates": len(r["candidates"]),
                         "false_positives": sum(c["false_positive"] for c in r["candidates"])})
    n_scans = len(per_scan)
    if n_scans == 0:
        raise ConfigError("FROC needs at least one scan")

    les = np.asarray(lesion_scores, np.float64)
    small = np.asarray(lesion_small, bool)
    fps = np.sort(np.asarray(fp_scores, np.float64))
    les_sorted, small_sorted = np.sort(les), np.sort(les[small])
    n_les, n_small = len(les), int(small.sum())

    def at_least(sorted_scores: np.ndarray, t: float) -> int:  # how many scores are >= t
        return int(len(sorted_scores) - np.searchsorted(sorted_scores, t, side="left"))

    def sens(sorted_scores: np.ndarray, n: int, t: float) -> float | None:
        return None if n == 0 else at_least(sorted_scores, t) / n

    steps = np.unique(np.concatenate([les[np.isfinite(les)], fps]))[::-1]  # distinct scores, highest first
    curve = [{"threshold": float(t), "sensitivity": sens(les_sorted, n_les, t),
              "fp_per_scan": at_least(fps, t) / n_scans} for t in steps]

    sens_at, sens_small_at, thr_at = {}, {}, {}
    for rate in rates:
        # FP counts only grow as the threshold falls: the points within budget are a prefix of the curve
        ok = [p for p in curve if at_least(fps, p["threshold"]) <= rate * n_scans + 1e-9]
        t = ok[-1]["threshold"] if ok else math.inf
        key = _rate_key(rate)
        thr_at[key] = None if not ok else t
        sens_at[key] = sens(les_sorted, n_les, t)
        sens_small_at[key] = sens(small_sorted, n_small, t)

    def mean(values: dict) -> float | None:
        v = list(values.values())
        return None if any(x is None for x in v) else float(np.mean(v))

    t_op = float(operating_threshold)
    return {
        "scans": n_scans,
        "lesions": n_les,
        "small_lesions": n_small,
        "false_positives": int(len(fps)),
        "sensitivity_at": sens_at,
        "cpm": mean(sens_at),
        "sensitivity_at_small": sens_small_at,
        "cpm_small": mean(sens_small_at),
        "threshold_at": thr_at,
        "operating_point": {
            "threshold": t_op,
            "sensitivity": sens(les_sorted, n_les, t_op),
            "sensitivity_small": sens(small_sorted, n_small, t_op),
            "detected": at_least(les_sorted, t_op),
            "false_positives": at_least(fps, t_op),
            "fp_per_scan": at_least(fps, t_op) / n_scans,
        },
        "curve": curve,
        "settings": {"threshold": t0, "min_size_mm3": min_mm3, "connectivity": int(connectivity),
                     "fp_rates": list(rates), "small_mm": float(small_mm),
                     "small_by": "equivalent-sphere diameter", "operating_threshold": t_op,
                     "sensitivity_at": "lowest score threshold with mean FP per scan <= rate; no interpolation"},
        "per_scan": per_scan,
        "per_lesion": per_lesion,
        "candidates": cand_rows,
    }


def _prob_case(path: Path) -> str | None:
    low = path.name.lower()
    for suf in PROB_SUFFIXES:
        if low.endswith(suf):
            return path.name[: -len(suf)]
    return None


def froc_folders(
    prob: str | os.PathLike,
    gt: str | os.PathLike,
    organ: str,
    out: str | os.PathLike,
    *,
    label_map: str | None = None,
    region: str | os.PathLike | None = None,
    threshold: float = 0.1,
    min_size_mm3: float = 0.0,
    fp_rates: Sequence[float] = DEFAULT_FP_RATES,
    connectivity: int = 3,
    small_mm: float = SMALL_MM,
    operating_threshold: float = 0.5,
    progress: bool = True,
) -> dict:
    """``freetumor froc``: :func:`froc` over a folder of probability maps; the report goes to ``out``.

    Args:
        prob: folder of ``<case>_prob.nii.gz`` (``freetumor predict --probabilities``).
        gt: folder of label maps named by case, or a datalist (cases named after their images),
            matched as ``freetumor evaluate`` matches them; lesions are the organ's tumour label.
        organ: the tumour type.
        out: the JSON report, written atomically once every case is scored (nothing on error).
        label_map: the ground truth's label convention (default: the datalist's, else by organ).
        region: folder of region masks ``<case>.nii.gz`` (non-zero inside) on the ground
            truth's grid: false positives count only when they overlap the region.
        threshold, min_size_mm3, fp_rates, connectivity, small_mm, operating_threshold: as
            :func:`froc`.

    Returns:
        the report: :func:`froc`'s dict plus ``organ``, ``label_map``, ``prob``, ``gt``, ``region``.

    Raises:
        InputError: a missing folder or case file, a probability map or region mask not on the
            ground truth's grid, values outside 0..1.
    """
    # deferred: the I/O stack (nibabel, the datalist readers) loads only for the command
    from ..io import case_name, load_volume, same_grid, write_bytes_atomic
    from ..labels import check_integer_labels, get_label_map  # deferred: as above
    from .evaluate import gt_cases as read_gt_cases  # deferred: as above (the cases as `evaluate` matches them)

    _check_rates(fp_rates)
    _check_threshold(threshold)
    _check_min_size(min_size_mm3)
    gt_cases, dl_map = read_gt_cases(gt)
    lm = get_label_map(label_map or dl_map, organ)
    lm.tumour_id(organ)  # the map knows the organ
    pdir = Path(prob)
    if not pdir.is_dir():
        raise InputError(pdir, "is not a folder of probability maps")
    probs = {c: f for f in sorted(pdir.iterdir()) if (c := _prob_case(f)) is not None}
    if not probs:
        raise InputError(pdir, "holds no <case>_prob.nii.gz files (freetumor predict --probabilities writes them)")
    missing = [c for c in gt_cases if c not in probs]
    if missing:
        raise InputError(pdir, f"no probability map for {len(missing)} of {len(gt_cases)} cases "
                               f"(first: {missing[0]}_prob.nii.gz)")
    regions: dict[str, Path] = {}
    rdir = None if region is None else Path(region)
    if rdir is not None:
        if not rdir.is_dir():
            raise InputError(rdir, "is not a folder of region masks")
        regions = {case_name(f): f for f in sorted(rdir.iterdir()) if f.name.lower().endswith((".nii.gz", ".nii"))}
        missing = [c for c in gt_cases if c not in regions]
        if missing:
            raise InputError(rdir, f"no region mask for {len(missing)} of {len(gt_cases)} cases "
                                   f"(first: {missing[0]}.nii.gz)")

    def on_grid(ref, vol, what: str) -> None:
        if vol.shape != ref.shape:
            raise InputError(vol.name, f"{what} shape {vol.shape} does not match the ground truth's {ref.shape} "
                                       f"({ref.name})")
        if not same_grid(ref, vol):
            diff = float(np.abs(ref.affine - vol.affine).max())
            raise InputError(vol.name, f"{what} affine does not match the ground truth's (max difference {diff:.3g})")

    def scans():
        items = list(gt_cases.items())
        if progress:
            from tqdm import tqdm  # deferred: as above

            items = tqdm(items, desc="froc", unit="case", dynamic_ncols=True)
        for case, gt_path in items:
            g = load_volume(gt_path)
            check_integer_labels(g.array, g.name)
            p = load_volume(probs[case])
            on_grid(g, p, "probability map")
            reg = None
            if rdir is not None:
                r = load_volume(regions[case])
                on_grid(g, r, "region mask")
                reg = np.asarray(r.array) != 0
            yield Scan(check_probability(p.array, p.name), lm.tumour_mask(np.asarray(g.array), organ), g.spacing,
                       region=reg, name=case, axial_axis=g.axis_of("S"))

    result = froc(scans(), fp_rates, threshold=threshold, min_size_mm3=min_size_mm3, connectivity=connectivity,
                  small_mm=small_mm, operating_threshold=operating_threshold)
    report = {"organ": organ, "label_map": lm.name, "prob": str(pdir), "gt": str(gt),
              "region": None if rdir is None else str(rdir), **result}
    write_bytes_atomic(out, (json.dumps(report, indent=1) + "\n").encode())
    return report
